"""server/responses.py: SSEResponse driven as a raw ASGI app with receive/send fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from starlette.background import BackgroundTask
from starlette.types import Message

from tests.support.env import TIMEOUT
from tidings.hub import Hub
from tidings.server.responses import SSEResponse
from tidings.types import Position
from tidings.wire.cursor import decode_cursor, encode_cursor
from tidings.wire.sse import SSEDecoder, SSEEvent

SCOPE: dict[str, Any] = {"type": "http", "method": "GET", "path": "/events", "headers": []}


class Peer:
    """The client side of one request: records what is sent, disconnects on demand."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.arrived = asyncio.Event()
        self.gone = asyncio.Event()

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        self.arrived.set()

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                self.arrived.clear()
                await self.arrived.wait()

    def events(self) -> tuple[list[SSEEvent], SSEDecoder]:
        decoder = SSEDecoder()
        return decoder.feed(self.body), decoder


async def serve(response: SSEResponse, peer: Peer) -> asyncio.Task[None]:
    """Run ``response`` until its head (start + retry/id block) is sent."""
    task = asyncio.create_task(response(dict(SCOPE), peer.receive, peer.send))
    await peer.wait_for(lambda: len(peer.messages) >= 2 or task.done())
    return task


async def hang_up(peer: Peer, task: asyncio.Task[None]) -> None:
    peer.gone.set()
    await asyncio.wait_for(task, TIMEOUT)


async def test_headers_retry_and_first_cursor() -> None:
    async with Hub() as hub:
        position = await hub.publish("orders:1", "before")
        peer = Peer()
        response = SSEResponse(hub, "orders:1", retry=2.5, headers={"X-Trace": "t1"})
        task = await serve(response, peer)
        assert peer.messages[0]["status"] == 200
        assert peer.headers[b"content-type"] == b"text/event-stream; charset=utf-8"
        assert peer.headers[b"cache-control"] == b"no-cache"
        assert peer.headers[b"x-accel-buffering"] == b"no"
        assert peer.headers[b"x-trace"] == b"t1"
        events, decoder = peer.events()
        assert events == []  # the head dispatches nothing ...
        assert decoder.retry == 2500  # ... but announces the delay
        assert decode_cursor(decoder.last_event_id) == {"orders:1": position}  # and the cursor
        await hang_up(peer, task)


async def test_events_carry_cursor_ids() -> None:
    async with Hub() as hub:
        peer = Peer()
        task = await serve(SSEResponse(hub, ["a", "b"], keepalive=None), peer)
        first = await hub.publish("a", {"n": 1})
        second = await hub.publish("b", "text", event="note")
        await peer.wait_for(lambda: len(peer.events()[0]) == 2)
        one, two = peer.events()[0]
        assert (one.event, orjson.loads(one.data)) == ("message", {"n": 1})
        assert decode_cursor(one.id)["a"] == first
        assert (two.event, two.data) == ("note", '"text"')
        assert decode_cursor(two.id) == {"b": second, "a": first}  # its own channel first
        assert next(iter(decode_cursor(two.id))) == "b"
        await hang_up(peer, task)


@pytest.mark.parametrize("form", ["cursor", "mapping"])
async def test_last_event_id_resumes_after_it(form: str) -> None:
    async with Hub() as hub:
        positions = [await hub.publish("a", n) for n in range(4)]
        since = {"a": positions[1]}
        last_event_id: str | dict[str, Position] = (
            encode_cursor(since) if form == "cursor" else since
        )
        peer = Peer()
        task = await serve(SSEResponse(hub, "a", last_event_id=last_event_id), peer)
        await peer.wait_for(lambda: len(peer.events()[0]) == 2)
        events = peer.events()[0]
        assert [event.data for event in events] == ["2", "3"]
        assert [decode_cursor(event.id) for event in events] == [
            {"a": positions[2]},
            {"a": positions[3]},
        ]
        await hang_up(peer, task)


async def test_keepalive_sends_ping_comments() -> None:
    async with Hub() as hub:
        peer = Peer()
        task = await serve(SSEResponse(hub, "a", keepalive=0.01), peer)
        await peer.wait_for(lambda: b": ping\n\n" in peer.body)
        assert peer.events()[0] == []
        await hang_up(peer, task)


def test_no_keepalive_when_none() -> None:
    response = SSEResponse(Hub(), "a", keepalive=None)
    assert response.keepalive is None
    assert SSEResponse(Hub(), "a").keepalive is not None


async def test_disconnect_ends_it_and_runs_the_background_task() -> None:
    async with Hub() as hub:
        done = asyncio.Event()
        peer = Peer()
        response = SSEResponse(hub, "a")
        response.background = BackgroundTask(done.set)
        task = await serve(response, peer)
        assert hub.stats().subscriptions == 1
        await hang_up(peer, task)
        assert hub.stats().subscriptions == 0
        assert done.is_set()


@pytest.mark.parametrize(
    ("channels", "last_event_id", "code"),
    [
        ("has space", None, "invalid_channel"),
        ("a", "not a cursor", "invalid_cursor"),
    ],
)
async def test_bad_input_is_a_400_json_error(
    channels: str, last_event_id: str | None, code: str
) -> None:
    async with Hub() as hub:
        peer = Peer()
        response = SSEResponse(hub, channels, last_event_id=last_event_id)
        await asyncio.wait_for(response(dict(SCOPE), peer.receive, peer.send), TIMEOUT)
        assert peer.messages[0]["status"] == 400
        assert orjson.loads(peer.body)["error"]["code"] == code
        assert hub.stats().subscriptions == 0
