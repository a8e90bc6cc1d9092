"""client/sync.py: publish, apublish and listen_sync over httpx.MockTransport (no sockets)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from tidings.client import (
    Backoff,
    ConnectionState,
    Message,
    Reset,
    SyncListener,
    apublish,
    listen_sync,
    publish,
)
from tidings.errors import (
    InvalidURL,
    ProtocolError,
    PublishError,
    PublishRejected,
    ReconnectExhausted,
    RequestRejected,
    RequestTimeout,
    ServerUnavailable,
    StreamRejected,
    TidingsError,
)
from tidings.types import Position

URL = "http://tidings.test"
SSE = {"content-type": "text/event-stream; charset=utf-8"}

Handler = Callable[[httpx.Request], httpx.Response]


def sync_client(handler: Handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def publish_server(requests: list[httpx.Request]) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        body = json.loads(request.content)
        if body["channel"] == "bad channel":
            error = {"code": "invalid_channel", "message": "contains ' '"}
            return httpx.Response(400, json={"error": error})
        if body["channel"] == "broken":
            return httpx.Response(502, text="<html>bad gateway</html>")
        return httpx.Response(200, json={"epoch": "e", "offset": 7})

    return handle


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def test_publish_sends_data_or_text_and_returns_the_position() -> None:
    requests: list[httpx.Request] = []
    with sync_client(publish_server(requests)) as client:
        assert publish(URL + "/", "c", {"n": 1}, client=client) == Position("e", 7)
        publish(URL, "c", text="hi", event="note", key="k", client=client)
        with pytest.raises(TypeError):
            publish(URL, "c", client=client)
        with pytest.raises(TypeError):
            publish(URL, "c", 1, text="both", client=client)
    assert [str(request.url) for request in requests] == [f"{URL}/api/publish"] * 2
    assert [json.loads(request.content) for request in requests] == [
        {"channel": "c", "event": "message", "data": {"n": 1}},
        {"channel": "c", "event": "note", "text": "hi", "key": "k"},
    ]


def test_a_refused_publish_raises_publish_rejected_with_the_servers_code() -> None:
    with sync_client(publish_server([])) as client:
        with pytest.raises(PublishRejected) as caught:
            publish(URL, "bad channel", 1, client=client)
        assert isinstance(caught.value, PublishError)
        assert (caught.value.status, caught.value.code) == (400, "invalid_channel")
        assert caught.value.message == "contains ' '"
        with pytest.raises(PublishRejected) as caught:
            publish(URL, "broken", 1, client=client)
        assert (caught.value.status, caught.value.code) == (502, "internal")
        assert "bad gateway" in caught.value.message


def test_an_unreachable_server_raises_server_unavailable_with_the_cause() -> None:
    with sync_client(refuse) as client, pytest.raises(ServerUnavailable) as caught:
        publish(URL, "c", 1, client=client)
    assert caught.value.url == f"{URL}/api/publish"
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_apublish_raises_the_same_errors() -> None:
    transport = httpx.MockTransport(publish_server([]))
    async with httpx.AsyncClient(transport=transport) as client:
        assert await apublish(URL, "c", [1], client=client) == Position("e", 7)
        with pytest.raises(PublishRejected) as caught:
            await apublish(URL, "bad channel", 1, client=client)
        assert caught.value.code == "invalid_channel"
    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(ServerUnavailable) as unavailable:
            await apublish(URL, "c", 1, client=client)
        assert isinstance(unavailable.value.__cause__, httpx.ConnectError)


def raising(error: type[httpx.TransportError]) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        raise error("simulated", request=request)

    return handle


@pytest.mark.parametrize(
    ("handler", "expected", "code"),
    [
        (raising(httpx.ConnectError), ServerUnavailable, "unreachable"),
        (raising(httpx.ConnectTimeout), ServerUnavailable, "unreachable"),
        (raising(httpx.ReadTimeout), RequestTimeout, "timeout"),
        (raising(httpx.ReadError), ServerUnavailable, "unreachable"),
        (lambda request: httpx.Response(200, text="<html>not tidings</html>"), ProtocolError, None),
        (lambda request: httpx.Response(200, json={"epoch": "e"}), ProtocolError, None),
        (
            lambda request: httpx.Response(
                503,
                headers={"retry-after": "2"},
                json={"error": {"code": "unavailable", "message": "backend redis is unavailable"}},
            ),
            PublishRejected,
            "unavailable",
        ),
    ],
)
async def test_every_publish_failure_is_a_tidings_error_with_a_code(
    handler: Handler, expected: type[TidingsError], code: str | None
) -> None:
    with sync_client(handler) as client, pytest.raises(expected) as caught:
        publish(URL, "c", 1, client=client, timeout=1.5)
    assert caught.value.code == (code or "invalid_json")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(expected) as again:
            await apublish(URL, "c", 1, client=client, timeout=1.5)
    assert (type(again.value), again.value.code, str(again.value)) == (
        type(caught.value),
        caught.value.code,
        str(caught.value),
    )


def test_a_refusal_carries_the_servers_code_message_and_retry_after() -> None:
    def busy(request: httpx.Request) -> httpx.Response:
        error = {"code": "unavailable", "message": "backend redis is unavailable"}
        return httpx.Response(503, headers={"retry-after": "2"}, json={"error": error})

    with sync_client(busy) as client, pytest.raises(RequestRejected) as caught:
        publish(URL, "c", 1, client=client)
    assert isinstance(caught.value, PublishRejected)
    assert (caught.value.status, caught.value.code, caught.value.retry_after) == (
        503,
        "unavailable",
        2.0,
    )
    assert caught.value.message == "backend redis is unavailable"
    assert (
        str(caught.value) == "publish refused with 503: unavailable: backend redis is unavailable"
    )


def test_a_timeout_after_connecting_is_a_request_timeout() -> None:
    with sync_client(raising(httpx.ReadTimeout)) as client, pytest.raises(RequestTimeout) as caught:
        publish(URL, "c", 1, client=client, timeout=1.5)
    assert (caught.value.op, caught.value.timeout) == ("publish", 1.5)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


@pytest.mark.parametrize("url", ["localhost:8000", "127.0.0.1:8000", "ws://h/ws", "http://"])
async def test_a_url_that_names_no_server_is_refused_before_sending(url: str) -> None:
    requests: list[httpx.Request] = []
    with sync_client(publish_server(requests)) as client, pytest.raises(InvalidURL) as caught:
        publish(url, "c", 1, client=client)
    assert caught.value.code == "invalid_url"
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(publish_server(requests))
    ) as aclient:
        with pytest.raises(InvalidURL):
            await apublish(url, "c", 1, client=aclient)
    with pytest.raises(InvalidURL):
        listen_sync(url, ["c"])
    assert requests == []


def dropping(*chunks: bytes) -> Iterator[bytes]:
    """A response body that sends ``chunks`` and then loses the connection."""
    yield from chunks
    raise httpx.ReadError("connection reset")


class Server:
    """Answers stream requests from a script, and remembers the requests."""

    def __init__(self, *answers: Callable[[], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0)()


def test_listen_sync_resumes_after_a_drop_with_the_last_event_id() -> None:
    server = Server(
        lambda: httpx.Response(
            200, headers=SSE, content=dropping(b"retry: 40\n\nid: a:e:0\ndata: 0\n\n")
        ),
        lambda: httpx.Response(503, text="restarting"),
        lambda: httpx.Response(
            200, headers=SSE, content=dropping(b"id: a:e:1\ndata: 1\n\nid: a:e:2\nda", b"ta: 2\n\n")
        ),
        lambda: httpx.Response(200, headers=SSE, content=iter([b"id: a:e:3\ndata: 3\n\n"])),
    )
    sleeps: list[float] = []
    states: list[ConnectionState] = []
    with sync_client(server) as client:
        listener = SyncListener(
            URL,
            ["a"],
            last_event_id="a:e:0",
            client=client,
            on_state=states.append,
            sleep=sleeps.append,  # no waiting in unit tests
        )
        with listener as events:
            iterator = iter(events)
            items = [next(iterator) for _ in range(4)]
            assert listener.last_event_id == "a:e:3"
        assert not client.is_closed  # a client passed in is the caller's to close
    assert [item.data for item in items if isinstance(item, Message)] == ["0", "1", "2", "3"]
    assert [request.headers.get("last-event-id") for request in server.requests] == [
        "a:e:0",
        "a:e:0",
        "a:e:0",
        "a:e:2",
    ]
    assert str(server.requests[0].url) == f"{URL}/sse?channel=a"
    assert len(sleeps) == 3
    assert all(0 <= delay <= 0.16 for delay in sleeps)  # retry: 40 ms is the base
    assert states == [
        ConnectionState.CONNECTING,
        ConnectionState.OPEN,
        ConnectionState.RECONNECTING,
        ConnectionState.OPEN,
        ConnectionState.RECONNECTING,
        ConnectionState.OPEN,
        ConnectionState.CLOSED,
    ]


def test_listen_sync_yields_resets() -> None:
    reset = b'event: reset\ndata: {"channel":"a","epoch":"f","offset":0,"reason":"epoch"}\n\n'
    server = Server(lambda: httpx.Response(200, headers=SSE, content=iter([reset])))
    with sync_client(server) as client, listen_sync(URL, ["a"], client=client) as events:
        assert next(iter(events)) == Reset("a", Position("f", 0), "epoch")


def test_listen_sync_stops_on_a_terminal_status() -> None:
    server = Server(lambda: httpx.Response(403, json={"error": {"code": "permission_denied"}}))
    states: list[ConnectionState] = []
    with (
        sync_client(server) as client,
        pytest.raises(StreamRejected) as caught,
        listen_sync(URL, ["a"], client=client, on_state=states.append),
    ):
        pass
    assert caught.value.status == 403
    assert "permission_denied" in caught.value.body
    assert states == [ConnectionState.CONNECTING, ConnectionState.CLOSED]


def test_listen_sync_gives_up_after_max_attempts() -> None:
    sleeps: list[float] = []
    backoff = Backoff(base=0.01, max_attempts=2)
    with sync_client(refuse) as client:
        listener = SyncListener(URL, ["a"], client=client, backoff=backoff, sleep=sleeps.append)
        with pytest.raises(ReconnectExhausted) as caught, listener:
            pass
    assert caught.value.attempts == 2
    assert isinstance(caught.value.last_error, httpx.ConnectError)
    assert len(sleeps) == 2


def test_iterating_outside_with_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        iter(listen_sync(URL, ["a"]))


# -- tokens ------------------------------------------------------------------------------------

EXPIRED = b'event: expired\ndata: {"reason": "token_expired"}\n\n'
DENIED = {"error": {"code": "unauthorized", "message": "token expired"}}


def bearers(server: Server) -> list[str | None]:
    return [request.headers.get("authorization") for request in server.requests]


def test_listen_sync_gets_a_new_token_after_an_expiry_or_a_401_and_resumes() -> None:
    server = Server(
        lambda: httpx.Response(
            200, headers=SSE, content=iter([b"id: a:e:1\ndata: 1\n\n", EXPIRED])
        ),
        lambda: httpx.Response(200, headers=SSE, content=dropping(b"id: a:e:2\ndata: 2\n\n")),
        lambda: httpx.Response(401, json=DENIED),  # t2 is refused now: ask again
        lambda: httpx.Response(200, headers=SSE, content=iter([b"id: a:e:3\ndata: 3\n\n"])),
    )
    issued = iter(["t1", "t2", "t3"])
    sleeps: list[float] = []
    with sync_client(server) as client:
        listener = SyncListener(
            URL, ["a"], client=client, get_token=lambda: next(issued), sleep=sleeps.append
        )
        with listener as events:
            iterator = iter(events)
            items = [next(iterator) for _ in range(3)]
    assert [item.id for item in items if isinstance(item, Message)] == ["a:e:1", "a:e:2", "a:e:3"]
    assert bearers(server) == ["Bearer t1", "Bearer t2", "Bearer t2", "Bearer t3"]
    assert [request.headers.get("last-event-id") for request in server.requests] == [
        None,
        "a:e:1",
        "a:e:2",
        "a:e:2",
    ]
    assert len(sleeps) == 2  # the drop waits, the 401 retries at once
    assert sleeps[0] == 0.0  # and so does the expiry


def test_listen_sync_a_401_to_a_fresh_token_is_final() -> None:
    server = Server(
        lambda: httpx.Response(401, json=DENIED),
        lambda: httpx.Response(401, json=DENIED),
    )
    issued = iter(["fresh"])
    with (
        sync_client(server) as client,
        pytest.raises(StreamRejected) as caught,
        listen_sync(URL, ["a"], client=client, token="old", get_token=lambda: next(issued)),
    ):
        pass
    assert caught.value.status == 401
    assert bearers(server) == ["Bearer old", "Bearer fresh"]


def test_listen_sync_a_403_is_final() -> None:
    server = Server(lambda: httpx.Response(403, json={"error": {"code": "permission_denied"}}))
    calls: list[str] = []

    def get_token() -> str:
        calls.append("t")
        return "t"

    with (
        sync_client(server) as client,
        pytest.raises(StreamRejected) as caught,
        listen_sync(URL, ["a"], client=client, token="t", get_token=get_token),
    ):
        pass
    assert (caught.value.status, calls) == (403, [])


def test_listen_sync_refuses_an_async_get_token() -> None:
    async def get_token() -> str:
        return "t"

    with (
        sync_client(Server()) as client,
        pytest.raises(TypeError, match="synchronous get_token"),
        listen_sync(URL, ["a"], client=client, get_token=get_token),  # type: ignore[arg-type]
    ):
        pass
