"""client/_pending.py: replies matched by id, the offline queue, pacing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.env import TIMEOUT
from tidings.client._pending import (
    MAX_RETRY_AFTER,
    OfflineQueue,
    Outgoing,
    Pacer,
    Request,
    Requests,
    reply_error,
    retry_after,
)
from tidings.errors import (
    ConnectionClosed,
    PublishError,
    PublishRejected,
    QueueFull,
    RequestRejected,
    RequestTimeout,
)


def test_error_replies_keep_the_server_code() -> None:
    error = reply_error(
        {"code": "permission_denied", "message": "history is not allowed"}, "history"
    )
    assert type(error) is RequestRejected
    assert (error.code, error.message, error.status) == (
        "permission_denied",
        "history is not allowed",
        None,
    )
    assert str(error) == "history refused: permission_denied: history is not allowed"
    assert reply_error("garbage").code == "internal"
    assert error.retry_after is None


def test_a_refused_publish_is_a_publish_rejected() -> None:
    error = reply_error(
        {"code": "rate_limited", "message": "slow down", "retry_after": 0.5}, "publish"
    )
    assert isinstance(error, PublishRejected)
    assert isinstance(error, PublishError)
    assert (error.code, error.message, error.status, error.retry_after) == (
        "rate_limited",
        "slow down",
        None,
        0.5,
    )
    assert str(error) == "publish refused: rate_limited: slow down"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.25, 0.25), (3, 3.0), (1e9, MAX_RETRY_AFTER), (-1, None), ("1", None), (True, None)],
)
def test_retry_after_is_read_only_when_it_makes_sense(
    value: object, expected: float | None
) -> None:
    error = reply_error({"code": "rate_limited", "message": "", "retry_after": value})
    assert error.retry_after == expected
    assert retry_after({"code": "rate_limited", "retry_after": value}) == expected
    assert retry_after("garbage") is None


# -- replies matched by id ---------------------------------------------------------------


def request(op: str = "ping") -> Request:
    return Request(op, asyncio.get_running_loop().create_future())


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
    with pytest.raises(RequestRejected) as caught:
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


def outgoing(request_id: int) -> Outgoing:
    return Outgoing(request_id, b"{}", asyncio.get_running_loop().create_future())


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


async def test_a_publish_without_its_ack_in_time_is_kept_and_reported_stale() -> None:
    stale: list[Request] = []
    requests = Requests(on_stale=stale.append)
    request_id = requests.next_id()
    publish = Request("publish", asyncio.get_running_loop().create_future(), outgoing(request_id))
    requests.open(request_id, publish, timeout=0.01)
    reads = Request("ping", asyncio.get_running_loop().create_future())
    read_id = requests.next_id()
    requests.open(read_id, reads, timeout=0.01)
    with pytest.raises(RequestTimeout):
        await asyncio.wait_for(reads.future, TIMEOUT)
    assert stale == [publish]
    assert not publish.future.done()
    assert request_id in requests, "dropping the connection puts it back in the queue"
    assert requests.drop_all() == [publish]
