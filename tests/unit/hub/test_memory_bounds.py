"""hub/backends/memory.py: history bounded in bytes, per channel and in total, counted exactly."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings import Hub, NamespaceOptions, Namespaces, Position
from tidings.hub.backends.memory import (
    MemoryBackend,
    channel_cost,
    event_cost,
    key_cost,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def recount(backend: MemoryBackend) -> tuple[int, int, int]:
    """What the backend holds, counted from scratch: (channels, events, bytes)."""
    states = backend._states
    events = sum(len(state.history) for state in states.values())
    total = 0
    for channel, state in states.items():
        total += channel_cost(channel)
        total += sum(event_cost(event) for event in state.history)
        total += sum(key_cost(key) for key in state.keys)
        assert state.event_bytes == sum(event_cost(event) for event in state.history)
    return len(states), events, total


def check(backend: MemoryBackend, total_max: int, options: NamespaceOptions) -> None:
    assert tuple(backend.usage()) == recount(backend)
    assert backend.usage().bytes <= total_max
    for state in backend._states.values():
        assert state.event_bytes <= options.history_max_bytes
        assert len(state.history) <= options.history_size
        offsets = [event.offset for event in state.history]
        assert offsets == list(range(state.offset - len(offsets) + 1, state.offset + 1))


async def test_a_channel_keeps_at_most_history_max_bytes_oldest_dropped_first() -> None:
    options = NamespaceOptions(history_max_bytes=10 * event_cost_of(1000))
    async with Hub(MemoryBackend(), namespaces=Namespaces(options)) as hub:
        first = await hub.publish("big", text="x" * 1000)
        for _ in range(24):
            last = await hub.publish("big", text="x" * 1000)
        history = await hub.history("big")
        assert [event.offset for event in history.events] == list(range(16, 26))
        # A position that fell off gets the usual reset.
        fell_off = await hub.history("big", since=first)
        assert fell_off.reset is not None
        assert fell_off.reset.reason == "window"
        assert fell_off.reset.position == last
        kept = await hub.history("big", since=Position(last.epoch, 15))
        assert kept.reset is None
        assert len(kept.events) == 10


def event_cost_of(data_bytes: int) -> int:
    return data_bytes + event_cost_empty()


def event_cost_empty() -> int:
    from tidings.hub.event import Event

    return event_cost(Event("c", "e", 1, b""))


async def test_history_max_bytes_zero_keeps_offsets_but_no_events() -> None:
    options = NamespaceOptions(history_max_bytes=0)
    backend = MemoryBackend()
    async with Hub(backend, namespaces=Namespaces(options)) as hub:
        position = await hub.publish("none", 1)
        assert position.offset == 1
        assert (await hub.history("none")).events == []
        assert backend.usage().events == 0


async def test_the_total_bound_evicts_the_least_recently_published_channel_first() -> None:
    cost = event_cost_of(100)
    total = 4 * (channel_cost("a") + 3 * cost)
    backend = MemoryBackend(history_total_bytes=total)
    async with Hub(backend) as hub:
        old = await hub.publish("a", text="x" * 100)
        for channel in "abcd":
            for _ in range(3 if channel != "a" else 2):
                await hub.publish(channel, text="x" * 100)
        assert backend.usage().bytes == total
        await hub.publish("e", text="x" * 100)
        # "a" went first: its events, oldest first, then, left empty, its state.
        assert backend.usage().bytes <= total
        assert "a" not in backend._states
        for channel in "bcde":
            assert len(backend._states[channel].history) == (3 if channel != "e" else 1)
        reset = (await hub.history("a", since=old)).reset
        assert reset is not None
        assert reset.reason == "epoch"


async def test_many_tiny_channels_are_bounded_and_emptied_ones_forgotten() -> None:
    total = 64 * 1024
    backend = MemoryBackend(history_total_bytes=total)
    async with Hub(backend) as hub:
        first = await hub.publish("tiny:0", 1)
        for number in range(1, 2000):
            await hub.publish(f"tiny:{number}", 1)
        channels, events, counted = backend.usage()
        assert counted <= total
        # Eviction stops once under the bound: at most the oldest kept channel lost its event.
        assert channels < 2000
        assert channels - 1 <= events <= channels
        assert (channels, events, counted) == recount(backend)
        # The oldest channel was forgotten: its next use is a new epoch, so an
        # old position gets a reset rather than a wrong resume.
        again = await hub.history("tiny:0", since=first)
        assert again.reset is not None
        assert again.reset.reason == "epoch"


async def test_reading_unknown_channels_cannot_grow_memory_past_the_bound() -> None:
    total = 32 * 1024
    backend = MemoryBackend(history_total_bytes=total)
    async with Hub(backend) as hub:
        kept = await hub.publish("real", 1)
        for number in range(3000):
            await hub.history(f"ghost:{number}")
        assert backend.usage().bytes <= total
        # Never-published states went first; the published channel's event stays.
        assert (await hub.history("real", since=Position(kept.epoch, 0))).events


async def test_watched_channels_keep_their_position_under_pressure() -> None:
    total = 8 * 1024
    backend = MemoryBackend(history_total_bytes=total)
    async with Hub(backend) as hub, hub.subscribe("watched") as subscription:
        position = await hub.publish("watched", text="x" * 1000)
        for number in range(40):
            await hub.publish(f"other:{number}", text="x" * 1000)
        assert backend.usage().bytes <= total
        assert await hub.position("watched") == position
        received = await asyncio.wait_for(subscription.__anext__(), 5)
        assert received.offset == 1  # type: ignore[union-attr]


async def test_idempotency_keys_are_counted_and_released_when_they_expire() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock, idempotency_window=10)
    async with Hub(backend) as hub:
        await hub.publish("keys", 1, key="k1")
        await hub.publish("keys", 1, key="k1")  # the same key: counted once
        assert backend.usage() == recount(backend)
        with_key = backend.usage().bytes
        clock.now += 11
        backend.sweep()
        assert backend.usage().bytes == with_key - key_cost("k1")
        assert backend.usage() == recount(backend)


async def test_expired_and_swept_history_is_uncounted() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    async with Hub(backend, namespaces=Namespaces(NamespaceOptions(history_ttl=10))) as hub:
        for number in range(5):
            await hub.publish(f"ttl:{number}", text="x" * 500)
        assert backend.usage().events == 5
        clock.now += 11
        backend.sweep()
        assert tuple(backend.usage()) == (0, 0, 0)


async def test_stats_show_history_and_outbox_totals() -> None:
    backend = MemoryBackend()
    async with Hub(backend) as hub, hub.subscribe("s") as subscription:
        await hub.publish("s", text="x" * 100)
        stats = hub.stats()
        assert stats.history_channels == 1
        assert stats.history_events == 1
        assert stats.history_bytes == backend.usage().bytes
        assert stats.outbox_bytes == subscription.pending_bytes > 0


operation = st.one_of(
    st.tuples(
        st.just("publish"),
        st.integers(0, 7),  # channel
        st.integers(0, 3000),  # data bytes
        st.one_of(st.none(), st.sampled_from(["k1", "k2", "k3"])),
    ),
    st.tuples(st.just("read"), st.integers(0, 30), st.just(0), st.none()),
    st.tuples(st.just("advance"), st.integers(0, 40), st.just(0), st.none()),
    st.tuples(st.just("sweep"), st.just(0), st.just(0), st.none()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    operations=st.lists(operation, max_size=80),
    total_max=st.integers(2_000, 40_000),
    max_bytes=st.integers(0, 12_000),
    size=st.integers(0, 12),
)
def test_accounting_stays_exact_and_within_the_bounds(
    operations: list[tuple[str, int, int, str | None]],
    total_max: int,
    max_bytes: int,
    size: int,
) -> None:
    options = NamespaceOptions(history_size=size, history_max_bytes=max_bytes, history_ttl=30)
    clock = FakeClock()
    backend = MemoryBackend(clock=clock, history_total_bytes=total_max, idempotency_window=20)

    async def run() -> None:
        for kind, number, data, key in operations:
            if kind == "publish":
                await backend.publish(
                    f"c{number}",
                    b"x" * data,
                    type="message",
                    is_text=True,
                    options=options,
                    key=key,
                )
            elif kind == "read":
                await backend.read(f"c{number}", since=None, limit=None, options=options)
            elif kind == "advance":
                clock.now += number
            else:
                backend.sweep()
            check(backend, total_max, options)

    asyncio.run(run())
