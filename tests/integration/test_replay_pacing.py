"""A resume whose replay is bigger than the outbox bound catches up, on every transport,
on the fast write path and the plain ASGI path: the replay is paced by the reader, so
it is never cut off as a slow consumer for history it has not been sent yet."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import websockets

from tests.support.env import TIMEOUT, eventually
from tests.support.fake_openai import FakeUpstream, Scenario
from tests.support.server import ServerProcess
from tests.support.sse import SSEReader, open_sse
from tests.support.ws import Peer
from tidings.client import ConnectionState, Message, listen
from tidings.llm import LLMConfig
from tidings.settings import Settings
from tidings.testing import run_server
from tidings.wire.cursor import decode_cursor

OUTBOX = 64 * 1024
PAD = "x" * 1000  # each event is charged about 1.1 KB
COUNT = 300  # about 340 KB of replay: five times the outbox


@pytest.fixture(scope="module", params=["fast", "asgi"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    env = {
        "TIDINGS_FAST_WRITE": "1" if request.param == "fast" else "0",
        "TIDINGS_OUTBOX_MAX_BYTES": str(OUTBOX),
    }
    with ServerProcess(env=env) as process:
        yield process


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


async def publish(client: httpx.AsyncClient, channel: str, n: int) -> dict[str, Any]:
    response = await client.post(
        "/api/publish", json={"channel": channel, "data": {"n": n, "pad": PAD}}
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def history(client: httpx.AsyncClient, channel: str) -> str:
    """Publish events 0 … COUNT; return the epoch (the resume is from offset 1, event 0)."""
    first = await publish(client, channel, 0)
    for n in range(1, COUNT + 1):
        await publish(client, channel, n)
    return str(first["epoch"])


async def test_sse_resume(client: httpx.AsyncClient, channel: str) -> None:
    epoch = await history(client, channel)
    cursor = f"{channel}:{epoch}:1"
    async with open_sse(
        client, f"/sse?channel={channel}", headers={"last-event-id": cursor}
    ) as sse:
        replay = await sse.events(COUNT)
        await publish(client, channel, COUNT + 1)
        (live,) = await sse.events(1)
    numbers = [json.loads(event.data)["n"] for event in [*replay, live]]
    assert numbers == list(range(1, COUNT + 2)), "replay then live, no gap, no duplicate"
    assert decode_cursor(live.id)[channel].offset == COUNT + 2


async def test_channel_stream_resume(client: httpx.AsyncClient, channel: str) -> None:
    epoch = await history(client, channel)
    url = f"/api/stream/{channel}?since={epoch}:1"
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        async with asyncio.timeout(TIMEOUT):
            replay = [json.loads(await anext(lines)) for _ in range(COUNT)]
            await publish(client, channel, COUNT + 1)
            live = json.loads(await anext(lines))
    assert [line["data"]["n"] for line in [*replay, live]] == list(range(1, COUNT + 2))
    assert [line["offset"] for line in [*replay, live]] == list(range(2, COUNT + 3))


async def test_python_client_resume_without_reconnecting(
    server: ServerProcess, client: httpx.AsyncClient, channel: str
) -> None:
    epoch = await history(client, channel)
    states: list[ConnectionState] = []
    cursor = f"{channel}:{epoch}:1"
    async with listen(
        server.url, [channel], last_event_id=cursor, on_state=states.append
    ) as events:
        received: list[Message] = []
        async with asyncio.timeout(TIMEOUT):
            async for event in events:
                assert isinstance(event, Message), event
                received.append(event)
                if len(received) == COUNT:
                    await publish(client, channel, COUNT + 1)
                elif len(received) > COUNT:
                    break
    assert [event.json()["n"] for event in received] == list(range(1, COUNT + 2))
    assert [event.offset for event in received] == list(range(2, COUNT + 3))
    assert ConnectionState.RECONNECTING not in states  # caught up on the first connection


@pytest.mark.parametrize("since_in", ["command", "url"])
async def test_websocket_resume(
    server: ServerProcess, client: httpx.AsyncClient, channel: str, since_in: str
) -> None:
    epoch = await history(client, channel)
    url = f"ws://127.0.0.1:{server.port}/ws"
    if since_in == "url":
        url += f"?channel={channel}&last_event_id={channel}:{epoch}:1"
    async with websockets.connect(url, max_size=None, open_timeout=TIMEOUT) as ws:
        peer = Peer(ws)
        if since_in == "command":
            since = {"epoch": epoch, "offset": 1}
            result = await peer.result("subscribe", channel=channel, since=since)
            assert result["recovered"] is True
            assert result["replayed"] == COUNT
            assert result["offset"] == COUNT + 1
        replay = await peer.pushes_of(COUNT)
        await publish(client, channel, COUNT + 1)
        live = await peer.push()
    pushes = [*replay, live]
    if since_in == "url":  # raw mode: each push is the event's data
        assert [push["n"] for push in pushes] == list(range(1, COUNT + 2))
    else:
        assert [push["data"]["n"] for push in pushes] == list(range(1, COUNT + 2))
        assert [push["offset"] for push in pushes] == list(range(2, COUNT + 3))


# -- an LLM answer read again from its stream ----------------------------------------------

#: Some 160 KB of history: each token is an event of about 500 bytes. They come a
#: millisecond apart, so the answer's own request keeps up with them live.
TOKENS = [f"{n:05d}{'x' * 200} " for n in range(320)]


@pytest.fixture(params=["fast", "asgi"])
async def relay(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, FakeUpstream]]:
    async with FakeUpstream() as upstream:
        table = {
            "base_url": upstream.base_url,
            "providers": {"quick": {"kind": "openai", "base_url": upstream.base_url}},
            "models": {"*": "quick"},
        }
        settings = Settings(
            log_level="warning", outbox_max_bytes=OUTBOX, llm=LLMConfig.from_table(table)
        )
        async with run_server(settings=settings, fast_write=request.param == "fast") as url:
            yield url, upstream


async def read_to_end(reader: SSEReader) -> list[Any]:
    async with asyncio.timeout(TIMEOUT):
        with contextlib.suppress(StopAsyncIteration):
            while True:
                await reader._read_more()
    events, reader._pending = reader._pending, []
    return events


async def test_llm_stream_of_a_long_answer(relay: tuple[str, FakeUpstream]) -> None:
    url, upstream = relay
    upstream.scenario("long", Scenario(tokens=TOKENS, interval=0.001))
    document = {"model": "long", "messages": [{"role": "user", "content": "Go."}]}
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
        answer = await http.post("/v1/chat/completions", json=document)
        assert answer.status_code == 200, answer.text
        stream_id = answer.headers["x-tidings-stream-id"]
        async with open_sse(http, f"/v1/streams/{stream_id}") as viewer:
            events = await read_to_end(viewer)
    text = []
    for event in events:
        if event.event == "message" and event.data.startswith("{"):
            for choice in orjson.loads(event.data).get("choices", []):
                text.append(choice["delta"].get("content") or "")
    assert "".join(text) == "".join(TOKENS)
    assert events[-1].event == "end"
    assert orjson.loads(events[-1].data) == {"status": "completed"}


async def test_ai_sdk_resume_of_a_long_answer(relay: tuple[str, FakeUpstream]) -> None:
    url, upstream = relay
    scenario = upstream.scenario("long", Scenario(tokens=TOKENS, pause_after=3))
    body = {
        "id": "chat-long",
        "model": "long",
        "messages": [{"id": "m", "role": "user", "parts": [{"type": "text", "text": "Go."}]}],
    }
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
        async with http.stream("POST", "/v1/ai-sdk/chat", json=body) as response:
            assert response.status_code == 200
            stream_id = response.headers["x-tidings-stream-id"]
            call = await upstream.next_call(1, TIMEOUT)
            async with asyncio.timeout(TIMEOUT):
                await call.paused.wait()
        scenario.release.set()  # the page went away; the answer goes on without it

        async def ended() -> bool:
            record = await http.get(
                f"/v1/streams/{stream_id}", headers={"accept": "application/json"}
            )
            return bool(record.json()["status"] == "completed")

        await eventually(ended)
        resumed = await http.get("/v1/ai-sdk/chat/chat-long/stream")
    assert resumed.status_code == 200
    lines = [line[6:] for line in resumed.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    parts = [orjson.loads(line) for line in lines[:-1]]
    text = "".join(part.get("delta", "") for part in parts if part["type"] == "text-delta")
    assert text == "".join(TOKENS)
    assert parts[-1]["type"] == "finish"
