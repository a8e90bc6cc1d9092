"""hub/backends/memory.py: the backend contract, plus what only memory does."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.env import TIMEOUT
from tests.unit.hub.backend_contract import *  # noqa: F403
from tests.unit.hub.backend_contract import MakeHub
from tidings import Hub, NamespaceOptions, Namespaces, Position
from tidings.hub.backends.base import new_epoch
from tidings.hub.backends.memory import MemoryBackend


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_hub(clock: FakeClock) -> AsyncIterator[MakeHub]:
    # One MemoryBackend is one process: "several nodes" are hubs sharing it.
    backend = MemoryBackend(clock=clock)
    hubs: list[Hub] = []

    first_options: dict[str, Any] = {}

    async def make(**options: Any) -> Hub:
        if hubs:
            assert options in ({}, first_options), "memory 'nodes' share one hub and its options"
            return hubs[0]
        first_options.update(options)
        hub = Hub(backend, **options)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.aclose()


@pytest.fixture
def advance(clock: FakeClock) -> Any:
    async def advance(seconds: float) -> None:
        clock.now += seconds

    return advance


def test_epochs_are_random_and_safe_in_cursors() -> None:
    epochs = {new_epoch() for _ in range(1000)}
    assert len(epochs) == 1000
    assert all(re.fullmatch(r"[a-z2-7]{8}", epoch) for epoch in epochs)


async def test_idle_channels_are_forgotten_with_a_new_epoch(clock: FakeClock) -> None:
    backend = MemoryBackend(clock=clock)
    async with Hub(backend, namespaces=Namespaces(NamespaceOptions(history_ttl=10))) as hub:
        first = await hub.publish("idle", 1)
        clock.now += 5
        assert backend.sweep() == 0  # history still holds the event
        clock.now += 6
        assert backend.sweep() == 1
        second = await hub.publish("idle", 2)
        assert second.epoch != first.epoch
        assert second.offset == 1
        history = await hub.history("idle", since=first)
        assert history.reset is not None
        assert history.reset.reason == "epoch"


async def test_watched_channels_are_kept(clock: FakeClock) -> None:
    backend = MemoryBackend(clock=clock)
    async with Hub(backend, namespaces=Namespaces(NamespaceOptions(history_ttl=10))) as hub:
        async with hub.subscribe("busy"):
            first = await hub.publish("busy", 1)
            clock.now += 100
            assert backend.sweep() == 0
        assert await hub.position("busy") == first
        assert backend.sweep() == 1


async def test_idempotency_keys_expire(clock: FakeClock) -> None:
    backend = MemoryBackend(clock=clock, idempotency_window=60)
    async with Hub(backend) as hub:
        first = await hub.publish("keys", 1, key="k")
        clock.now += 30
        assert await hub.publish("keys", 1, key="k") == first
        clock.now += 31
        assert await hub.publish("keys", 1, key="k") == Position(first.epoch, 2)


async def test_history_size_zero_keeps_offsets_but_no_events(clock: FakeClock) -> None:
    backend = MemoryBackend(clock=clock)
    namespaces = Namespaces(by_name={"live": NamespaceOptions(history_size=0)})
    async with Hub(backend, namespaces=namespaces) as hub:
        await hub.publish("live:a", 1)
        position = await hub.publish("live:a", 2)
        assert position.offset == 2
        assert (await hub.history("live:a")).events == []
        assert (await hub.history("live:a", since=position)).reset is None
        assert (await hub.history("live:a", since=Position(position.epoch, 1))).reset is not None


async def test_sweeper_runs_in_the_background(clock: FakeClock) -> None:
    backend = MemoryBackend(clock=clock, sweep_interval=0.01)
    forgotten = asyncio.Event()
    sweep = backend.sweep

    def watched_sweep() -> int:
        count = sweep()
        if count:
            forgotten.set()
        return count

    backend.sweep = watched_sweep  # type: ignore[method-assign]
    async with Hub(backend, namespaces=Namespaces(NamespaceOptions(history_ttl=10))) as hub:
        first = await hub.publish("x", 1)
        assert [info.channel for info in await backend.channels()] == ["x"]
        clock.now += 11  # the event left history and nobody watches "x": it is idle
        async with asyncio.timeout(TIMEOUT):
            await forgotten.wait()  # no one called sweep(): the background task did
        assert await backend.channels() == []
        assert (await hub.position("x")).epoch != first.epoch
    # aclose() stopped the sweeper task: the autouse fixture checks nothing is left.
