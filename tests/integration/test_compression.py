"""Compression against a real ``tidings serve``: gzip for SSE (and the LLM relay's
streams) flushed per batch, permessage-deflate for WebSockets; fast and ASGI paths."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess
from tests.support.sse import GzipSSEReader, SSEReader
from tests.support.ws import Peer
from tidings.settings import Settings
from tidings.testing import run_server
from tidings.wire.cursor import decode_cursor

GZIP = {"accept-encoding": "gzip"}
IDENTITY = {"accept-encoding": "identity"}


def _env(path: str, **settings: str) -> dict[str, str]:
    env = {"TIDINGS_FAST_WRITE": "1" if path == "fast" else "0", "TIDINGS_SSE_KEEPALIVE": "0.3"}
    return env | {f"TIDINGS_{name.upper()}": value for name, value in settings.items()}


@pytest.fixture(scope="module", params=["fast", "asgi"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """Compression on: gzip for SSE, permessage-deflate for WebSockets."""
    env = _env(request.param, sse_compression="gzip", ws_compression="deflate")
    with ServerProcess(env=env) as process:
        yield process


@pytest.fixture(scope="module", params=["fast", "asgi"])
def plain_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """The default settings: no compression."""
    with ServerProcess(env=_env(request.param)) as process:
        yield process


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def channel() -> str:
    return f"z{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def open_gzip(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[GzipSSEReader]:
    async with client.stream("GET", url, headers={**GZIP, **(headers or {})}) as response:
        assert response.status_code == 200, (await response.aread())[:500]
        assert response.headers["content-encoding"] == "gzip"
        assert response.headers["vary"].lower() == "accept-encoding"
        reader = GzipSSEReader(response)
        try:
            yield reader
        finally:
            await reader.aclose()


async def publish(client: httpx.AsyncClient, channel: str, data: object) -> None:
    response = await client.post("/api/publish", json={"channel": channel, "data": data})
    assert response.status_code == 200, response.text


def payload(number: int) -> dict[str, object]:
    return {"n": number, "user": "alice", "text": "a message of a usual size " * 3}


async def test_each_event_is_decodable_as_soon_as_it_is_published(
    client: httpx.AsyncClient, channel: str
) -> None:
    async with open_gzip(client, f"/sse?channel={channel}") as reader:
        await reader.until(b"\n\n")  # retry and cursor, decoded from the first flush
        for number in range(1, 21):
            # The next publish waits for this event: only a flush lets it out.
            await publish(client, channel, payload(number))
            (event,) = await reader.events(1)
            assert json.loads(event.data) == payload(number)
            assert decode_cursor(event.id)[channel].offset == number
        assert not reader.ended
        # Similar events compress well over the shared dictionary.
        assert reader.wire_bytes < len(reader.raw) / 2


async def test_keepalive_comments_are_flushed_too(client: httpx.AsyncClient, channel: str) -> None:
    async with open_gzip(client, f"/sse?channel={channel}") as reader:
        await reader.until(b": ping\n\n", timeout=TIMEOUT)


async def test_resume_with_last_event_id_compressed(
    client: httpx.AsyncClient, channel: str
) -> None:
    async with open_gzip(client, f"/sse?channel={channel}") as reader:
        await reader.until(b"\n\n")
        for number in (1, 2):
            await publish(client, channel, payload(number))
        first, _ = await reader.events(2)
    for number in (3, 4):
        await publish(client, channel, payload(number))
    headers = {"last-event-id": first.id}
    async with open_gzip(client, f"/sse?channel={channel}", headers) as reader:
        replayed = await reader.events(3)
        assert [json.loads(event.data)["n"] for event in replayed] == [2, 3, 4]
        await publish(client, channel, payload(5))
        (live,) = await reader.events(1)
        assert json.loads(live.data)["n"] == 5


async def test_several_channels_and_a_burst(client: httpx.AsyncClient, channel: str) -> None:
    other = channel + "-b"
    async with open_gzip(client, f"/sse?channel={channel}&channel={other}") as reader:
        await reader.until(b"\n\n")
        await asyncio.gather(
            *(publish(client, (channel, other)[n % 2], payload(n)) for n in range(40))
        )
        events = await reader.events(40)
        assert sorted(json.loads(event.data)["n"] for event in events) == list(range(40))
        assert set(decode_cursor(events[-1].id)) == {channel, other}


async def test_httpx_decodes_it_transparently(client: httpx.AsyncClient, channel: str) -> None:
    # httpx sends Accept-Encoding: gzip (among others) and decodes the body.
    async with client.stream("GET", f"/sse/{channel}") as response:
        assert response.headers["content-encoding"] == "gzip"
        lines = response.aiter_lines()
        async with asyncio.timeout(TIMEOUT):
            assert (await anext(lines)).startswith("retry: ")
            await publish(client, channel, {"hello": "world"})
            async for line in lines:
                if line.startswith("data: "):
                    assert json.loads(line[6:]) == {"hello": "world"}
                    break


async def assert_identity(
    client: httpx.AsyncClient, channel: str, accept: str, *, vary: bool
) -> None:
    headers = {"accept-encoding": accept}
    async with client.stream("GET", f"/sse?channel={channel}", headers=headers) as response:
        assert "content-encoding" not in response.headers
        assert ("vary" in response.headers) is vary
        reader = SSEReader(response)
        await reader.until(b"\n\n")
        await publish(client, channel, 1)
        (event,) = await reader.events(1)
        assert event.data == "1"
        await reader.aclose()


@pytest.mark.parametrize("accept", ["identity", "gzip;q=0", "br"])
async def test_a_client_that_does_not_accept_gzip_gets_identity(
    client: httpx.AsyncClient, channel: str, accept: str
) -> None:
    await assert_identity(client, channel, accept, vary=True)


async def test_compression_off_answers_identity_without_vary(
    plain_server: ServerProcess, channel: str
) -> None:
    async with httpx.AsyncClient(base_url=plain_server.url, timeout=TIMEOUT) as client:
        await assert_identity(client, channel, "gzip", vary=False)


async def test_llm_streams_are_compressed(client: httpx.AsyncClient) -> None:
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=GZIP) as response:
        assert response.status_code == 200
        assert response.headers["content-encoding"] == "gzip"
        assert response.headers["vary"].lower() == "accept-encoding"
        reader = GzipSSEReader(response)
        async with asyncio.timeout(TIMEOUT * 4):
            events = []
            while not events or events[-1].data != "[DONE]":
                events += await reader.events(1, timeout=TIMEOUT * 4)
        stream_id = response.headers["x-tidings-stream-id"]
        chunks = [json.loads(event.data) for event in events[:-1]]
        assert chunks
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        await reader.aclose()
    async with client.stream("GET", f"/v1/streams/{stream_id}", headers=GZIP) as response:
        assert response.headers["content-encoding"] == "gzip"
        reader = GzipSSEReader(response)
        replayed = []
        async with asyncio.timeout(TIMEOUT):
            while not replayed or replayed[-1].event != "end":
                replayed += await reader.events(1)
        await reader.aclose()
        assert len([e for e in replayed if e.event == "message"]) == len(chunks)


@pytest.mark.parametrize("fast_write", [True, False], ids=["fast", "asgi"])
async def test_a_stream_the_server_stops_ends_a_complete_gzip_member(
    fast_write: bool, channel: str
) -> None:
    settings = Settings(log_level="warning", sse_compression="gzip", drain_timeout=2.0)
    async with run_server(settings=settings, fast_write=fast_write) as url:
        client = httpx.AsyncClient(base_url=url, timeout=TIMEOUT)
        stream = client.stream("GET", f"/sse?channel={channel}", headers=GZIP)
        response = await stream.__aenter__()
        reader = GzipSSEReader(response)
        await reader.until(b"\n\n")
        await publish(client, channel, 1)
        await reader.events(1)
    # The server stopped: the stream ended with a retry: and the gzip trailer.
    async with asyncio.timeout(TIMEOUT):
        async for chunk in reader._chunks:
            reader.raw += reader._decode(chunk)
    assert reader.ended
    assert reader.decompressor.unused_data == b""
    assert reader.raw.endswith(b"\n\n")
    assert b"retry: " in reader.raw.rsplit(b"data: 1", 1)[1]
    await stream.__aexit__(None, None, None)
    await client.aclose()


async def test_head_names_the_coding(client: httpx.AsyncClient, channel: str) -> None:
    response = await client.head(f"/sse?channel={channel}", headers=GZIP)
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"


# -- WebSocket: permessage-deflate ----------------------------------------------------


def ws_url(server: ServerProcess) -> str:
    return server.url.replace("http://", "ws://") + "/ws"


async def round_trip(ws: websockets.ClientConnection, client: httpx.AsyncClient) -> None:
    channel = f"w{uuid.uuid4().hex[:10]}"
    peer = Peer(ws)
    await peer.result("subscribe", channel=channel)
    for number in range(1, 6):
        await publish(client, channel, payload(number))
        push = await peer.push()
        assert (push["channel"], push["offset"], push["data"]) == (channel, number, payload(number))
    result = await peer.result("publish", channel=channel, data=payload(6))
    assert result["offset"] == 6
    assert (await peer.push())["data"] == payload(6)


async def test_websocket_negotiates_permessage_deflate_when_enabled(
    server: ServerProcess, client: httpx.AsyncClient
) -> None:
    async with connect(
        ws_url(server), subprotocols=["tidings.v1.json"], compression="deflate"
    ) as ws:
        assert [ext.name for ext in ws.protocol.extensions] == ["permessage-deflate"]
        await round_trip(ws, client)


async def test_websocket_without_deflate_on_a_deflate_server(
    server: ServerProcess, client: httpx.AsyncClient
) -> None:
    async with connect(ws_url(server), subprotocols=["tidings.v1.json"], compression=None) as ws:
        assert ws.protocol.extensions == []
        await round_trip(ws, client)


async def test_websocket_gets_no_deflate_when_disabled(plain_server: ServerProcess) -> None:
    async with (
        httpx.AsyncClient(base_url=plain_server.url, timeout=TIMEOUT) as client,
        connect(
            ws_url(plain_server), subprotocols=["tidings.v1.json"], compression="deflate"
        ) as ws,
    ):
        assert ws.protocol.extensions == []
        await round_trip(ws, client)
