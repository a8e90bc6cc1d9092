"""hub/subscription.py: the bounded outbox, both overflow policies, the fast path."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.env import TIMEOUT
from tidings import Event, Hub, Position, Reset, SubscriptionClosed
from tidings.errors import AlreadySubscribed
from tidings.hub.event import EVENT_OVERHEAD, Encoding
from tidings.hub.subscription import CloseReason, OverflowPolicy

BODY = b"x" * 100
EVENT_SIZE = len(BODY) + 2 + EVENT_OVERHEAD  # the JSON string adds two quotes
TEXT = Encoding("test-text", lambda item: item.raw if isinstance(item, Event) else b"RESET")


async def test_outbox_is_bounded_and_disconnect_policy_closes() -> None:
    async with Hub(outbox_max_bytes=EVENT_SIZE * 10) as hub:
        subscription = hub.subscription()
        await subscription.add("slow")
        for _ in range(10):
            await hub.publish("slow", BODY.decode())
        assert not subscription.closed
        assert subscription.pending_bytes == EVENT_SIZE * 10
        await hub.publish("slow", BODY.decode())
        assert subscription.close_reason is CloseReason.SLOW_CONSUMER
        assert subscription.pending_bytes == 0  # memory is released at once
        assert hub.subscriber_count("slow") == 0
        assert hub.stats().slow_consumers == 1
        with pytest.raises(SubscriptionClosed) as caught:
            await anext(subscription)
        assert caught.value.reason == "slow_consumer"


async def test_drop_policy_drops_oldest_and_says_so() -> None:
    async with Hub(outbox_max_bytes=EVENT_SIZE * 10, overflow="drop") as hub:
        subscription = hub.subscription()
        await subscription.add("lossy")
        for n in range(11):
            await hub.publish("lossy", text=str(n).rjust(102, "0"))
        items = subscription.take()
        assert isinstance(items[0], Reset)
        assert items[0].reason == "overflow"
        kept = [item.offset for item in items[1:] if isinstance(item, Event)]
        # Dropped down to half the bound: the oldest went, the newest stayed, in order.
        assert kept == list(range(kept[0], 12))
        assert items[0].position.offset == kept[0] - 1
        assert not subscription.closed
        assert hub.stats().dropped == kept[0] - 1
        subscription.close()


async def test_drop_policy_merges_repeated_resets() -> None:
    async with Hub(outbox_max_bytes=EVENT_SIZE * 4, overflow=OverflowPolicy.DROP) as hub:
        subscription = hub.subscription()
        await subscription.add("lossy")
        for n in range(40):
            await hub.publish("lossy", text=str(n).rjust(102, "0"))
        items = subscription.take()
        resets = [item for item in items if isinstance(item, Reset)]
        assert len(resets) == 1
        assert items[0] is resets[0]
        assert subscription.pending_bytes == 0
        subscription.close()


async def test_iteration_ends_quietly_after_own_close() -> None:
    async with Hub() as hub:
        subscription = hub.subscription()
        await subscription.add("a")
        await hub.publish("a", 1)
        subscription.close()
        subscription.close()  # idempotent
        # What was queued stays readable, then iteration ends.
        assert [item.data async for item in subscription] == [1]  # type: ignore[union-attr]


async def test_hub_shutdown_ends_subscriptions_with_an_error() -> None:
    hub = Hub()
    await hub.start()
    subscription = hub.subscription()
    await subscription.add("a")
    await hub.aclose()
    with pytest.raises(SubscriptionClosed, match="shutdown"):
        await anext(subscription)


async def test_wait_returns_on_publish_and_on_wakeup() -> None:
    async with Hub() as hub:
        subscription = hub.subscription()
        await subscription.add("a")
        waiter = asyncio.create_task(subscription.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        await hub.publish("a", 1)
        await asyncio.wait_for(waiter, TIMEOUT)
        subscription.take()
        waiter = asyncio.create_task(subscription.wait())
        await asyncio.sleep(0)
        subscription.wakeup()
        await asyncio.wait_for(waiter, TIMEOUT)
        assert subscription.take() == []
        subscription.close()


async def test_only_one_waiter_at_a_time() -> None:
    async with Hub() as hub:
        subscription = hub.subscription()
        await subscription.add("a")
        first = asyncio.create_task(subscription.wait())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already waiting"):
            await subscription.wait()
        subscription.close()
        await asyncio.wait_for(first, TIMEOUT)


async def test_adding_a_channel_twice_is_refused() -> None:
    async with Hub() as hub, hub.subscribe("a") as subscription:
        with pytest.raises(AlreadySubscribed) as caught:
            await subscription.add("a")
        assert caught.value.code == "already_subscribed"
        assert caught.value.channel == "a"


async def test_adding_to_a_closed_subscription_is_refused() -> None:
    async with Hub() as hub:
        subscription = hub.subscription()
        subscription.close()
        with pytest.raises(SubscriptionClosed, match="closed"):
            await subscription.add("a")
        assert hub.stats().subscriptions == 0


class Transport:
    """Records writes, like asyncio.Transport.write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


