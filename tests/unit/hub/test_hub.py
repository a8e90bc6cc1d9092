"""hub/hub.py: publishing rules, subscribe with cursors, cleanup, stats."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.env import TIMEOUT
from tidings import Event, Hub, InvalidChannel, InvalidPublication, Position, Reset
from tidings.hub import ClientInfo, History, MemoryBackend
from tidings.hub.names import NamespaceOptions


async def test_bad_channel_names_are_refused() -> None:
    async with Hub() as hub:
        for bad in ("", "a b", "x" * 256, "é", "a\nb", "a,b"):
            with pytest.raises(InvalidChannel):
                await hub.publish(bad, 1)
            with pytest.raises(InvalidChannel):
                async with hub.subscribe(bad):
                    pass
        with pytest.raises(InvalidChannel, match="must be a string"):
            await hub.publish(5, 1)  # type: ignore[arg-type]
        assert hub.stats().published == 0
        assert hub.stats().subscriptions == 0
        assert await hub.channels() == []


async def test_valid_channel_names() -> None:
    async with Hub() as hub:
        for good in ("a", "chat:room-1", "user@example.com/inbox", "x" * 255, "a:b:c", "A_Z.0"):
            assert (await hub.publish(good, 1)).offset == 1


async def test_bad_publications_are_refused_and_publish_nothing() -> None:
    async with Hub() as hub:
        with pytest.raises(InvalidPublication, match="JSON"):
            await hub.publish("a", {1, 2})  # type: ignore[arg-type]
        with pytest.raises(InvalidPublication, match="UTF-8"):
            await hub.publish("a", text=b"\xff")
        with pytest.raises(InvalidPublication, match="reserved"):
            await hub.publish("a", 1, event="reset")
        with pytest.raises(InvalidPublication, match="event type"):
            await hub.publish("a", 1, event="has space")
        with pytest.raises(InvalidPublication, match="key"):
            await hub.publish("a", 1, key="")
        with pytest.raises(TypeError, match="data or text"):
            await hub.publish("a", 1, text="x")
        assert (await hub.position("a")).offset == 0


async def test_subscribe_several_channels_with_a_cursor() -> None:
    async with Hub() as hub:
        a = await hub.publish("a", "a1")
        b = await hub.publish("b", "b1")
        await hub.publish("a", "a2")
        cursor = {"a": a, "b": Position(b.epoch, 0)}
        async with hub.subscribe("a", "b", "c", since=cursor) as subscription:
            await hub.publish("c", "c1")
            items = [await anext(subscription) for _ in range(3)]
        assert [(item.channel, item.data) for item in items] == [  # type: ignore[union-attr]
            ("a", "a2"),
            ("b", "b1"),
            ("c", "c1"),
        ]


async def test_a_single_position_needs_a_single_channel() -> None:
    async with Hub() as hub:
        with pytest.raises(TypeError, match="exactly one channel"):
            async with hub.subscribe("a", "b", since=Position("e", 1)):
                pass
        assert hub.stats().subscriptions == 0


async def test_reset_is_queued_before_live_events() -> None:
    async with Hub() as hub:
        await hub.publish("a", 1)
        async with hub.subscribe("a", since=Position("old", 5)) as subscription:
            await hub.publish("a", 2)
            first, second = await anext(subscription), await anext(subscription)
        assert isinstance(first, Reset)
        assert first.position.offset == 1
        assert isinstance(second, Event)
        assert second.offset == 2


async def test_cancelled_consumer_releases_its_subscription() -> None:
    async with Hub() as hub:
        started = asyncio.Event()

        async def consume() -> None:
            async with hub.subscribe("a", "b"):
                started.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), TIMEOUT)
        assert hub.stats().subscribers == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = hub.stats()
        assert (stats.subscriptions, stats.subscribers, stats.channels) == (0, 0, 0)


async def test_failing_consumer_releases_its_subscription() -> None:
    async with Hub() as hub:
        with pytest.raises(ZeroDivisionError):
            async with hub.subscribe("a") as subscription:
                await hub.publish("a", 0)
                item = await anext(subscription)
                1 / item.data  # type: ignore[union-attr]
        assert hub.stats().subscriptions == 0
        assert hub.subscriber_count("a") == 0


async def test_a_failing_delivery_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Hub() as hub:
        good = hub.subscription()
        bad = hub.subscription()
        await bad.add("a")
        await good.add("a")

        def broken(data: bytes) -> None:
            raise OSError("broken pipe")

        bad.attach_writer(broken, lambda item: b"x")
        await hub.publish("a", 1)
        assert bad.closed
        assert [item.offset for item in good.take()] == [1]  # type: ignore[union-attr]
        assert "delivery to" in caplog.text
        good.close()


async def test_closing_during_fan_out_does_not_disturb_it() -> None:
    async with Hub() as hub:
        subscriptions = [hub.subscription() for _ in range(5)]
        for subscription in subscriptions:
            await subscription.add("a")

        def close_all(data: bytes) -> None:
            for subscription in subscriptions:
                subscription.close()

        subscriptions[0].attach_writer(close_all, lambda item: b"x")
        await hub.publish("a", 1)
        assert hub.subscriber_count("a") == 0
        await hub.publish("a", 2)


async def test_stats_count_publishes_deliveries_and_subscribers() -> None:
    async with Hub() as hub:
        async with hub.subscribe("a") as one, hub.subscribe("a", "b") as two:
            await hub.publish("a", 1)
            await hub.publish("b", 2)
            await hub.publish("nobody", 3)
            stats = hub.stats()
            assert stats.published == 3
            assert stats.delivered == 3
            assert stats.subscriptions == 2
            assert stats.subscribers == 3
            assert stats.channels == 2
            assert one.pending_bytes
            assert two.pending_bytes
        channels = {summary.channel: summary for summary in await hub.channels()}
        assert set(channels) == {"a", "b", "nobody"}
        assert channels["a"].position.offset == 1
        assert channels["a"].subscribers == 0


async def test_deliveries_are_counted_by_transport_replays_included() -> None:
    async with Hub() as hub:
        start = await hub.publish("a", 0)
        sse = hub.subscription(transport="sse")
        ws = hub.subscription(transport="ws")
        other = hub.subscription(transport="ws")
        try:
            await sse.add("a", since=Position(start.epoch, 0))
            await ws.add("a")
            await other.add("a")
            await hub.publish("a", 1)
            await hub.publish("a", 2)
            assert hub.stats().delivered_by == {"sse": 3, "ws": 4}  # the replay of one
            other.close()
            await hub.publish("a", 3)
            stats = hub.stats()
            assert stats.delivered_by == {"sse": 4, "ws": 5}
            assert stats.delivered == 9
        finally:
            for subscription in (sse, ws, other):
                subscription.close()
        async with hub.subscribe("a") as subscription:
            await hub.publish("a", 4)
            assert subscription.take()
        assert hub.stats().delivered_by["hub"] == 1


async def test_options_must_be_sane() -> None:
    with pytest.raises(ValueError, match="outbox_max_bytes"):
        Hub(outbox_max_bytes=0)
    with pytest.raises(ValueError, match="disconnect"):
        Hub(overflow="explode")


class CountingBackend(MemoryBackend):
    """Counts presence writes, so a test can wait for the keeper's refresh."""

    def __init__(self) -> None:
        super().__init__()
        self.adds = 0
        self.refreshed = asyncio.Event()

    async def presence_add(
        self, channel: str, client_id: str, payload: bytes, *, ttl: float
    ) -> None:
        await super().presence_add(channel, client_id, payload, ttl=ttl)
        self.adds += 1
        if self.adds > 1:
            self.refreshed.set()


