"""server/sse.py driven with ASGI fakes: both write paths, flow control, cut-off, frames."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.env import TIMEOUT
from tidings.hub import Hub, Reset
from tidings.hub.event import Event
from tidings.server.sse import SSE_CHUNK, SSE_FRAME, SSEKeepalive, SSEStream
from tidings.server.writer import FAST_WRITE, BodyEncoder, WriteListener
from tidings.types import Position
from tidings.wire.cursor import decode_cursor
from tidings.wire.sse import SSEDecoder


class FakeClient:
    """receive/send for one HTTP request; ``disconnect()`` ends it from the client side."""

    def __init__(self, *, block_sends_after: int | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self._disconnected = asyncio.Event()
        self._block_after = block_sends_after
        self.arrived = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self._disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.arrived.set()
        if self._block_after is not None and len(self.messages) > self._block_after:
            await asyncio.Event().wait()  # backpressure that never lifts

    def disconnect(self) -> None:
        self._disconnected.set()

    @property
    def body(self) -> bytes:
        return b"".join(
            m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"
        )

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                self.arrived.clear()
                await self.arrived.wait()


class FakeFastWrite:
    """The tidings.write extension over a recording transport."""

    def __init__(self) -> None:
        self.paused = False
        self.written: list[bytes] = []
        self.listener: WriteListener | None = None
        self.encoder: BodyEncoder | None = None
        self.aborted = False
        self.attached = asyncio.Event()
        self.wrote = asyncio.Event()
        self.closed = False
        self.handed_off = False

    def attach(
        self, listener: WriteListener, encoder: BodyEncoder | None = None
    ) -> Callable[[bytes], object]:
        self.listener = listener
        self.encoder = encoder
        self.attached.set()
        return self.record

    def record(self, data: bytes) -> None:
        # Every write is a batch of its own here (no coalescing writer).
        self.written.append(data if self.encoder is None else self.encoder.encode_batch(data))
        self.wrote.set()

    def detach(self) -> None:
        self.listener = None

    def write(self, data: bytes) -> None:
        self.record(data)

    def abort(self) -> None:
        self.aborted = True
        if self.listener is not None:
            self.listener.connection_lost()

    def end(self) -> None:
        if self.encoder is not None:
            self.written.append(self.encoder.encode_last(b""))
        self.closed = True

    def hand_off(self) -> None:
        self.handed_off = True


def scope(
    fast: FakeFastWrite | None = None, headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/sse",
        "headers": headers or [],
        "extensions": {FAST_WRITE: fast} if fast is not None else {},
    }


def decode(data: bytes) -> list[Any]:
    decoder = SSEDecoder()
    return decoder.feed(data)


def unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size, _, rest = data.partition(b"\r\n")
        length = int(size, 16)
        out += rest[:length]
        assert rest[length : length + 2] == b"\r\n"
        data = rest[length + 2 :]
    return bytes(out)


async def test_asgi_path_streams_and_ends_on_disconnect() -> None:
    async with Hub() as hub:
        client = FakeClient()
        stream = SSEStream(hub, ["a"])
        task = asyncio.create_task(stream(scope(), client.receive, client.send))
        await client.wait_for(lambda: len(client.messages) == 2)
        start = client.messages[0]
        assert start["status"] == 200
        assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
        await hub.publish("a", 1)
        await hub.publish("a", 2)
        await client.wait_for(lambda: b"data: 2" in client.body)
        events = decode(client.body)
        assert [event.data for event in events] == ["1", "2"]
        client.disconnect()
        await asyncio.wait_for(task, TIMEOUT)
        assert hub.stats().subscriptions == 0


async def test_fast_path_hands_off_writes_chunks_and_obeys_flow_control() -> None:
    async with Hub() as hub:
        client = FakeClient()
        fast = FakeFastWrite()
        # The ASGI call returns once the stream is handed to the transport.
        await asyncio.wait_for(
            SSEStream(hub, ["a"])(scope(fast), client.receive, client.send), TIMEOUT
        )
        assert fast.handed_off
        assert fast.listener is not None
        await hub.publish("a", 1)
        assert len(fast.written) == 1
        assert decode(unchunk(fast.written[0]))[0].data == "1"
        fast.listener.pause_writing()
        await hub.publish("a", 2)
        await hub.publish("a", 3)
        assert len(fast.written) == 1
        fast.listener.resume_writing()
        assert len(fast.written) == 2  # both queued events in one write
        assert [e.data for e in decode(unchunk(fast.written[1]))] == ["2", "3"]
        fast.listener.connection_lost()
        assert hub.stats().subscriptions == 0
        assert fast.listener is None
        assert not fast.closed  # the peer left: nothing to close politely


async def test_fast_path_slow_consumer_is_aborted() -> None:
    async with Hub(outbox_max_bytes=1000) as hub:
        client = FakeClient()
        fast = FakeFastWrite()
        await asyncio.wait_for(
            SSEStream(hub, ["a"])(scope(fast), client.receive, client.send), TIMEOUT
        )
        assert fast.listener is not None
        fast.listener.pause_writing()
        for n in range(20):
            await hub.publish("a", n)
        assert fast.aborted
        assert hub.stats().slow_consumers == 1
        assert hub.stats().subscriptions == 0


async def test_fast_path_shutdown_ends_with_the_last_chunk() -> None:
    async with Hub() as hub:
        client = FakeClient()
        fast = FakeFastWrite()
        opened: list[int] = []
        stream = SSEStream(hub, ["a"], on_open=opened.append)
        await asyncio.wait_for(stream(scope(fast), client.receive, client.send), TIMEOUT)
        assert fast.listener is not None
        fast.listener.shutdown()
        assert fast.written[-1] == b"0\r\n\r\n"
        assert fast.closed
        assert opened == [1, -1]
        assert hub.stats().subscriptions == 0


async def test_asgi_path_cuts_a_send_blocked_by_backpressure() -> None:
    async with Hub(outbox_max_bytes=1000) as hub:
        client = FakeClient(block_sends_after=2)
        task = asyncio.create_task(SSEStream(hub, ["a"])(scope(), client.receive, client.send))
        await client.wait_for(lambda: len(client.messages) == 2)
        await hub.publish("a", 0)  # the send of this one blocks forever
        await client.wait_for(lambda: len(client.messages) == 3)
        for n in range(1, 20):
            await hub.publish("a", n)
        await asyncio.wait_for(task, TIMEOUT)
        assert hub.stats().slow_consumers == 1
        assert hub.stats().subscriptions == 0
        # The response is left incomplete on purpose: no final empty body.
        assert client.messages[-1].get("more_body") is True


async def test_shutdown_ends_the_response_cleanly() -> None:
    hub = Hub()
    await hub.start()
    client = FakeClient()
    task = asyncio.create_task(SSEStream(hub, ["a"])(scope(), client.receive, client.send))
    await client.wait_for(lambda: len(client.messages) == 2)
    await hub.aclose()
    await asyncio.wait_for(task, TIMEOUT)
    # The last body announces the reconnection delay, then the response ends.
    assert client.messages[-1] == {
        "type": "http.response.body",
        "body": b"retry: 3000\n\n",
        "more_body": False,
    }


async def test_shutdown_spreads_the_last_retry_over_the_window() -> None:
    hub = Hub()
    await hub.start()
    clients = [FakeClient() for _ in range(20)]
    tasks = [
        asyncio.create_task(
            SSEStream(hub, ["a"], retry=1.0, retry_spread=5.0)(scope(), c.receive, c.send)
        )
        for c in clients
    ]
    for client in clients:
        await client.wait_for(lambda client=client: len(client.messages) == 2)  # type: ignore[misc]
    await hub.aclose()
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    delays = set()
    for client in clients:
        last = client.messages[-1]
        assert last["more_body"] is False
        assert last["body"].startswith(b"retry: ")
        assert last["body"].endswith(b"\n\n")
        delays.add(int(last["body"][7:-2]))
    assert all(1000 <= delay <= 6000 for delay in delays), delays
    assert len(delays) > 1


async def test_multi_channel_ids_name_the_event_channel_first() -> None:
    async with Hub() as hub:
        client = FakeClient()
        task = asyncio.create_task(
            SSEStream(hub, ["a", "b", "c"])(scope(), client.receive, client.send)
        )
        await client.wait_for(lambda: len(client.messages) == 2)
        b = await hub.publish("b", "x")
        await client.wait_for(lambda: b"data:" in client.body)
        (event,) = decode(client.body)
        cursor = decode_cursor(event.id)
        assert list(cursor) == ["b", "a", "c"]
        assert cursor["b"] == b
        assert cursor["a"].offset == 0
        client.disconnect()
        await asyncio.wait_for(task, TIMEOUT)


async def test_keepalive_pings_both_paths() -> None:
    async with Hub() as hub:
        keepalive = SSEKeepalive(0.01)
        client = FakeClient()
        fast = FakeFastWrite()
        plain = FakeClient()
        await SSEStream(hub, ["a"], keepalive=keepalive)(scope(fast), client.receive, client.send)
        tasks = [
            asyncio.create_task(
                SSEStream(hub, ["a"], keepalive=keepalive)(scope(), plain.receive, plain.send)
            ),
        ]
        await plain.wait_for(lambda: b": ping" in plain.body)
        async with asyncio.timeout(TIMEOUT):
            while b"".join(fast.written).count(b": ping") < 2:
                fast.wrote.clear()
                await fast.wrote.wait()
        assert fast.listener is not None
        fast.listener.connection_lost()
        plain.disconnect()
        await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)


def test_frames_are_shared_and_spec_correct() -> None:
    event = Event("c", "ep", 7, b"line 1\nline 2", event="update", is_text=True)
    frame = SSE_FRAME(event)
    assert frame == b"id: c:ep:7\nevent: update\ndata: line 1\ndata: line 2\n\n"
    assert SSE_FRAME(event) is frame
    assert unchunk(SSE_CHUNK(event)) == frame
    reset = Reset("c", Position("ep", 9), "window")
    (decoded,) = decode(SSE_FRAME(reset))
    assert decoded.event == "reset"
    assert decoded.id == "c:ep:9"


@pytest.mark.parametrize("method", ["HEAD"])
async def test_head_gets_headers_only(method: str) -> None:
    async with Hub() as hub:
        client = FakeClient()
        request = scope()
        request["method"] = method
        await asyncio.wait_for(SSEStream(hub, ["a"])(request, client.receive, client.send), TIMEOUT)
        assert client.messages[0]["status"] == 200
        assert client.body == b""
        assert hub.stats().subscriptions == 0


GZIP = [(b"accept-encoding", b"gzip")]


async def test_gzip_asgi_path_flushes_every_body_and_ends_the_member_at_shutdown() -> None:
    async with Hub() as hub:
        client = FakeClient()
        stream = SSEStream(hub, ["a"], compression="gzip")
        task = asyncio.create_task(stream(scope(headers=GZIP), client.receive, client.send))
        await client.wait_for(lambda: len(client.messages) == 2)
        headers = client.messages[0]["headers"]
        assert (b"content-encoding", b"gzip") in headers
        assert (b"vary", b"accept-encoding") in headers
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        assert decoder.decompress(client.body).startswith(b"retry: 3000\nid: a:")
        await hub.publish("a", 1)
        await client.wait_for(lambda: len(client.messages) == 3)
        # Everything sent so far decodes: the batch was flushed.
        assert (
            decode(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(client.body))[-1].data == "1"
        )
    await asyncio.wait_for(task, TIMEOUT)  # the hub closed: shutdown ends the stream
    whole = zlib.decompress(client.body, 16 + zlib.MAX_WBITS)  # a complete member
    assert whole.endswith(b"\n\n")
    assert b"retry: " in whole.rsplit(b"data: 1", 1)[1]


async def test_gzip_fast_path_writes_unchunked_frames_through_the_encoder() -> None:
    async with Hub() as hub:
        client = FakeClient()
        fast = FakeFastWrite()
        stream = SSEStream(hub, ["a"], compression="gzip")
        await asyncio.wait_for(stream(scope(fast, GZIP), client.receive, client.send), TIMEOUT)
        assert fast.encoder is not None
        assert (b"content-encoding", b"gzip") in client.messages[0]["headers"]
        await hub.publish("a", 1)
        assert fast.listener is not None
        fast.listener.shutdown()
        assert fast.closed
        assert fast.written[-1].endswith(b"0\r\n\r\n")  # the encoder ended the body
        # The head went through ASGI send, the rest through the fast path's encoder.
        body = client.body + unchunk(b"".join(fast.written)[: -len(b"0\r\n\r\n")])
        whole = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        assert [event.data for event in decode(whole)] == ["1"]
        assert b"retry: " in whole.rsplit(b"data: 1", 1)[1]


@pytest.mark.parametrize(
    ("compression", "headers", "coded", "vary"),
    [
        ("gzip", [(b"accept-encoding", b"identity")], False, True),
        ("gzip", [], False, True),
        ("off", GZIP, False, False),
        ("gzip", GZIP, True, True),
    ],
)
async def test_gzip_only_when_enabled_and_accepted(
    compression: str, headers: list[tuple[bytes, bytes]], coded: bool, vary: bool
) -> None:
    async with Hub() as hub:
        client = FakeClient()
        stream = SSEStream(hub, ["a"], compression=compression)
        task = asyncio.create_task(stream(scope(headers=headers), client.receive, client.send))
        await client.wait_for(lambda: len(client.messages) == 2)
        start = client.messages[0]["headers"]
        assert ((b"content-encoding", b"gzip") in start) is coded
        assert ((b"vary", b"accept-encoding") in start) is vary
        assert client.body.startswith(b"retry: ") is not coded
        client.disconnect()
        await asyncio.wait_for(task, TIMEOUT)


def test_unknown_compression_is_refused() -> None:
    with pytest.raises(ValueError, match="compression must be 'off' or 'gzip'"):
        SSEStream(Hub(), ["a"], compression="br")
