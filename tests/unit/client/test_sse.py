"""client/sse.py: the asyncio listener over httpx.MockTransport (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tests.support.env import TIMEOUT
from tests.support.socket_client import RecordingBackoff
from tidings.client import Backoff, ConnectionState, Message, Reset, listen
from tidings.errors import ReconnectExhausted, StreamRejected
from tidings.types import Position

URL = "http://tidings.test"
SSE = {"content-type": "text/event-stream; charset=utf-8"}


async def body(*chunks: bytes, drop: bool = True) -> AsyncIterator[bytes]:
    """A response body that sends ``chunks``, then loses the connection (or ends)."""
    for chunk in chunks:
        yield chunk
    if drop:
        raise httpx.ReadError("connection reset")


class Server:
    """Answers stream requests from a script, and remembers the requests."""

    def __init__(self, *answers: Callable[[], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            raise httpx.ConnectError("no more answers", request=request)
        return self.answers.pop(0)()


def client(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(server))


async def take(events: AsyncIterator[Message | Reset], count: int) -> list[Message | Reset]:
    async with asyncio.timeout(TIMEOUT):
        return [await anext(events) for _ in range(count)]


async def test_resumes_after_drops_and_retryable_answers() -> None:
    server = Server(
        lambda: httpx.Response(
            200, headers=SSE, content=body(b"retry: 5\n\nid: a:e:1\ndata: 1\n\nid: a:e:2\nda")
        ),
        lambda: httpx.Response(502, text="bad gateway"),
        lambda: httpx.Response(200, headers={"content-type": "text/html"}, text="<html>"),
        lambda: httpx.Response(
            200, headers=SSE, content=body(b"id: a:e:3\ndata: 2\n", b"\n", drop=False)
        ),
    )
    states: list[ConnectionState] = []
    backoff = RecordingBackoff(cap=0.01)
    async with client(server) as http:
        listener = listen(
            URL,
            ["a", "b"],
            last_event_id="a:e:0",
            client=http,
            backoff=backoff,
            on_state=states.append,
        )
        async with listener as events:
            items = await take(events, 2)
            assert listener.last_event_id == "a:e:3"
        assert not http.is_closed  # a client passed in is the caller's to close
    assert [(item.data, item.id) for item in items if isinstance(item, Message)] == [
        ("1", "a:e:1"),
        ("2", "a:e:3"),
    ]
    assert str(server.requests[0].url) == f"{URL}/sse?channel=a&channel=b"
    assert [request.headers.get("last-event-id") for request in server.requests] == [
        "a:e:0",
        "a:e:1",
        "a:e:1",
        "a:e:1",
    ]
    assert [upper for _, upper in backoff.delays] == [0.005, 0.01, 0.01]  # retry: 5 ms
    assert states == [
        ConnectionState.CONNECTING,
        ConnectionState.OPEN,
        ConnectionState.RECONNECTING,
        ConnectionState.OPEN,
        ConnectionState.CLOSED,
    ]


async def test_a_reset_event_becomes_a_reset() -> None:
    reset = b'event: reset\ndata: {"channel":"a","epoch":"f","offset":0,"reason":"window"}\n\n'
    server = Server(lambda: httpx.Response(200, headers=SSE, content=body(reset)))
    async with client(server) as http, listen(URL, ["a"], client=http) as events:
        assert await take(events, 1) == [Reset("a", Position("f", 0), "window")]


async def test_a_terminal_status_raises_stream_rejected_with_the_body() -> None:
    server = Server(lambda: httpx.Response(404, text="no such route"))
    states: list[ConnectionState] = []
    async with client(server) as http:
        with pytest.raises(StreamRejected) as caught:
            async with listen(URL, ["a"], client=http, on_state=states.append):
                pass
    assert (caught.value.status, caught.value.body) == (404, "no such route")
    assert states == [ConnectionState.CONNECTING, ConnectionState.CLOSED]
    assert len(server.requests) == 1


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    server = Server(lambda: httpx.Response(200, headers=SSE, content=body(b"id: a:e:1\n\n")))
    backoff = Backoff(base=0.001, max_attempts=2)
    async with client(server) as http, listen(URL, ["a"], client=http, backoff=backoff) as events:
        with pytest.raises(ReconnectExhausted) as caught:
            await take(events, 1)
    assert caught.value.attempts == 2
    assert isinstance(caught.value.last_error, httpx.ConnectError)
    assert len(server.requests) == 3


async def test_iterating_outside_async_with_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        await anext(listen(URL, ["a"]))
