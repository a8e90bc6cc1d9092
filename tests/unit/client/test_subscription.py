"""client/subscription.py: positions from replies and pushes, buffering, handlers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.support.env import TIMEOUT
from tidings.client import Notice, Reset, SocketEvent, SocketSubscription
from tidings.errors import ConnectionClosed
from tidings.types import Position

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
    subscription = SocketSubscription("c")
    assert subscription.track_subscribed(subscribed("e1", 7, replayed=0)) is None
    assert subscription.position == Position("e1", 7)
    item = subscription.track_push(push(8))
    assert item == SocketEvent("c", "e1", 8, "message", 8)
    assert subscription.position == Position("e1", 8)


async def test_events_published_while_subscribing_follow_the_reply() -> None:
    # The reply's position counts the events the server sends right after it.
    subscription = SocketSubscription("c")
    assert subscription.track_subscribed(subscribed("e1", 12, replayed=0)) is None
    assert subscription.position == Position("e1", 12)
    assert [subscription.track_push(push(n)) is not None for n in (11, 12, 12, 13)] == [
        True,
        True,
        False,
        True,
    ]
    assert subscription.position == Position("e1", 13)


async def test_events_after_a_reset_reply_are_all_new() -> None:
    subscription = SocketSubscription("c", since=Position("e1", 40))
    reset = subscription.track_subscribed(
        subscribed("e1", 90, recovered=False, reset="window", replayed=0)
    )
    assert reset == Reset("c", Position("e1", 90), "window")
    assert [subscription.track_push(push(n)) is not None for n in (89, 90, 91)] == [True] * 3


async def test_a_recovered_subscription_keeps_its_position_until_the_replay() -> None:
    subscription = SocketSubscription("c", since=Position("e1", 3))
    assert subscription.track_subscribed(subscribed("e1", 5, replayed=2)) is None
    assert subscription.position == Position("e1", 3)
    assert [subscription.track_push(push(n)) is not None for n in (4, 5)] == [True, True]
    assert subscription.position == Position("e1", 5)


async def test_events_already_delivered_are_dropped() -> None:
    subscription = SocketSubscription("c", since=("e1", 5))
    assert subscription.track_push(push(4)) is None
    assert subscription.track_push(push(5)) is None
    assert subscription.track_push(push(6)) is not None
    assert subscription.track_push(push(6)) is None
    assert subscription.position == Position("e1", 6)


async def test_an_unrecoverable_position_becomes_a_reset() -> None:
    subscription = SocketSubscription("c", since=Position("old", 40))
    reset = subscription.track_subscribed(
        subscribed("new", 2, recovered=False, reset="epoch", replayed=0)
    )
    assert reset == Reset("c", Position("new", 2), "epoch")
    assert subscription.position == Position("new", 2)
    event = subscription.track_push(push(3, epoch="new"))
    assert isinstance(event, SocketEvent)
    assert event.position == Position("new", 3)


async def test_reset_pushes_move_the_position() -> None:
    subscription = SocketSubscription("c", since=Position("e1", 1))
    item = subscription.track_push(push(9, event="reset", data={"reason": "overflow"}))
    assert item == Reset("c", Position("e1", 9), "overflow")
    assert subscription.position == Position("e1", 9)
    assert subscription.track_push(push(9)) is None


async def test_join_and_leave_are_notices_outside_the_stream() -> None:
    subscription = SocketSubscription("c", since=Position("e1", 1))
    entry = {"client": "abc", "user": None, "info": {"name": "ada"}}
    item = subscription.track_push(push(None, event="join", data=entry))
    assert item == Notice("c", "join", "abc", None, {"name": "ada"})
    assert subscription.position == Position("e1", 1)


async def test_text_events_say_so() -> None:
    subscription = SocketSubscription("c")
    item = subscription.track_push(push(1, data="plain", text=True))
    assert isinstance(item, SocketEvent)
    assert (item.data, item.text) == ("plain", True)


# -- delivery ---------------------------------------------------------------------------


async def test_the_iterator_yields_what_is_buffered_then_ends() -> None:
    subscription = SocketSubscription("c")
    events = [SocketEvent("c", "e", n, "message", n) for n in (1, 2)]
    for event in events:
        await subscription.deliver(event)
    subscription.close()
    assert [item async for item in subscription] == events
    await subscription.deliver(events[0])  # after close: nothing
    assert [item async for item in subscription] == []


async def test_the_iterator_raises_the_error_that_ended_it() -> None:
    subscription = SocketSubscription("c")
    event = SocketEvent("c", "e", 1, "message", 1)
    await subscription.deliver(event)
    error = ConnectionClosed(4503, "forbidden", reconnect=False)
    subscription.close(error)
    assert await anext(subscription) == event
    with pytest.raises(ConnectionClosed) as caught:
        await anext(subscription)
    assert caught.value is error


async def test_a_full_buffer_holds_the_reader_back() -> None:
    subscription = SocketSubscription("c", buffer=2)
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
    subscription = SocketSubscription("c", buffer=1)
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

    subscription = SocketSubscription("c", handler=handler)
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
    sync = SocketSubscription("c", handler=plain.append)
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

    subscription = SocketSubscription("c", handler=slow, buffer=2)
    events = [SocketEvent("c", "e", n, "message", n) for n in range(1, 4)]
    for event in events:
        await asyncio.wait_for(subscription.deliver(event), TIMEOUT)  # the reader goes on
    await asyncio.sleep(0)
    assert seen == events[:1]
    await subscription.stop()
    assert not subscription.handling
    release.set()
    assert seen == events[:1]


def test_type_is_a_deprecated_name_of_event() -> None:
    event = SocketEvent("c", "e", 1, "note", 1)
    notice = Notice("c", "join", "client-1", None, None)
    with pytest.warns(DeprecationWarning, match=r"SocketEvent\.type is deprecated"):
        assert event.type == event.event == "note"
    with pytest.warns(DeprecationWarning, match=r"Notice\.type is deprecated"):
        assert notice.type == notice.event == "join"
