"""The AI SDK chat endpoint end to end: the `ai` npm package's client -> Tidings -> a fake upstream.

The client side is the package's own code (DefaultChatTransport, readUIMessageStream,
AbstractChat) run by Node from tests/support/ai_sdk_client.mjs; it needs ``node`` and
``ai`` under ``$TIDINGS_NPM_PREFIX`` (default /tmp/tidings-npm; ``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.env import TIMEOUT, eventually, unavailable
from tests.support.fake_openai import FakeUpstream, Scenario
from tidings.llm import LLMConfig
from tidings.server.auth import mint_token
from tidings.settings import Settings
from tidings.testing import run_server

NPM_PREFIX = Path(os.environ.get("TIDINGS_NPM_PREFIX", "/tmp/tidings-npm"))
CLIENT = Path(__file__).parents[1] / "support" / "ai_sdk_client.mjs"
EXAMPLE = Path(__file__).parents[2] / "examples" / "ai_sdk_chat.mjs"
TOKENS = [f"tok{index} " for index in range(12)]
JSON = {"content-type": "application/json"}
JWT_SECRET = "an-integration-secret-of-32-bytes-or-more"


def settings_for(upstream: FakeUpstream, **options: Any) -> Settings:
    table = {
        "base_url": upstream.base_url,
        "grace": 30.0,
        "providers": {"demo": {"kind": "demo", "first_token_delay": 0.0, "token_interval": 0.0}},
        "models": {"demo": "demo"},
    }
    return Settings(log_level="warning", llm=LLMConfig.from_table(table), **options)


def ui_message(text: str = "Say something.") -> dict[str, Any]:
    return {"id": "m-user", "role": "user", "parts": [{"type": "text", "text": text}]}


def node() -> str:
    found = shutil.which("node")
    if found is None:
        unavailable("node is not installed (apt-get install nodejs)")
    if not (NPM_PREFIX / "node_modules" / "ai" / "dist" / "index.mjs").is_file():
        unavailable(f"the npm package ai is not under {NPM_PREFIX} (.ci/run installs it)")
    return found


class NodeClient:
    """One run of a Node script; its stdout read as JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(4 * TIMEOUT):
            raw = await self.process.stdout.readline()
        if not raw:
            assert self.process.stderr is not None
            raise AssertionError((await self.process.stderr.read()).decode())
        line: dict[str, Any] = orjson.loads(raw)
        return line

    async def result(self) -> dict[str, Any]:
        line = await self.line()
        assert "failure" not in line, line["failure"]
        result: dict[str, Any] = line["result"]
        return result


