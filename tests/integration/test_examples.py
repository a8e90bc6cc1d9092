"""The examples in examples/ run as documented."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import httpx
import orjson
import pytest

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


async def test_fastapi_example_streams_and_resumes() -> None:
    example = load("fastapi_app")
    async with run_server(example.app) as url, httpx.AsyncClient(base_url=url) as client:
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


async def test_client_examples_run_against_a_server(tmp_path: Path) -> None:
    hub = Hub()
    async with hub, run_server(create_app(hub, Settings(log_level="warning"))) as url:
        port = url.rsplit(":", 1)[1]
        for name in ("client_listen", "client_sync"):
            source = (
                (EXAMPLES / f"{name}.py").read_text().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            )
            script = tmp_path / f"{name}.py"
            script.write_text(source)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            await eventually(lambda: hub.stats().subscriptions == 1, timeout=TIMEOUT * 2)
            channel = "orders" if name == "client_listen" else "jobs"
            await hub.publish(channel, {"id": 1, "state": "done"})
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
            assert b"done" in line
            process.terminate()
            await asyncio.wait_for(process.wait(), TIMEOUT)


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


async def test_llm_fastapi_example_streams_an_answer_and_resumes() -> None:
    example = load("llm_fastapi")
    async with run_server(example.app) as url, httpx.AsyncClient(base_url=url) as client:
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


async def test_socket_example_consumes_and_publishes(tmp_path: Path) -> None:
    hub = Hub()
    async with hub, run_server(create_app(hub, Settings(log_level="warning"))) as url:
        port = url.rsplit(":", 1)[1]
        source = (EXAMPLES / "client_socket.py").read_text()
        script = tmp_path / "client_socket.py"
        script.write_text(source.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            await eventually(lambda: hub.subscriber_count("orders") == 1, timeout=TIMEOUT * 2)
            await hub.publish("orders", {"id": 7, "state": "paid"})
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
            assert line == b"orders 1 {'id': 7, 'state': 'paid'}\n"
            line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
            assert line == b"packed at 1\n"
            history = await hub.history("packed")
            assert [event.data for event in history.events] == [{"order": 7}]
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), TIMEOUT)


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


async def test_hooks_example_signs_in_checks_rooms_and_filters_words() -> None:
    example = load("hooks_app")
    async with run_server(example.app) as url, httpx.AsyncClient(base_url=url) as client:
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
        stranger = await client.post("/api/publish", json=said)
        assert (stranger.status_code, stranger.json()["error"]["code"]) == (403, "not_a_member")
