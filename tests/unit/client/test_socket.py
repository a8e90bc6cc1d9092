"""client/socket.py without sockets: replies by id, the offline queue, positions, close codes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack
import orjson
import pytest

from tests.support.env import TIMEOUT
from tidings.client import Notice, Reset, SocketEvent, Subscription
from tidings.client.socket import (
    OfflineQueue,
    Pacer,
    Requests,
    Socket,
    _Outgoing,
    _Request,
    close_error,
    reply_error,
    socket_url,
    split_frame,
)
from tidings.errors import ConnectionClosed, ProtocolError, QueueFull, RequestTimeout, TidingsError
from tidings.types import Position
from tidings.wire.codes import CloseCode
from tidings.wire.protocol import Format

# -- URLs, frames, errors, close codes ------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws"),
        ("https://example.com/", "wss://example.com/ws"),
        ("ws://h:1/ws", "ws://h:1/ws"),
        ("wss://h/custom/path?token=x", "wss://h/custom/path?token=x"),
    ],
)
def test_socket_url(given: str, expected: str) -> None:
    assert socket_url(given) == expected


@pytest.mark.parametrize("bad", ["ftp://h/ws", "127.0.0.1:8000", "ws://"])
def test_socket_url_refuses_what_is_not_a_websocket_url(bad: str) -> None:
    with pytest.raises(ValueError, match="not a WebSocket"):
        socket_url(bad)


def test_a_frame_holds_one_message_or_a_batch() -> None:
    one = {"channel": "a", "offset": 1}
    two = [{"id": 1, "ok": True, "result": {}}, one]
    assert split_frame(orjson.dumps(one).decode(), Format.JSON) == [one]
    assert split_frame(orjson.dumps(two).decode(), Format.JSON) == two
    assert split_frame(msgpack.packb(two), Format.MSGPACK) == two
    with pytest.raises(ProtocolError):
        split_frame(b"\x81", Format.JSON)  # JSON travels in text frames
    with pytest.raises(ProtocolError):
        split_frame("{", Format.JSON)


def test_error_replies_keep_the_server_code() -> None:
    error = reply_error({"code": "permission_denied", "message": "publish is not allowed"})
    assert isinstance(error, TidingsError)
    assert error.code == "permission_denied"
    assert "publish is not allowed" in str(error)
    assert reply_error("garbage").code == "internal"


@pytest.mark.parametrize(
    "code",
    [
        CloseCode.PROTOCOL_ERROR,
        CloseCode.INVALID_DATA,
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.BAD_REQUEST,
        CloseCode.UNAUTHORIZED,
        CloseCode.FORBIDDEN,
        4999,
    ],
)
def test_final_close_codes(code: int) -> None:
    closed = close_error(code, "no")
    assert isinstance(closed, ConnectionClosed)
    assert (closed.close_code, closed.reason, closed.reconnect) == (code, "no", False)


@pytest.mark.parametrize(
    "code",
    [
        CloseCode.NORMAL,
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.SHUTDOWN,
        CloseCode.HEARTBEAT_TIMEOUT,
        CloseCode.SLOW_CONSUMER,
        CloseCode.RATE_LIMITED,
        4000,
        4499,
    ],
)
def test_retryable_close_codes(code: int) -> None:
    assert close_error(code).reconnect


def test_a_drop_without_a_close_frame_is_1006_and_retried() -> None:
    closed = close_error(None)
    assert (closed.close_code, closed.reconnect) == (CloseCode.ABNORMAL_CLOSURE, True)


# -- replies matched by id ---------------------------------------------------------------


def request(op: str = "ping") -> _Request:
    return _Request(op, asyncio.get_running_loop().create_future())


async def test_replies_settle_their_own_request_only() -> None:
    requests = Requests()
    first, second = requests.next_id(), requests.next_id()
    assert second == first + 1
    a, b = request(), request()
    requests.open(first, a)
    requests.open(second, b)
    reply = {"id": second, "ok": True, "result": {"x": 1}}
    settled = requests.settle(reply)
    assert settled is b
    Requests.resolve(b, reply)
    assert b.future.result() == {"x": 1}
    assert not a.future.done()
    assert requests.settle(reply) is None, "a reply settles once"
    error = {"id": first, "error": {"code": "not_subscribed", "message": "no"}}
    settled = requests.settle(error)
    assert settled is a
    Requests.resolve(a, error)
    with pytest.raises(TidingsError) as caught:
        a.future.result()
    assert caught.value.code == "not_subscribed"
    assert len(requests) == 0


@pytest.mark.parametrize("request_id", [None, True, "1", 99, [1]])
async def test_replies_to_unknown_ids_are_ignored(request_id: Any) -> None:
    requests = Requests()
    requests.open(requests.next_id(), request())
    assert requests.settle({"id": request_id, "ok": True, "result": {}}) is None
    assert len(requests) == 1


async def test_a_reply_to_a_request_nobody_waits_for_is_dropped() -> None:
    requests = Requests()
    request_id = requests.next_id()
    waiting = request()
    requests.open(request_id, waiting)
    waiting.future.cancel()
    reply = {"id": request_id, "ok": True, "result": {}}
    settled = requests.settle(reply)
    assert settled is waiting
    Requests.resolve(waiting, reply)  # no InvalidStateError
    assert waiting.future.cancelled()


async def test_requests_time_out_with_a_typed_error() -> None:
    requests = Requests()
    request_id = requests.next_id()
    waiting = request("history")
    requests.open(request_id, waiting, timeout=0.01)
    with pytest.raises(RequestTimeout) as caught:
        await asyncio.wait_for(waiting.future, TIMEOUT)
    assert isinstance(caught.value, TimeoutError)
    assert (caught.value.op, caught.value.timeout, caught.value.code) == (
        "history",
        0.01,
        "timeout",
    )
    assert request_id not in requests
    assert requests.settle({"id": request_id, "ok": True, "result": {}}) is None


async def test_drop_all_returns_the_oldest_first_and_stops_the_timers() -> None:
    requests = Requests()
    ids = [requests.next_id() for _ in range(3)]
    opened = [request() for _ in ids]
    for request_id, waiting in zip(reversed(ids), reversed(opened), strict=True):
        requests.open(request_id, waiting, timeout=60)
    dropped = requests.drop_all()
    assert dropped == opened
    assert all(item.timer is not None and item.timer.cancelled() for item in dropped)
    assert len(requests) == 0


# -- the offline queue --------------------------------------------------------------------


def outgoing(request_id: int) -> _Outgoing:
    return _Outgoing(request_id, b"{}", asyncio.get_running_loop().create_future())


async def test_the_offline_queue_is_bounded() -> None:
    queue = OfflineQueue(2)
    queue.put(outgoing(1))
    queue.put(outgoing(2))
    with pytest.raises(QueueFull) as caught:
        queue.put(outgoing(3))
    assert caught.value.limit == 2
    assert caught.value.code == "queue_full"
    assert len(queue) == 2
    with pytest.raises(QueueFull):
        OfflineQueue(0).put(outgoing(1))
    with pytest.raises(ValueError, match="queue_limit"):
        OfflineQueue(-1)


async def test_publishes_in_flight_go_back_before_the_queued_ones() -> None:
    queue = OfflineQueue(2)
    later = [outgoing(5), outgoing(6)]
    for item in later:
        queue.put(item)
    in_flight = [outgoing(3), outgoing(4)]
    queue.requeue(in_flight)  # accepted already: the limit does not apply
    assert len(queue) == 4
    assert [queue.pop() for _ in range(4)] == [*in_flight, *later]
    assert queue.pop() is None


async def test_withdrawn_publishes_are_not_sent() -> None:
    queue = OfflineQueue(10)
    items = [outgoing(n) for n in range(1, 4)]
    for item in items:
        queue.put(item)
    items[0].future.cancel()
    assert queue.pop() is items[1]
    error = ConnectionClosed(4501, "unauthorized", reconnect=False)
    queue.fail(error)
    assert items[2].future.exception() is error
    assert queue.pop() is None


# -- positions -----------------------------------------------------------------------


def push(offset: int | None, epoch: str = "e1", **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"channel": "c", "event": "message", "data": offset}
    if offset is not None:
        message.update(epoch=epoch, offset=offset)
    message.update(fields)
    return message


def subscribed(epoch: str, offset: int, **fields: Any) -> dict[str, Any]:
    return {"channel": "c", "epoch": epoch, "offset": offset, "recovered": True, **fields}


async def test_a_new_subscription_starts_at_the_reply_position() -> None:
    subscription = Subscription("c")
    assert subscription.track_subscribed(subscribed("e1", 7, replayed=0)) is None
    assert subscription.position == Position("e1", 7)
    item = subscription.track_push(push(8))
    assert item == SocketEvent("c", "e1", 8, "message", 8)
    assert subscription.position == Position("e1", 8)


async def test_a_recovered_subscription_keeps_its_position_until_the_replay() -> None:
    subscription = Subscription("c", since=Position("e1", 3))
    assert subscription.track_subscribed(subscribed("e1", 5, replayed=2)) is None
    assert subscription.position == Position("e1", 3)
    assert [subscription.track_push(push(n)) is not None for n in (4, 5)] == [True, True]
    assert subscription.position == Position("e1", 5)


async def test_events_already_delivered_are_dropped() -> None:
    subscription = Subscription("c", since=("e1", 5))
    assert subscription.track_push(push(4)) is None
    assert subscription.track_push(push(5)) is None
    assert subscription.track_push(push(6)) is not None
    assert subscription.track_push(push(6)) is None
    assert subscription.position == Position("e1", 6)


async def test_an_unrecoverable_position_becomes_a_reset() -> None:
    subscription = Subscription("c", since=Position("old", 40))
    reset = subscription.track_subscribed(
        subscribed("new", 2, recovered=False, reset="epoch", replayed=0)
    )
    assert reset == Reset("c", Position("new", 2), "epoch")
    assert subscription.position == Position("new", 2)
    event = subscription.track_push(push(3, epoch="new"))
    assert isinstance(event, SocketEvent)
    assert event.position == Position("new", 3)


async def test_reset_pushes_move_the_position() -> None:
    subscription = Subscription("c", since=Position("e1", 1))
    item = subscription.track_push(push(9, event="reset", data={"reason": "overflow"}))
    assert item == Reset("c", Position("e1", 9), "overflow")
    assert subscription.position == Position("e1", 9)
    assert subscription.track_push(push(9)) is None


async def test_join_and_leave_are_notices_outside_the_stream() -> None:
    subscription = Subscription("c", since=Position("e1", 1))
    entry = {"client": "abc", "user": None, "info": {"name": "ada"}}
    item = subscription.track_push(push(None, event="join", data=entry))
    assert item == Notice("c", "join", "abc", None, {"name": "ada"})
    assert subscription.position == Position("e1", 1)


async def test_text_events_say_so() -> None:
    subscription = Subscription("c")
    item = subscription.track_push(push(1, data="plain", text=True))
    assert isinstance(item, SocketEvent)
    assert (item.data, item.text) == ("plain", True)


# -- delivery ---------------------------------------------------------------------------


async def test_the_iterator_yields_what_is_buffered_then_ends() -> None:
    subscription = Subscription("c")
    events = [SocketEvent("c", "e", n, "message", n) for n in (1, 2)]
    for event in events:
        await subscription.deliver(event)
    subscription.close()
    assert [item async for item in subscription] == events
    await subscription.deliver(events[0])  # after close: nothing
    assert [item async for item in subscription] == []


async def test_the_iterator_raises_the_error_that_ended_it() -> None:
    subscription = Subscription("c")
    event = SocketEvent("c", "e", 1, "message", 1)
    await subscription.deliver(event)
    error = ConnectionClosed(4503, "forbidden", reconnect=False)
    subscription.close(error)
    assert await anext(subscription) == event
    with pytest.raises(ConnectionClosed) as caught:
        await anext(subscription)
    assert caught.value is error


async def test_a_full_buffer_holds_the_reader_back() -> None:
    subscription = Subscription("c", buffer=2)
    events = [SocketEvent("c", "e", n, "message", n) for n in range(1, 4)]
    await subscription.deliver(events[0])
    await subscription.deliver(events[1])
    third = asyncio.create_task(subscription.deliver(events[2]))
    await asyncio.sleep(0)
    assert not third.done(), "the third waits for room"
    assert await anext(subscription) == events[0]
    await asyncio.wait_for(third, TIMEOUT)
    assert [await anext(subscription), await anext(subscription)] == events[1:]


async def test_close_releases_a_waiting_reader() -> None:
    subscription = Subscription("c", buffer=1)
    await subscription.deliver(SocketEvent("c", "e", 1, "message", 1))
    blocked = asyncio.create_task(subscription.deliver(SocketEvent("c", "e", 2, "message", 2)))
    await asyncio.sleep(0)
    subscription.close()
    await asyncio.wait_for(blocked, TIMEOUT)
    assert len([item async for item in subscription]) == 1


async def test_handlers_get_every_item_and_their_errors_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Any] = []

    async def handler(item: Any) -> None:
        seen.append(item)
        if len(seen) == 1:
            raise RuntimeError("boom")

    subscription = Subscription("c", handler=handler)
    events = [SocketEvent("c", "e", n, "message", n) for n in (1, 2)]
    with caplog.at_level(logging.ERROR, logger="tidings.client.socket"):
        for event in events:
            await subscription.deliver(event)
        assert subscription.handling
        subscription.close()
        await asyncio.wait_for(subscription.wait_handled(), TIMEOUT)
    assert seen == events
    assert not subscription.handling
    assert "the handler of c failed" in caplog.text
    with pytest.raises(RuntimeError, match="handler"):
        await anext(subscription)

    plain: list[Any] = []
    sync = Subscription("c", handler=plain.append)
    await sync.deliver(events[0])
    sync.close()
    await asyncio.wait_for(sync.wait_handled(), TIMEOUT)
    assert plain == [events[0]]


async def test_a_handler_runs_apart_from_the_reader_and_stop_cancels_it() -> None:
    release = asyncio.Event()
    seen: list[Any] = []

    async def slow(item: Any) -> None:
        seen.append(item)
        await release.wait()  # e.g. awaiting a publish's ack, which the reader brings

    subscription = Subscription("c", handler=slow, buffer=2)
    events = [SocketEvent("c", "e", n, "message", n) for n in range(1, 4)]
    for event in events:
        await asyncio.wait_for(subscription.deliver(event), TIMEOUT)  # the reader goes on
    await asyncio.sleep(0)
    assert seen == events[:1]
    await subscription.stop()
    assert not subscription.handling
    release.set()
    assert seen == events[:1]


# -- the socket before it connects ----------------------------------------------------


async def test_a_socket_is_used_inside_async_with() -> None:
    socket = Socket("ws://127.0.0.1:9/ws")
    with pytest.raises(RuntimeError, match="async with"):
        await socket.publish("c", 1)
    with pytest.raises(RuntimeError, match="async with"):
        await socket.subscribe("c")
    with pytest.raises(ValueError, match="msgpackx"):
        Socket("ws://h/ws", format="msgpackx")  # type: ignore[arg-type]


# -- pacing ----------------------------------------------------------------------------


def test_the_pacer_allows_a_burst_then_spaces_commands() -> None:
    pacer = Pacer(100.0, burst=3)
    waits = [pacer.reserve(now=10.0) for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.01, 0.02, 0.03])
    # Idle time earns the burst back, never more.
    assert [pacer.reserve(now=20.0) for _ in range(4)][3] == pytest.approx(0.01)


def test_the_default_burst_is_half_the_rate_and_none_disables_pacing() -> None:
    pacer = Pacer(100.0)
    waits = [pacer.reserve(now=0.0) for _ in range(51)]
    assert waits[49] == 0.0
    assert waits[50] == pytest.approx(0.01)
    unpaced = Pacer(None)
    assert all(unpaced.reserve(now=0.0) == 0.0 for _ in range(1000))
    with pytest.raises(ValueError, match="rate_limit"):
        Pacer(0)