async def test_presence_entries_are_refreshed_while_subscribed() -> None:
    backend = CountingBackend()
    # Refreshed every ttl / 3; the entry must outlive the check after the wait.
    async with Hub(backend, presence_ttl=TIMEOUT / 5) as hub:
        subscription = hub.subscription(client=ClientInfo("c1"))
        await subscription.add("room")
        async with asyncio.timeout(TIMEOUT):
            await backend.refreshed.wait()
        assert [client.client_id for client in await hub.presence("room")] == ["c1"]
        subscription.close()


async def test_presence_is_cleaned_up_when_the_hub_closes() -> None:
    backend = MemoryBackend()
    hub = Hub(backend)
    async with hub:
        subscription = hub.subscription(client=ClientInfo("c1"))
        await subscription.add("room")
        assert await backend.presence("room")
    assert subscription.closed
    assert await backend.presence("room") == {}


async def test_presence_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ttl"):
        Hub(presence_ttl=0)


async def test_presence_of_an_invalid_channel_is_refused() -> None:
    async with Hub() as hub:
        with pytest.raises(InvalidChannel):
            await hub.presence("a b")


class ResettingBackend(MemoryBackend):
    """A memory backend that can report a gap, as a shared backend does when history is lost."""

    def set_reset_listener(self, listener: Callable[[Reset], None]) -> None:
        self.reset_listener = listener


