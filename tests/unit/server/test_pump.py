"""server/pump.py: the pull loop driven with ASGI fakes, on both write paths."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from starlette.types import Message

from tests.support.env import TIMEOUT
from tests.unit.server.test_responses import Peer as ResponsesPeer
from tidings.server.pump import Pump, chunk
from tidings.server.writer import FAST_WRITE, WriteListener


class FakeFastWrite:
    """The ``tidings.write`` extension of one connection, recording writes."""

    def __init__(self) -> None:
        self.paused = False
        self.written: list[bytes] = []
        self.listener: WriteListener | None = None
        self.released = False
        self.aborted = False

    def attach(self, listener: WriteListener) -> Callable[[bytes], object]:
        self.listener = listener
        return self.write

    def write(self, data: bytes) -> None:
        self.written.append(data)
        Changes.note()

    def release(self) -> None:
        self.released = True
        self.listener = None

    def abort(self) -> None:
        self.aborted = True
        listener = self.listener
        if listener is not None:
            asyncio.get_running_loop().call_soon(listener.connection_lost)


class Peer(ResponsesPeer):
    async def send(self, message: Message) -> None:
        await super().send(message)
        Changes.note()


def scope(fast: FakeFastWrite | None = None) -> dict[str, Any]:
    extensions = {FAST_WRITE: fast} if fast is not None else {}
    return {"type": "http", "method": "GET", "path": "/", "headers": [], "extensions": extensions}


END = b"end"


class Source:
    """A producer that yields what it is fed and records every pull."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception] = asyncio.Queue()
        self.pulls = 0
        self.closed = asyncio.Event()

    async def items(self) -> AsyncIterator[bytes]:
        try:
            while True:
                self.pulls += 1
                Changes.note()
                item = await self.queue.get()
                if isinstance(item, Exception):
                    raise item
                if item == END:
                    return
                yield item
        finally:
            self.closed.set()


class Changes:
    """Set whenever a fake records something: what the tests wait on."""

    event: asyncio.Event | None = None

    @classmethod
    def note(cls) -> None:
        if cls.event is not None:
            cls.event.set()


@pytest.fixture(autouse=True)
def _changes() -> None:
    Changes.event = asyncio.Event()


async def until(predicate: Callable[[], bool]) -> None:
    event = Changes.event
    assert event is not None
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            event.clear()
            await event.wait()


def pump(source: Source, **options: Any) -> Pump[bytes]:
    return Pump(source.items(), lambda item: item, headers=[(b"x", b"y")], **options)


async def test_fast_path_waits_while_paused_and_ends_through_asgi() -> None:
    fast, peer, source = FakeFastWrite(), Peer(), Source()
    stream = pump(source)
    task = asyncio.create_task(stream(scope(fast), peer.receive, peer.send))
    await until(lambda: source.pulls == 1)
    assert fast.listener is stream
    assert peer.messages == [
        {"type": "http.response.start", "status": 200, "headers": [(b"x", b"y")]}
    ]
    source.queue.put_nowait(b"one")
    await until(lambda: source.pulls == 2)
    assert fast.written == [chunk(b"one")]
    stream.pause_writing()
    source.queue.put_nowait(b"two")
    await until(lambda: len(fast.written) == 2)
    for _ in range(10):  # turns of the loop in which the pump could pull
        await asyncio.sleep(0)
    assert source.pulls == 2  # paused: not asked for the next one
    stream.resume_writing()
    await until(lambda: source.pulls == 3)
    source.queue.put_nowait(END)
    await asyncio.wait_for(task, TIMEOUT)
    assert fast.released
    assert source.closed.is_set()
    assert stream.reason == "end"
    assert peer.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_fast_path_failure_without_error_frame_aborts() -> None:
    fast, peer, source = FakeFastWrite(), Peer(), Source()
    stream = pump(source)
    task = asyncio.create_task(stream(scope(fast), peer.receive, peer.send))
    source.queue.put_nowait(ValueError("boom"))
    await asyncio.wait_for(task, TIMEOUT)
    assert fast.aborted
    assert not fast.released
    assert stream.reason == "abort"


@pytest.mark.parametrize(
    ("interrupt", "reason", "last"),
    [
        # The client left: nothing more to send.
        (Pump.connection_lost, "disconnect", None),
        # The server stops: a clean end, with the shutdown frame.
        (
            Pump.shutdown,
            "shutdown",
            {"type": "http.response.body", "body": b"bye", "more_body": False},
        ),
        # A slow consumer: the connection drops without the last chunk.
        (Pump.abort, "abort", None),
    ],
)
async def test_interruptions_close_an_idle_producer(
    interrupt: Callable[[Pump[bytes]], None], reason: str, last: Message | None
) -> None:
    fast, peer, source = FakeFastWrite(), Peer(), Source()
    stream = pump(source, error=lambda exc: b"error", shutdown=lambda: b"bye")
    task = asyncio.create_task(stream(scope(fast), peer.receive, peer.send))
    await until(lambda: source.pulls == 1)
    interrupt(stream)
    await asyncio.wait_for(task, TIMEOUT)
    assert source.closed.is_set()  # the producer was waiting: its finally ran
    assert stream.reason == reason
    assert fast.aborted is (reason == "abort")
    assert fast.released is (reason == "shutdown")
    if last is None:
        assert len(peer.messages) == 1  # the start only
    else:
        assert peer.messages[-1] == last


@pytest.mark.parametrize("error", [None, b"event: error\n\n"])
async def test_asgi_path_error_frame_or_cut(error: bytes | None) -> None:
    peer, source = Peer(), Source()
    frame = None if error is None else (lambda exc: error)
    stream = pump(source, error=frame, head=b"head")
    task = asyncio.create_task(stream(scope(), peer.receive, peer.send))
    source.queue.put_nowait(b"one")
    source.queue.put_nowait(RuntimeError("boom"))
    await asyncio.wait_for(task, TIMEOUT)
    assert source.closed.is_set()
    if error is None:
        assert stream.reason == "abort"
        assert peer.body == b"headone"  # the response never ends: the server cuts it
        assert peer.messages[-1].get("more_body") is True
    else:
        assert stream.reason == "error"
        assert peer.body == b"headone" + error
        assert peer.messages[-1]["more_body"] is False


async def test_asgi_path_disconnect_and_keepalive() -> None:
    peer, source = Peer(), Source()
    stream = pump(source, ping=b": ping\n\n", keepalive=0.01)
    task = asyncio.create_task(stream(scope(), peer.receive, peer.send))
    await until(lambda: b": ping\n\n: ping\n\n" in peer.body)
    peer.gone.set()
    await asyncio.wait_for(task, TIMEOUT)
    assert source.closed.is_set()
    assert stream.reason == "disconnect"


async def test_head_requests_get_no_body_and_the_producer_is_closed() -> None:
    peer, source = Peer(), Source()
    stream = pump(source)
    await asyncio.wait_for(stream({**scope(), "method": "HEAD"}, peer.receive, peer.send), TIMEOUT)
    assert peer.body == b""
    assert source.pulls == 0


def test_keepalive_needs_ping_bytes() -> None:
    with pytest.raises(ValueError, match="keepalive"):
        Pump(Source().items(), bytes, headers=[], keepalive=1.0)
