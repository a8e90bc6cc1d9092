"""A replay bigger than the outbox bound: read in pages as the consumer drains, then live
with no gap and no duplicate; the outbox holds at most its bound plus one page."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.env import TIMEOUT
from tidings import Event, Hub, Position, Reset
from tidings.errors import BackendUnavailable
from tidings.hub import History, MemoryBackend
from tidings.hub.event import EVENT_OVERHEAD, Encoding, Item
from tidings.hub.names import NamespaceOptions, Namespaces
from tidings.hub.subscription import CloseReason, Subscription

OUTBOX = 8 * 1024
PAD = "x" * 96
SIZE = 4 + len(PAD) + EVENT_OVERHEAD  # what each event below is charged
FIRST_PAGE = 128  # events in the first page of a replay
TEXT = Encoding("test-text", lambda item: item.raw if isinstance(item, Event) else b"RESET")


class RacingReads(MemoryBackend):
    """A memory backend whose reads suspend, as Redis's do: ``race`` runs just before
    and just after each read, so publishes land in history or in the live buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.race: Callable[[], Awaitable[None]] | None = None
        self.reads = 0
        self.fail_from: int | None = None

    async def read(
        self, channel: str, *, since: Position | None, limit: int | None, options: NamespaceOptions
    ) -> History:
        self.reads += 1
        if self.fail_from is not None and self.reads >= self.fail_from:
            raise BackendUnavailable("test", "down")
        if self.race is not None:
            await self.race()
        history = await super().read(channel, since=since, limit=limit, options=options)
        if self.race is not None:
            await self.race()
        return history


async def fill(hub: Hub, channel: str, count: int, start: int = 0) -> Position:
    """Publish events ``start`` … ``start + count - 1`` (each charged ``SIZE``)."""
    position = await hub.position(channel)
    for n in range(start, start + count):
        position = await hub.publish(channel, text=f"{n:04d}{PAD}")
    return position


async def take(subscription: Subscription, count: int) -> list[Item]:
    async with asyncio.timeout(TIMEOUT):
        return [await anext(subscription) for _ in range(count)]


def replay_task(channel: str) -> asyncio.Task[object]:
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == f"tidings-replay-{channel}"]
    return task


async def test_a_replay_far_bigger_than_the_outbox_catches_up() -> None:
    async with Hub(outbox_max_bytes=OUTBOX) as hub:
        await fill(hub, "a", 1000)  # some 230 KB: 28 times the outbox
        epoch = (await hub.position("a")).epoch
        subscription = hub.subscription()
        result = await subscription.add("a", since=Position(epoch, 0))
        assert result.recovered
        assert result.replayed == 1000
        assert result.position == Position(epoch, 1000)
        # Only the first page is queued, beyond the bound; a consumer that reads
        # nothing holds it and no more.
        assert subscription.pending_bytes == FIRST_PAGE * SIZE > OUTBOX
        for _ in range(20):
            await asyncio.sleep(0)
        assert subscription.pending_bytes == FIRST_PAGE * SIZE
        assert not subscription.closed
        assert hub.subscriber_count("a") == 1  # replaying counts
        assert hub.stats().subscribers == 1
        most = 0
        offsets = []
        async with asyncio.timeout(TIMEOUT):
            while len(offsets) < 1000:
                item = await anext(subscription)
                assert isinstance(item, Event)
                offsets.append(item.offset)
                most = max(most, subscription.pending_bytes)
        assert offsets == list(range(1, 1001))
        assert most <= OUTBOX + FIRST_PAGE * SIZE  # the bound plus one page, at every step
        live = await hub.publish("a", text="live")
        (item,) = await take(subscription, 1)
        assert isinstance(item, Event)
        assert item.offset == live.offset
        assert hub.subscriber_count("a") == 1
        assert hub.stats().slow_consumers == 0
        subscription.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.integers(0, 400),
    outbox=st.sampled_from([4096, 16384]),
    racing=st.lists(st.integers(0, 3), max_size=40),
    steps=st.lists(st.integers(0, 1), max_size=150),
)
@example(history=400, outbox=4096, racing=[3] * 40, steps=[1] * 150)
@example(history=400, outbox=4096, racing=[0, 3] * 20, steps=[0, 1] * 75)
async def test_replay_then_live_with_no_gap_and_no_duplicate(
    history: int, outbox: int, racing: list[int], steps: list[int]
) -> None:
    """Whatever is published before, during each read of a page (on either side of
    the position it reports) and between the consumer's reads, arrives exactly once,
    in order."""
    backend = RacingReads()
    async with Hub(backend, outbox_max_bytes=outbox) as hub:
        published = history
        await fill(hub, "a", history)
        epoch = (await hub.position("a")).epoch
        schedule = list(racing)

        async def race() -> None:
            nonlocal published
            count = schedule.pop(0) if schedule else 0
            await fill(hub, "a", count, published)
            published += count

        backend.race = race
        subscription = hub.subscription()
        await subscription.add("a", since=Position(epoch, 0))
        received: list[Item] = []
        for step in steps:
            await fill(hub, "a", step, published)
            published += step
            if len(received) < published:
                received += await take(subscription, 1)
        backend.race = None
        received += await take(subscription, published - len(received))
        assert all(isinstance(item, Event) for item in received)
        assert [item.offset for item in received] == list(range(1, published + 1))  # type: ignore[union-attr]
        assert [item.raw[:4] for item in received] == [  # type: ignore[union-attr]
            f"{n:04d}".encode() for n in range(published)
        ]
        marker = await hub.publish("a", text="marker")
        (item,) = await take(subscription, 1)
        assert isinstance(item, Event)
        assert item.offset == marker.offset
        assert subscription.pending_bytes == 0
        subscription.close()


