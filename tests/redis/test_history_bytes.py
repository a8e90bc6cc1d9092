"""Redis backend: a channel's stream bounded in bytes by the publish script, oldest first."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings import Hub, NamespaceOptions, Namespaces, Position
from tidings.hub.backends.redis import RedisBackend

#: What the scripts count for an entry besides its data (lua/common.lua ENTRY_OVERHEAD).
ENTRY_OVERHEAD = 128


@pytest.fixture
def channel() -> str:
    return f"bytes:{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisBackend]:
    node = RedisBackend(redis_url, prefix=redis_prefix)
    await node.start()
    yield node
    await node.aclose()


async def stream_bytes(redis_client: Any, backend: RedisBackend, channel: str) -> tuple[int, int]:
    """(bytes the meta hash counts, bytes the stream's entries really take)."""
    meta, stream, _ = backend.scripts.keys(channel)
    counted = int(await redis_client.hget(meta, "b") or 0)
    entries = await redis_client.xrange(stream)
    return counted, sum(len(fields[b"d"]) + ENTRY_OVERHEAD for _, fields in entries)


async def test_a_stream_keeps_at_most_history_max_bytes_oldest_dropped_first(
    backend: RedisBackend, redis_client: Any, channel: str
) -> None:
    limit = 10 * (1000 + ENTRY_OVERHEAD)
    namespaces = Namespaces(NamespaceOptions(history_max_bytes=limit))
    async with Hub(backend, namespaces=namespaces) as hub:
        first = await hub.publish(channel, text="x" * 1000)
        for _ in range(24):
            last = await hub.publish(channel, text="x" * 1000)
        history = await hub.history(channel)
        assert [event.offset for event in history.events] == list(range(16, 26))
        counted, real = await stream_bytes(redis_client, backend, channel)
        assert counted == real <= limit
        fell_off = await hub.history(channel, since=first)
        assert fell_off.reset is not None
        assert fell_off.reset.reason == "window"
        kept = await hub.history(channel, since=Position(last.epoch, 15))
        assert kept.reset is None
        assert len(kept.events) == 10


async def test_an_event_larger_than_the_bound_is_not_kept(
    backend: RedisBackend, redis_client: Any, channel: str
) -> None:
    namespaces = Namespaces(NamespaceOptions(history_max_bytes=500))
    async with Hub(backend, namespaces=namespaces) as hub:
        await hub.publish(channel, text="small")
        position = await hub.publish(channel, text="x" * 1000)
        assert position.offset == 2
        assert (await hub.history(channel)).events == []
        assert await stream_bytes(redis_client, backend, channel) == (0, 0)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=30),
    max_bytes=st.integers(0, 10_000),
    size=st.integers(1, 8),
)
async def test_the_byte_count_matches_the_stream_after_any_publishes(
    backend: RedisBackend,
    redis_client: Any,
    channel: str,
    sizes: list[int],
    max_bytes: int,
    size: int,
) -> None:
    namespaces = Namespaces(NamespaceOptions(history_size=size, history_max_bytes=max_bytes))
    target = f"{channel}:{len(sizes)}:{max_bytes}:{size}:{sum(sizes)}"
    async with Hub(backend, namespaces=namespaces) as hub:
        for data in sizes:
            await hub.publish(target, text="x" * data)
            counted, real = await stream_bytes(redis_client, backend, target)
            assert counted == real
            assert real <= max_bytes
            assert len((await hub.history(target)).events) <= size