async def start_node(*args: str) -> NodeClient:
    process = await asyncio.create_subprocess_exec(
        node(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TIDINGS_NPM_PREFIX": str(NPM_PREFIX)},
    )
    return NodeClient(process)


async def stop_node(client: NodeClient) -> None:
    if client.process.returncode is None:
        client.process.kill()
    async with asyncio.timeout(TIMEOUT):
        await client.process.wait()


async def run_client(base: str, mode: str, chat_id: str, model: str, **plan: Any) -> dict[str, Any]:
    document = {"mode": mode, "api": base + "/v1/ai-sdk/chat", "chatId": chat_id, "model": model}
    client = await start_node(str(CLIENT), orjson.dumps({**document, **plan}).decode())
    try:
        return await client.result()
    finally:
        await stop_node(client)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
async def base(upstream: FakeUpstream, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A server with the fast write path, or (``indirect`` param "asgi") the plain ASGI one."""
    fast_write = getattr(request, "param", "fast") == "fast"
    async with run_server(settings=settings_for(upstream), fast_write=fast_write) as url:
        yield url


def texts(chunks: list[dict[str, Any]]) -> list[str]:
    return [chunk["delta"] for chunk in chunks if chunk["type"] == "text-delta"]


def types(chunks: list[dict[str, Any]]) -> list[str]:
    return [chunk["type"] for chunk in chunks]


@pytest.mark.parametrize("base", ["fast", "asgi"], indirect=True)
async def test_the_sdk_reads_every_delta_in_order_then_finish(
    base: str, upstream: FakeUpstream
) -> None:
    result = await run_client(base, "send", "chat-send", "fake")
    chunks = result["chunks"]
    assert types(chunks) == [
        "start",
        "start-step",
        "text-start",
        *["text-delta"] * len(TOKENS),
        "text-end",
        "finish-step",
        "finish",
    ]
    assert texts(chunks) == TOKENS
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}
    message = result["message"]
    assert message["id"] == chunks[0]["messageId"]
    assert message["role"] == "assistant"
    assert [part for part in message["parts"] if part["type"] == "text"] == [
        {"type": "text", "text": "".join(TOKENS), "state": "done"}
    ]
    assert result["error"] is None
    call = await upstream.next_call(1, TIMEOUT)
    assert call.body["model"] == "fake"
    assert call.body["messages"] == [{"role": "user", "content": "Say something."}]
    # The answer arrived whole: there is nothing to resume (204), for the SDK too.
    assert (await run_client(base, "resume", "chat-send", "fake")) == {"resumed": None}


async def test_a_tool_call_is_streamed_as_tool_input_parts(
    base: str, upstream: FakeUpstream
) -> None:
    upstream.scenario("tools", Scenario(tool_call=("get_weather", ['{"city"', ': "Paris"}'])))
    result = await run_client(base, "send", "chat-tools", "tools")
    chunks = result["chunks"]
    assert chunks[2:] == [
        {"type": "tool-input-start", "toolCallId": "call_1", "toolName": "get_weather"},
        {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '{"city"'},
        {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": ': "Paris"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "call_1",
            "toolName": "get_weather",
            "input": {"city": "Paris"},
        },
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "tool-calls"},
    ]
    [tool] = [part for part in result["message"]["parts"] if part["type"] == "tool-get_weather"]
    assert tool["state"] == "input-available"
    assert tool["input"] == {"city": "Paris"}


async def test_a_tool_output_goes_back_and_the_answer_continues_the_message(
    base: str, upstream: FakeUpstream
) -> None:
    upstream.scenario("tools", Scenario(tool_call=("get_weather", ['{"city": "Paris"}'])))
    result = await run_client(
        base, "tools", "chat-tools-2", "tools", nextModel="fake", output={"celsius": 21}
    )
    assert result["error"] is None
    user, assistant = result["messages"]  # one assistant message, continued
    assert user["role"] == "user"
    tool, text = [part for part in assistant["parts"] if part["type"] != "step-start"]
    assert tool["type"] == "tool-get_weather"
    assert tool["state"] == "output-available"
    assert tool["output"] == {"celsius": 21}
    assert text == {"type": "text", "text": "".join(TOKENS), "state": "done"}
    second = await upstream.next_call(2, TIMEOUT)
    assert second.body["model"] == "fake"
    assert second.body["messages"] == [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius":21}'},
    ]


async def test_an_upstream_failure_is_an_error_part(base: str, upstream: FakeUpstream) -> None:
    upstream.scenario("failing", Scenario(fail_after=3))
    result = await run_client(base, "send", "chat-error", "failing")
    chunks = result["chunks"]
    assert texts(chunks) == TOKENS[:3]
    assert types(chunks)[-4:] == ["text-end", "finish-step", "error", "finish"]
    assert "failed mid-stream" in chunks[-2]["errorText"]
    assert chunks[-1] == {"type": "finish", "finishReason": "error"}
    assert result["error"] == chunks[-2]["errorText"]  # readUIMessageStream reported it


async def test_resume_after_a_cut_replays_the_generation_once(
    base: str, upstream: FakeUpstream
) -> None:
    scenario = upstream.scenario("paused", Scenario(pause_after=4))
    plan = {"mode": "cut", "api": base + "/v1/ai-sdk/chat", "chatId": "chat-cut"}
    client = await start_node(
        str(CLIENT), orjson.dumps({**plan, "model": "paused", "cutAfter": 4}).decode()
    )
    try:
        cut = await client.line()
        assert cut == {"event": "cut", "status": "ready"}
        resumed = await client.line()
        assert resumed == {"event": "resumed", "found": True}
        scenario.release.set()  # the rest comes live, to the resumed stream
        result = await client.result()
    finally:
        await stop_node(client)
    assert texts(result["first"]) == TOKENS[:4]
    assert "finish" not in types(result["first"])
    # The resume replays from the start (DefaultChatTransport's resumeStreamIsReplay):
    # what was published before it folded into one delta, then every later
    # delta exactly once, in order, then finish.
    assert texts(result["resumed"]) == ["".join(TOKENS[:4]), *TOKENS[4:]]
    assert types(result["resumed"])[-1] == "finish"
    assert result["resumed"][0] == result["first"][0]  # the same start, the same messageId
    user, assistant = result["messages"]
    assert user["role"] == "user"
    assert assistant["id"] == result["first"][0]["messageId"]
    assert [part["text"] for part in assistant["parts"] if part["type"] == "text"] == [
        "".join(TOKENS)
    ]
    assert result["errors"] == []
    assert result["status"] == "ready"
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        assert (await http.get("/v1/ai-sdk/chat/chat-cut/stream")).status_code == 204


async def test_the_example_script_streams_an_answer(base: str, tmp_path: Path) -> None:
    # Where the example imports "ai" from, as in a project that ran `npm install ai`.
    (tmp_path / "node_modules").symlink_to(NPM_PREFIX / "node_modules")
    shutil.copy(EXAMPLE, tmp_path / EXAMPLE.name)
    client = await start_node(str(tmp_path / EXAMPLE.name), base + "/v1/ai-sdk/chat", "Hello")
    try:
        assert client.process.stdout is not None
        async with asyncio.timeout(4 * TIMEOUT):
            out = (await client.process.stdout.read()).decode()
            assert await client.process.wait() == 0
    finally:
        await stop_node(client)
    assert 'You asked: "Hello".' in out
    assert out.rstrip().endswith("[finish: stop]")


# -- refusals (no Node needed) ---------------------------------------------------------


async def test_bad_requests_are_refused_and_start_nothing(
    base: str, upstream: FakeUpstream
) -> None:
    good = {"id": "chat-bad", "messages": [ui_message()], "model": "fake"}
    cases = [
        ({**good, "id": 7}, "id"),
        ({**good, "id": "a/b"}, "id"),
        ({**good, "id": ".."}, "id"),
        ({**good, "messages": []}, "messages"),
        ({**good, "trigger": "resume-stream"}, "trigger"),
        ({**good, "messages": [{"role": "tool", "parts": []}]}, "messages[0].role"),
        ({**good, "messages": [{"role": "user", "parts": "hi"}]}, "messages[0].parts"),
        ({**good, "temperature": 9}, "temperature"),
        ({key: value for key, value in good.items() if key != "model"}, "model"),
    ]
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        for body, param in cases:
            response = await http.post("/v1/ai-sdk/chat", json=body)
            assert response.status_code == 400, body
            assert response.json()["error"]["param"] == param
        response = await http.post(
            "/v1/ai-sdk/chat", content=b"{", headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        response = await http.post(
            "/v1/ai-sdk/chat", content=b"id=1", headers={"content-type": "text/plain"}
        )
        assert response.status_code == 415
        assert (await http.get("/v1/ai-sdk/chat/a..b%20c/stream")).status_code == 404
        assert (await http.get("/v1/ai-sdk/chat/chat-bad/stream")).status_code == 204
        deleted = await http.delete("/v1/ai-sdk/chat/chat-bad/stream", headers=JSON)
        assert deleted.status_code == 404
        stats = (await http.get("/api/stats")).json()
    assert stats["llm"]["started"] == 0
    assert upstream.calls == []


async def test_a_chat_is_its_owners_and_delete_stops_it(upstream: FakeUpstream) -> None:
    scenario = upstream.scenario("paused", Scenario(pause_after=2))
    settings = dataclasses.replace(settings_for(upstream), jwt_secret=JWT_SECRET)
    alice = {"authorization": f"Bearer {mint_token(JWT_SECRET, sub='alice', ttl=600)}"}
    bob = {"authorization": f"Bearer {mint_token(JWT_SECRET, sub='bob', ttl=600)}"}
    body = {"id": "chat-1", "messages": [ui_message()], "model": "paused"}
    async with (
        run_server(settings=settings) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
    ):
        assert (await http.post("/v1/ai-sdk/chat", json=body)).status_code == 401
        assert (await http.get("/v1/ai-sdk/chat/chat-1/stream")).status_code == 401
        async with http.stream("POST", "/v1/ai-sdk/chat", json=body, headers=alice) as response:
            assert response.status_code == 200
            assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
            stream_id = response.headers["x-tidings-stream-id"]
            lines = response.aiter_lines()
            await anext(lines)  # the start chunk
            call = await upstream.next_call(1, TIMEOUT)
            async with asyncio.timeout(TIMEOUT):
                await call.paused.wait()
            # Bob's "chat-1" is another chat: nothing to resume, nothing to stop.
            assert (await http.get("/v1/ai-sdk/chat/chat-1/stream", headers=bob)).status_code == 204
            refused = await http.delete("/v1/ai-sdk/chat/chat-1/stream", headers=bob)
            assert refused.status_code == 404
            assert not call.disconnected.is_set()
            deleted = await http.delete("/v1/ai-sdk/chat/chat-1/stream", headers=alice)
            assert deleted.status_code == 200
            assert deleted.json() == {
                "id": "chat-1",
                "object": "tidings.chat.stream",
                "stream": stream_id,
                "status": "cancelled",
            }
            async with asyncio.timeout(TIMEOUT):
                await call.disconnected.wait()
                rest = [line async for line in lines if line.startswith("data: ")]
        assert rest[-2:] == ['data: {"type":"abort","reason":"deleted"}', "data: [DONE]"]
        assert not scenario.release.is_set()


async def test_a_chat_nobody_reads_is_cancelled_after_grace(upstream: FakeUpstream) -> None:
    """The AI SDK's stop() aborts the request: the generation goes once unheard for grace."""
    upstream.scenario("paused", Scenario(pause_after=2))
    settings = settings_for(upstream)
    settings = dataclasses.replace(
        settings, llm=dataclasses.replace(settings.llm, grace=0.2 * TIMEOUT)
    )
    body = {"id": "chat-gone", "messages": [ui_message()], "model": "paused"}
    async with (
        run_server(settings=settings) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
    ):
        async with http.stream("POST", "/v1/ai-sdk/chat", json=body) as response:
            assert response.status_code == 200
            call = await upstream.next_call(1, TIMEOUT)
            async with asyncio.timeout(TIMEOUT):
                await call.paused.wait()
        async with asyncio.timeout(TIMEOUT):
            await call.disconnected.wait()  # the upstream request was closed

        async def cancelled() -> bool:
            return bool((await http.get("/api/stats")).json()["llm"]["cancelled"] == 1)

        await eventually(cancelled)


async def test_limits_hold_as_on_chat_completions(upstream: FakeUpstream) -> None:
    upstream.scenario("paused", Scenario(pause_after=1))
    settings = settings_for(upstream)
    settings = dataclasses.replace(
        settings,
        llm=dataclasses.replace(settings.llm, max_generations_per_client=1, max_body_bytes=2000),
    )
    body = {"id": "chat-limits", "messages": [ui_message()], "model": "paused"}
    async with (
        run_server(settings=settings) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
    ):
        large = await http.post("/v1/ai-sdk/chat", json={**body, "pad": "x" * 2000})
        assert large.status_code == 413
        async with http.stream("POST", "/v1/ai-sdk/chat", json=body) as response:
            assert response.status_code == 200
            refused = await http.post("/v1/ai-sdk/chat", json={**body, "id": "chat-2"})
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "too_many_generations"
            upstream.scenarios["paused"].release.set()


async def test_a_resume_after_the_answer_ended_gets_it_folded_then_finish(
    upstream: FakeUpstream,
) -> None:
    """The page went away mid-answer and the answer finished meanwhile: one delta, finish."""
    scenario = upstream.scenario("paused", Scenario(pause_after=3))
    body = {"id": "chat-late", "messages": [ui_message()], "model": "paused"}
    async with (
        run_server(settings=settings_for(upstream)) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
    ):
        async with http.stream("POST", "/v1/ai-sdk/chat", json=body) as response:
            assert response.status_code == 200
            generation_id = response.headers["x-tidings-stream-id"]
            call = await upstream.next_call(1, TIMEOUT)
            async with asyncio.timeout(TIMEOUT):
                await call.paused.wait()
        scenario.release.set()  # the page is gone; the answer ends within the grace period

        async def ended() -> bool:
            record = await http.get(
                f"/v1/streams/{generation_id}", headers={"accept": "application/json"}
            )
            return bool(record.json()["status"] == "completed")

        await eventually(ended)
        resumed = await http.get("/v1/ai-sdk/chat/chat-late/stream")
        assert resumed.status_code == 200
        lines = [line[6:] for line in resumed.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        parts = [orjson.loads(line) for line in lines[:-1]]
        assert types(parts) == [
            "start",
            "start-step",
            "text-start",
            "text-delta",
            "text-end",
            "finish-step",
            "finish",
        ]
        assert texts(parts) == ["".join(TOKENS)]
        # Delivered whole now: nothing more to resume.
        assert (await http.get("/v1/ai-sdk/chat/chat-late/stream")).status_code == 204
