"""The examples in examples/ run as documented."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import ModuleType

import httpx
import orjson
import pytest
from starlette.types import ASGIApp

from tests.support.asgi_servers import ASGI_SERVERS, serve_asgi
from tests.support.env import TIMEOUT, eventually
from tests.support.sse import open_sse
from tidings.hub import Hub
from tidings.server import create_app
from tidings.settings import Settings
from tidings.testing import run_server
from tidings.wire.cursor import decode_cursor

EXAMPLES = Path(__file__).parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["fast", *ASGI_SERVERS])
def server(request: pytest.FixtureRequest) -> str:
    """Where an example's app runs: ``tidings serve``'s uvicorn with the fast write path,
    or a stock ASGI server (uvicorn's own protocol classes, Hypercorn) on the plain path."""
    return str(request.param)


def serving(app: ASGIApp, server: str) -> AbstractAsyncContextManager[str]:
    return run_server(app) if server == "fast" else serve_asgi(app, server)


async def test_fastapi_example_streams_and_resumes(server: str) -> None:
    example = load("fastapi_app")
    async with serving(example.app, server) as url, httpx.AsyncClient(base_url=url) as client:
        async with open_sse(client, "/orders/42/events") as reader:
            await reader.until(b"\n\n")
            response = await client.post("/orders/42/status", params={"status": "paid"})
            assert response.json() == {"offset": 1}
            (paid,) = await reader.events(1)
            assert paid.data == '{"status":"paid"}'
        await client.post("/orders/42/status", params={"status": "shipped"})
        async with open_sse(
            client, "/orders/42/events", headers={"last-event-id": paid.id}
        ) as reader:
            (shipped,) = await reader.events(1)
            assert shipped.data == '{"status":"shipped"}'
            assert decode_cursor(shipped.id)["orders:42"].offset == 2
        response = await client.get("/orders/42/events", headers={"last-event-id": "garbage"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_cursor"


#: What each example prints when run with no arguments against a fresh server
#: (exit status 0), or the start of its usage line (exit status 2).
NO_ARGUMENTS = {
    "client_listen": (0, "orders 1 message {'id': 42, 'state': 'paid'}\n"),
    "client_sync": (
        0,
        "jobs 1 {'job': 7, 'state': 'started'}\njobs 2 {'job': 7, 'state': 'done'}\n",
    ),
    "client_socket": (0, "orders 1 {'id': 7, 'state': 'paid'}\npacked at 1\n"),
    "client_socket_chat": (2, "usage: python examples/client_socket_chat.py URL ROOM NAME LINE"),
    "websocket_chat": (2, "usage: python examples/websocket_chat.py URL ROOM NAME [LINE]"),
    "fastapi_app": (0, ""),
    "llm_fastapi": (0, ""),
    "hooks_app": (0, ""),
    "streaming_responses": (0, ""),
    "starlette_app": (0, ""),
    "asgi_app": (0, ""),
}


def test_every_example_is_run_with_no_arguments() -> None:
    assert sorted(NO_ARGUMENTS) == sorted(path.stem for path in EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("name", sorted(NO_ARGUMENTS))
async def test_example_runs_with_no_arguments_and_ends(name: str, tmp_path: Path) -> None:
    status, expected = NO_ARGUMENTS[name]
    async with run_server() as url:
        script = tmp_path / "examples" / f"{name}.py"
        script.parent.mkdir()
        source = (EXAMPLES / f"{name}.py").read_text()
        script.write_text(source.replace("127.0.0.1:8000", url.removeprefix("http://")))
        process = await asyncio.create_subprocess_exec(
            sys.executable, f"examples/{name}.py", cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(process.communicate(), TIMEOUT * 4)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == status, err.decode()
    assert b"Traceback" not in err
    if status == 0:
        assert out.decode() == expected
    else:
        assert err.decode().startswith(expected + "\n")


async def test_websocket_chat_example_talks_and_resumes() -> None:
    example = load("websocket_chat")
    settings = Settings(log_level="warning", namespaces={"chat": {"join_leave": True}})
    async with run_server(settings=settings) as url, httpx.AsyncClient(base_url=url) as client:
        ws_url = url.replace("http://", "ws://") + "/ws"
        listener = asyncio.create_task(example.chat(ws_url, "chat:lobby", "ada", stop_after=2))

        async def listening() -> bool:
            response = await client.get("/api/presence/chat:lobby")
            return bool(response.json()["clients"])

        await eventually(listening)
        said = await example.chat(ws_url, "chat:lobby", "bob", say="hi ada", stop_after=1)
        assert said == [{"from": "bob", "text": "hi ada"}]
        await client.post(
            "/api/publish", json={"channel": "chat:lobby", "data": {"from": "eve", "text": "hey"}}
        )
        heard = await asyncio.wait_for(listener, TIMEOUT)
        assert heard == [{"from": "bob", "text": "hi ada"}, {"from": "eve", "text": "hey"}]


async def test_llm_fastapi_example_streams_an_answer_and_resumes(server: str) -> None:
    example = load("llm_fastapi")
    async with serving(example.app, server) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/questions", params={"question": "why?"})
        answer = response.json()
        async with open_sse(client, answer["events"]) as reader:
            await reader.until(b"event: end", timeout=TIMEOUT * 2)
            events = await reader.events(len(reader._pending))
        assert events[-1].event == "end"
        text = "".join(
            choice["delta"].get("content", "")
            for event in events
            if event.event == "message"
            for choice in orjson.loads(event.data)["choices"]
        )
        assert text.startswith('You asked: "why?".')
        middle = events[len(events) // 2]
        async with open_sse(
            client, answer["events"], headers={"last-event-id": middle.id}
        ) as reader:
            await reader.until(b"event: end", timeout=TIMEOUT * 2)
            rest = await reader.events(len(reader._pending))
        assert [event.id for event in rest] == [
            event.id for event in events[len(events) // 2 + 1 :]
        ]
        assert (await client.get("/answers/chatcmpl-none")).status_code == 404


async def test_socket_chat_example_shows_history_then_live(
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = load("client_socket_chat")
    hub = Hub()
    out: list[str] = []

    def printed(text: str) -> bool:
        out.append(capsys.readouterr().out)
        return text in "".join(out)

    async with hub, run_server(create_app(hub, Settings(log_level="warning"))) as url:
        await hub.publish("chat:lobby", {"from": "bob", "text": "anyone?"})
        ws_url = url.replace("http://", "ws://") + "/ws"
        chat = asyncio.create_task(example.chat(ws_url, "chat:lobby", "ada", "hi bob"))
        try:
            await eventually(lambda: printed("here: ada"))
            await hub.publish("chat:lobby", {"from": "bob", "text": "hello ada"})
            await eventually(lambda: printed("bob: hello ada"))
        finally:
            chat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chat
    lines = "".join(out).splitlines()
    assert lines == ["bob: anyone?", "ada: hi bob", "here: ada", "bob: hello ada"]


async def test_hooks_example_signs_in_checks_rooms_and_filters_words(server: str) -> None:
    example = load("hooks_app")
    async with serving(example.app, server) as url, httpx.AsyncClient(base_url=url) as client:
        anonymous = await client.get("/sse?channel=room:lobby")
        assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "login_required")
        bob = {"cookie": "user=bob"}
        outsider = await client.get("/sse?channel=room:dev", headers=bob)
        assert (outsider.status_code, outsider.json()["error"]["code"]) == (403, "not_a_member")
        async with open_sse(
            client, "/sse?channel=room:lobby", headers={"cookie": "user=ada"}
        ) as reader:
            await reader.until(b"retry:")
            said = {"channel": "room:lobby", "data": {"text": "no spam here"}}
            assert (await client.post("/api/publish", json=said, headers=bob)).status_code == 200
            (event,) = await reader.events(1)
            assert orjson.loads(event.data) == {"text": "no **** here", "by": "bob"}
        assert (await client.post("/api/publish", json=said, headers=bob)).status_code == 200
        async with open_sse(
            client,
            "/sse?channel=room:lobby",
            headers={"cookie": "user=ada", "last-event-id": event.id},
        ) as reader:
            (missed,) = await reader.events(1)
            assert decode_cursor(missed.id)["room:lobby"].offset == 2
        stranger = await client.post("/api/publish", json=said)
        assert (stranger.status_code, stranger.json()["error"]["code"]) == (403, "not_a_member")


async def test_streaming_responses_example(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    example = load("streaming_responses")
    async with serving(example.app, server) as url, httpx.AsyncClient(base_url=url) as client:
        async with open_sse(client, "/countdown", headers={"last-event-id": "5"}) as reader:
            events = await reader.events(2)
            assert [(event.event, event.id, event.data) for event in events] == [
                ("tick", "4", '{"n":4}'),
                ("tick", "3", '{"n":3}'),
            ]
        await eventually(lambda: "countdown closed" in capsys.readouterr().out)
        response = await client.get("/rows", params={"count": 3})
        assert response.headers["content-type"] == "application/x-ndjson"
        assert [orjson.loads(line) for line in response.text.splitlines()] == [
            {"n": 0, "square": 0},
            {"n": 1, "square": 1},
            {"n": 2, "square": 4},
        ]
        response = await client.get("/zeros", params={"size": 3 * 65536})
        assert response.headers["content-disposition"] == "attachment"
        assert response.content == bytes(3 * 65536)


async def test_starlette_example_shares_its_hub_with_the_mounted_server(server: str) -> None:
    example = load("starlette_app")
    async with serving(example.app, server) as url, httpx.AsyncClient(base_url=url) as client:
        async with open_sse(client, "/realtime/sse/builds:7") as reader:
            await reader.until(b"retry:")
            response = await client.post("/builds/7/log", content="compiling")
            assert response.json() == {"channel": "builds:7", "offset": 1}
            (compiling,) = await reader.events(1)
            assert orjson.loads(compiling.data) == {"line": "compiling"}
        await client.post("/builds/7/log", content="linking")
        async with open_sse(
            client, "/realtime/sse/builds:7", headers={"last-event-id": compiling.id}
        ) as reader:
            (linking,) = await reader.events(1)
            assert orjson.loads(linking.data) == {"line": "linking"}
        history = await client.get("/realtime/api/history/builds:7")
        assert [event["data"]["line"] for event in history.json()["events"]] == [
            "compiling",
            "linking",
        ]
        assert (await client.get("/realtime/static/tidings.js")).status_code == 200


async def test_asgi_example_streams_resumes_and_refuses_bad_input(server: str) -> None:
    example = load("asgi_app")
    async with serving(example.app, server) as url, httpx.AsyncClient(base_url=url) as client:
        async with open_sse(client, "/prices") as reader:
            await reader.until(b"retry:")
            assert reader.response.headers["content-type"].startswith("text/event-stream")
            assert (await client.post("/prices", json={"usd": 101})).json() == {"offset": 1}
            (first,) = await reader.events(1)
            assert orjson.loads(first.data) == {"usd": 101}
        await client.post("/prices", json={"usd": 99})
        async with open_sse(client, "/prices", headers={"last-event-id": first.id}) as reader:
            (second,) = await reader.events(1)
            assert orjson.loads(second.data) == {"usd": 99}
        bad = await client.post("/prices", content=b"{not json")
        assert (bad.status_code, bad.json()) == (400, {"error": "the body is not JSON"})
        cursor = await client.get("/prices", headers={"last-event-id": "garbage"})
        assert (cursor.status_code, cursor.json()["error"]["code"]) == (400, "invalid_cursor")
        assert (await client.get("/elsewhere")).status_code == 404
        assert (await client.delete("/prices")).status_code == 405
        await client.post("/prices", json={"usd": 100})
        async with open_sse(client, "/prices", headers={"last-event-id": second.id}) as reader:
            (third,) = await reader.events(1)  # the refused requests published nothing
            assert (decode_cursor(third.id)["prices"].offset, third.data) == (3, '{"usd":100}')