async def test_a_page_that_is_gone_reads_as_a_reset_then_live() -> None:
    namespaces = Namespaces(default=NamespaceOptions(history_size=300))
    async with Hub(namespaces=namespaces, outbox_max_bytes=OUTBOX) as hub:
        await fill(hub, "a", 300)
        epoch = (await hub.position("a")).epoch
        subscription = hub.subscription()
        await subscription.add("a", since=Position(epoch, 0))
        await fill(hub, "a", 300, 300)  # history now holds 301-600 only
        first = await take(subscription, FIRST_PAGE)
        assert [item.offset for item in first] == list(range(1, FIRST_PAGE + 1))  # type: ignore[union-attr]
        (reset,) = await take(subscription, 1)
        assert isinstance(reset, Reset)
        assert reset.position == Position(epoch, 600)
        assert reset.reason == "window"
        live = await hub.publish("a", text="live")
        (item,) = await take(subscription, 1)
        assert isinstance(item, Event)
        assert item.offset == live.offset == 601
        subscription.close()


async def test_a_paused_writer_holds_one_page_and_gets_the_rest_as_it_drains() -> None:
    async with Hub(outbox_max_bytes=OUTBOX) as hub:
        await fill(hub, "a", 500)
        epoch = (await hub.position("a")).epoch
        expected = b"".join(f"{n:04d}{PAD}".encode() for n in range(500))
        writes: list[bytes] = []
        done = asyncio.Event()

        def write(data: bytes) -> None:
            writes.append(data)
            if sum(map(len, writes)) >= len(expected):
                done.set()

        subscription = hub.subscription()
        subscription.attach_writer(write, TEXT)
        subscription.pause_writing()
        await subscription.add("a", since=Position(epoch, 0))
        task = replay_task("a")
        for _ in range(20):
            await asyncio.sleep(0)
        assert writes == []
        assert subscription.pending_bytes == FIRST_PAGE * SIZE  # one page waits, no more
        subscription.resume_writing()  # the page goes out; the rest follows, page by page
        async with asyncio.timeout(TIMEOUT):
            await done.wait()
            await task
        assert b"".join(writes) == expected
        assert len(writes) < 500  # a page is one write
        assert hub.subscriber_count("a") == 1
        live = await hub.publish("a", text="live")
        assert writes[-1] == b"live"
        assert live.offset == 501
        subscription.close()