async def test_writer_gets_events_directly_and_encoded_once() -> None:
    async with Hub() as hub:
        transports = [Transport() for _ in range(3)]
        subscriptions = []
        for transport in transports:
            subscription = hub.subscription()
            await subscription.add("a")
            subscription.attach_writer(transport.write, TEXT)
            subscriptions.append(subscription)
        await hub.publish("a", text="one")
        await hub.publish("a", text="two")
        assert [t.writes for t in transports] == [[b"one", b"two"]] * 3
        # The same bytes object went to every transport: encoded once.
        assert transports[0].writes[0] is transports[2].writes[0]
        for subscription in subscriptions:
            assert subscription.pending_bytes == 0
            subscription.close()


async def test_queued_items_are_written_in_one_call_on_attach_and_resume() -> None:
    async with Hub() as hub:
        transport = Transport()
        subscription = hub.subscription()
        await subscription.add("a")
        await hub.publish("a", text="1")
        await hub.publish("a", text="2")
        subscription.attach_writer(transport.write, TEXT)
        assert transport.writes == [b"12"]
        subscription.pause_writing()
        for n in range(3, 6):
            await hub.publish("a", text=str(n))
        assert transport.writes == [b"12"]
        assert subscription.pending_bytes > 0
        subscription.resume_writing()
        assert transport.writes == [b"12", b"345"]
        await hub.publish("a", text="6")
        assert transport.writes == [b"12", b"345", b"6"]
        subscription.close()


async def test_overflow_while_paused_applies_the_policy() -> None:
    async with Hub(outbox_max_bytes=EVENT_OVERHEAD * 3) as hub:
        transport = Transport()
        closed: list[CloseReason | None] = []
        subscription = hub.subscription()
        subscription.on_close(lambda s: closed.append(s.close_reason))
        await subscription.add("a")
        subscription.attach_writer(transport.write, TEXT)
        subscription.pause_writing()
        for n in range(4):
            await hub.publish("a", text=str(n))
        assert closed == [CloseReason.SLOW_CONSUMER]
        subscription.resume_writing()  # nothing is written after close
        assert transport.writes == []


async def test_pause_during_write_is_respected() -> None:
    async with Hub() as hub:
        subscription = hub.subscription()
        writes: list[bytes] = []

        def write(data: bytes) -> None:
            writes.append(data)
            subscription.pause_writing()  # the transport crossed its high-water mark

        await subscription.add("a")
        subscription.attach_writer(write, TEXT)
        await hub.publish("a", text="1")
        await hub.publish("a", text="2")
        assert writes == [b"1"]
        subscription.close()


async def test_position_of_subscribe_result() -> None:
    async with Hub() as hub:
        position = await hub.publish("a", 1)
        subscription = hub.subscription()
        live = await subscription.add("a")
        assert live.position == position
        assert live.recovered
        other = hub.subscription()
        replay = await other.add("a", since=Position(position.epoch, 0))
        assert (replay.position, replay.replayed, replay.recovered) == (position, 1, True)
        third = hub.subscription()
        reset = await third.add("a", since=Position("nope", 1), notify_reset=False)
        assert not reset.recovered
        assert reset.reset is not None
        assert third.take() == []  # notify_reset=False: the caller reports it itself
        for each in (subscription, other, third):
            each.close()


async def test_resume_writes_a_backlog_with_the_batch_encoder() -> None:
    async with Hub() as hub:
        transport = Transport()
        batches: list[list[int]] = []

        def encode_batch(items: list[Event | Reset]) -> bytes:
            batches.append([item.offset for item in items if isinstance(item, Event)])
            return b"[" + b",".join(TEXT(item) for item in items) + b"]"

        subscription = hub.subscription()
        await subscription.add("a")
        subscription.attach_writer(transport.write, TEXT, encode_batch=encode_batch)
        subscription.pause_writing()
        await hub.publish("a", text="1")
        subscription.resume_writing()  # a backlog of one is written as itself
        subscription.pause_writing()
        for n in range(2, 5):
            await hub.publish("a", text=str(n))
        subscription.resume_writing()
        assert transport.writes == [b"1", b"[2,3,4]"]
        assert batches == [[2, 3, 4]]
        subscription.close()


async def test_on_live_answers_before_the_replay_is_delivered() -> None:
    async with Hub() as hub:
        for n in range(3):
            position = await hub.publish("a", text=str(n))
        transport = Transport()
        subscription = hub.subscription()
        subscription.attach_writer(transport.write, TEXT)
        seen: list[tuple[int, list[bytes]]] = []
        result = await subscription.add(
            "a",
            since=Position(position.epoch, 0),
            on_live=lambda live: seen.append((live.replayed, list(transport.writes))),
        )
        assert seen == [(3, [])]  # called before anything was written
        assert transport.writes == [b"012"]  # the replay's page in one write
        assert result.position == position
        subscription.close()


async def test_dropped_presence_notices_leave_no_gap() -> None:
    async with Hub(outbox_max_bytes=EVENT_OVERHEAD * 4, overflow="drop") as hub:
        subscription = hub.subscription()
        await subscription.add("a")
        notice = Event("a", "", 0, b'{"client":"c"}', event="join")
        for _ in range(6):
            subscription._deliver(notice)
        assert not subscription.closed
        items = subscription.take()
        assert not any(isinstance(item, Reset) for item in items)
        subscription.close()
