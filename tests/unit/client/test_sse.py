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


# -- tokens ------------------------------------------------------------------------------------

EXPIRED = b'event: expired\ndata: {"reason": "token_expired"}\n\n'
DENIED = {"error": {"code": "unauthorized", "message": "token expired"}}


class Tokens:
    """A get_token callback handing out t1, t2, …; ``sync`` picks a plain or async one."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return f"t{self.calls}"

    async def asynchronous(self) -> str:
        await asyncio.sleep(0)
        return self()


def bearers(server: Server) -> list[str | None]:
    return [request.headers.get("authorization") for request in server.requests]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_expired_stream_gets_a_new_token_and_resumes_exactly(kind: str) -> None:
    server = Server(
        lambda: httpx.Response(
            200, headers=SSE, content=body(b"id: a:e:1\ndata: 1\n\n", EXPIRED, drop=False)
        ),
        lambda: httpx.Response(
            200, headers=SSE, content=body(b"id: a:e:2\ndata: 2\n\n", EXPIRED, drop=False)
        ),
        lambda: httpx.Response(200, headers=SSE, content=body(b"id: a:e:3\ndata: 3\n\n")),
    )
    tokens = Tokens()
    get_token = tokens if kind == "sync" else tokens.asynchronous
    backoff = RecordingBackoff(cap=0.01)
    async with (
        client(server) as http,
        listen(URL, ["a"], client=http, get_token=get_token, backoff=backoff) as events,
    ):
        items = await take(events, 3)
    assert [item.id for item in items if isinstance(item, Message)] == ["a:e:1", "a:e:2", "a:e:3"]
    assert bearers(server) == ["Bearer t1", "Bearer t2", "Bearer t3"]
    assert [request.headers.get("last-event-id") for request in server.requests] == [
        None,
        "a:e:1",
        "a:e:2",
    ]
    assert backoff.delays == []  # an expiry reconnects at once


async def test_a_fixed_token_is_sent_and_get_token_waits_for_the_expiry() -> None:
    server = Server(
        lambda: httpx.Response(200, headers=SSE, content=body(EXPIRED, drop=False)),
        lambda: httpx.Response(200, headers=SSE, content=body(b"id: a:e:1\ndata: 1\n\n")),
    )
    tokens = Tokens()
    async with (
        client(server) as http,
        listen(URL, ["a"], client=http, token="given", get_token=tokens) as events,
    ):
        await take(events, 1)
    assert bearers(server) == ["Bearer given", "Bearer t1"]


async def test_a_401_gets_a_new_token_and_a_second_401_is_final() -> None:
    server = Server(
        lambda: httpx.Response(401, json=DENIED),
        lambda: httpx.Response(200, headers=SSE, content=body(b"id: a:e:1\ndata: 1\n\n")),
        lambda: httpx.Response(401, json=DENIED),
        lambda: httpx.Response(401, json=DENIED),
    )
    tokens = Tokens()
    backoff = RecordingBackoff(cap=0.01)
    async with client(server) as http:
        listener = listen(URL, ["a"], client=http, token="old", get_token=tokens, backoff=backoff)
        async with listener as events:
            assert [item.id for item in await take(events, 1)] == ["a:e:1"]
            with pytest.raises(StreamRejected) as caught:
                await take(events, 1)
    assert caught.value.status == 401
    assert "unauthorized" in caught.value.body
    # old -> 401 -> t1 opens; the drop reconnects with t1 -> 401 -> t2 -> 401: final.
    assert bearers(server) == ["Bearer old", "Bearer t1", "Bearer t1", "Bearer t2"]
    assert server.requests[3].headers["last-event-id"] == "a:e:1"
    assert tokens.calls == 2
    assert len(backoff.delays) == 1  # only the drop waited


async def test_a_401_to_the_first_fresh_token_is_final() -> None:
    server = Server(lambda: httpx.Response(401, json=DENIED))
    tokens = Tokens()
    async with client(server) as http:
        with pytest.raises(StreamRejected) as caught:
            async with listen(URL, ["a"], client=http, get_token=tokens):
                pass
    assert caught.value.status == 401
    assert (tokens.calls, bearers(server)) == (1, ["Bearer t1"])


async def test_a_403_is_final_without_asking_for_a_token() -> None:
    server = Server(lambda: httpx.Response(403, json={"error": {"code": "permission_denied"}}))
    tokens = Tokens()
    async with client(server) as http:
        with pytest.raises(StreamRejected) as caught:
            async with listen(URL, ["a"], client=http, token="t0", get_token=tokens):
                pass
    assert caught.value.status == 403
    assert tokens.calls == 0


async def test_what_get_token_raises_ends_the_listener() -> None:
    def broken() -> str:
        raise LookupError("no session")

    async with client(Server()) as http:
        with pytest.raises(LookupError):
            async with listen(URL, ["a"], client=http, get_token=broken):
                pass