async def test_several_channels_replay_side_by_side_within_the_bound_plus_a_page() -> None:
    async with Hub(outbox_max_bytes=OUTBOX) as hub:
        for channel in "abc":
            await fill(hub, channel, 300)
        cursor = {channel: Position((await hub.position(channel)).epoch, 0) for channel in "abc"}
        async with hub.subscribe("a", "b", "c", since=cursor) as subscription:
            most = 0
            received: dict[str, list[int]] = {"a": [], "b": [], "c": []}
            async with asyncio.timeout(TIMEOUT):
                for _ in range(900):
                    item = await anext(subscription)
                    assert isinstance(item, Event)
                    received[item.channel].append(item.offset)
                    most = max(most, subscription.pending_bytes)
        assert received == {channel: list(range(1, 301)) for channel in "abc"}
        assert most <= OUTBOX + FIRST_PAGE * SIZE


@pytest.mark.parametrize("how", ["remove", "close"])
async def test_removing_the_channel_mid_replay_stops_it(how: str) -> None:
    async with Hub(outbox_max_bytes=OUTBOX) as hub:
        await fill(hub, "a", 1000)
        epoch = (await hub.position("a")).epoch
        subscription = hub.subscription()
        await subscription.add("a", since=Position(epoch, 0))
        task = replay_task("a")
        await take(subscription, FIRST_PAGE)  # the next page is on its way
        if how == "remove":
            assert subscription.remove("a")
        else:
            subscription.close()
        async with asyncio.timeout(TIMEOUT):
            await asyncio.wait([task])
        assert task.cancelled()
        assert hub.stats().channels == 0  # nothing left watching the channel
        assert subscription.take() == []
        if how == "remove":
            await hub.publish("a", text="after")
            assert subscription.take() == []
            await subscription.add("a")  # and it can be added again
            live = await hub.publish("a", text="again")
            (item,) = await take(subscription, 1)
            assert isinstance(item, Event)
            assert item.offset == live.offset
        subscription.close()


async def test_a_backend_failure_mid_replay_closes_the_subscription() -> None:
    backend = RacingReads()
    async with Hub(backend, outbox_max_bytes=OUTBOX) as hub:
        await fill(hub, "a", 1000)
        epoch = (await hub.position("a")).epoch
        subscription = hub.subscription()
        await subscription.add("a", since=Position(epoch, 0))
        backend.fail_from = backend.reads + 1
        await take(subscription, FIRST_PAGE)
        async with asyncio.timeout(TIMEOUT):
            assert await subscription.wait_closed() is CloseReason.DISCONNECT
        assert hub.backend_errors() == {"subscribe": 1}
        assert hub.stats().channels == 0


async def test_a_replay_within_one_page_is_as_before() -> None:
    """Delivered before ``add`` returns, live at once, even beyond the outbox bound."""
    async with Hub(outbox_max_bytes=1024) as hub:
        await fill(hub, "a", 100)  # 23 KB, one page
        epoch = (await hub.position("a")).epoch
        subscription = hub.subscription()
        result = await subscription.add("a", since=Position(epoch, 0))
        assert result.replayed == 100
        assert hub.subscriber_count("a") == 1
        assert subscription.pending_bytes == 100 * SIZE
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("tidings-replay")]
        items = subscription.take()
        assert [item.offset for item in items] == list(range(1, 101))  # type: ignore[union-attr]
        subscription.close()


async def test_live_traffic_faster_than_the_consumer_still_closes_it() -> None:
    async with Hub(outbox_max_bytes=OUTBOX) as hub:
        await fill(hub, "a", 300)
        epoch = (await hub.position("a")).epoch
        subscription = hub.subscription()
        await subscription.add("a", since=Position(epoch, 0))
        await take(subscription, 300)  # caught up: live from here
        await fill(hub, "a", OUTBOX // SIZE + 1, 300)
        assert subscription.close_reason is CloseReason.SLOW_CONSUMER
        assert hub.stats().slow_consumers == 1