async def test_a_reset_from_the_backend_reaches_live_subscribers_in_order() -> None:
    backend = ResettingBackend()
    async with (
        Hub(backend) as hub,
        hub.subscribe("c") as subscription,
        hub.subscribe("other") as other,
    ):
        await hub.publish("c", 1)
        reset = Reset("c", Position("new-epoch", 0), "epoch")
        backend.reset_listener(reset)
        backend.reset_listener(Reset("unwatched", Position("x", 0), "epoch"))  # ignored
        await hub.publish("other", "marker")
        items = [await anext(subscription), await anext(subscription)]
        assert [type(item) for item in items] == [Event, Reset]
        assert items[1] == reset
        assert (await anext(other)).data == "marker"  # type: ignore[union-attr]


class PausedReadBackend(ResettingBackend):
    """Holds every read until released, so that the test can act while a subscribe reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def read(self, channel: str, **options: Any) -> History:
        history = await super().read(channel, **options)
        self.reading.set()
        await self.release.wait()
        return history


async def test_a_reset_during_a_subscribe_follows_the_replay() -> None:
    backend = PausedReadBackend()
    async with Hub(backend) as hub:
        first = await hub.publish("c", "old")
        subscription = hub.subscription()
        adding = asyncio.create_task(subscription.add("c", since=Position(first.epoch, 0)))
        async with asyncio.timeout(TIMEOUT):
            await backend.reading.wait()
        # The backend lost the stream while the replay was read: a reset, then
        # the new epoch's first event, both before the subscription is live.
        backend.reset_listener(Reset("c", Position("new-epoch", 0), "epoch"))
        backend._listener(Event("c", first.epoch, 1, b'"old"'))  # stale: dropped
        backend._listener(Event("c", "new-epoch", 1, b'"new"'))
        backend.release.set()
        subscribed = await adding
        # The position is the one the replay was read at; what follows it
        # (the reset and the new epoch) is still to be delivered.
        assert subscribed.position == first
        items = [await anext(subscription) for _ in range(3)]
        subscription.close()
    assert items == [
        Event("c", first.epoch, 1, b'"old"'),
        Reset("c", Position("new-epoch", 0), "epoch"),
        Event("c", "new-epoch", 1, b'"new"'),
    ]


async def test_history_keeps_json_events_right_sized() -> None:
    # orjson over-allocates its output (4 KiB for a small event); an event
    # kept in history must cost about its size, not the buffer's.
    tracemalloc.start()
    try:
        async with Hub() as hub:
            await hub.publish("sized", {"warm": "up"})
            before = tracemalloc.get_traced_memory()[0]
            for n in range(1000):
                await hub.publish("sized", {"n": n, "text": "a small event of about 60 bytes"})
            kept = tracemalloc.get_traced_memory()[0] - before
            assert len((await hub.history("sized")).events) == 1000
    finally:
        tracemalloc.stop()
    assert kept < 1000 * 1024, f"{kept / 1000:.0f} bytes per event"


class RacingBackend(MemoryBackend):
    """Publishes one event between reading a channel's position and returning it."""

    async def position(self, channel: str, *, options: NamespaceOptions) -> Position:
        position = await super().position(channel, options=options)
        await self.publish(channel, b"raced", type="message", is_text=True, options=options)
        return position


async def test_the_subscribed_position_precedes_events_still_to_be_delivered() -> None:
    async with Hub(RacingBackend()) as hub:
        await hub.publish("room", "before")
        subscription = hub.subscription()
        try:
            subscribed = await subscription.add("room")
            # The raced event arrives after the result; resuming from the
            # reported position must not skip it.
            assert subscribed.position.offset == 1
            item = await asyncio.wait_for(anext(aiter(subscription)), TIMEOUT)
            assert isinstance(item, Event)
            assert item.offset == 2
        finally:
            subscription.close()
