"""hub/backends/redis/: the backend contract over the real Redis, plus what only Redis does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.env import TIMEOUT, eventually
from tests.unit.hub.backend_contract import *  # noqa: F403
from tests.unit.hub.backend_contract import MakeHub, offsets, take
from tidings import BackendUnavailable, Event, Hub, NamespaceOptions, Namespaces, Position, Reset
from tidings.hub.backends.redis import RedisBackend


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_hub(redis_url: str, redis_prefix: str, clock: FakeClock) -> AsyncIterator[MakeHub]:
    # Each hub is a node with its own backend and connections; they share
    # Redis (under this test's prefix) and the clock.
    hubs: list[Hub] = []

    async def make(**options: Any) -> Hub:
        backend = RedisBackend(redis_url, prefix=redis_prefix, clock=clock)
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


@pytest.fixture
async def backends(redis_url: str, redis_prefix: str) -> AsyncIterator[list[RedisBackend]]:
    """Two started backends on one prefix: two nodes, with Redis' own clock."""
    nodes = [RedisBackend(redis_url, prefix=redis_prefix) for _ in range(2)]
    for node in nodes:
        await node.start()
    yield nodes
    for node in nodes:
        await node.aclose()


async def test_two_backends_publishing_at_once_never_share_an_offset(
    backends: list[RedisBackend], channel: str
) -> None:
    async with Hub(backends[0]) as node_a, Hub(backends[1]) as node_b:
        positions = await asyncio.gather(
            *(node.publish(channel, n) for n in range(500) for node in (node_a, node_b))
        )
        assert sorted(p.offset for p in positions) == list(range(1, 1001))
        assert len({p.epoch for p in positions}) == 1
        history = await node_b.history(channel)
        assert offsets(history.events) == list(range(1, 1001))


async def delete_channel(client: Any, prefix: str, channel: str) -> None:
    """What FLUSHALL, eviction or a restart without persistence does to a channel."""
    deleted = await client.delete(f"{prefix}{{{channel}}}:m", f"{prefix}{{{channel}}}:s")
    assert deleted == 2


async def test_lost_stream_starts_a_new_epoch_and_old_positions_reset(
    backends: list[RedisBackend], redis_client: Any, redis_prefix: str, channel: str
) -> None:
    async with Hub(backends[0]) as hub:
        for n in range(3):
            old = await hub.publish(channel, n)
        await delete_channel(redis_client, redis_prefix, channel)
        new = await hub.publish(channel, "after")
        assert new.epoch != old.epoch
        assert new.offset == 1
        history = await hub.history(channel, since=old)
        assert history.reset is not None
        assert history.reset.reason == "epoch"
        assert history.reset.position == new


async def test_live_subscribers_get_a_reset_when_the_stream_is_lost(
    backends: list[RedisBackend], redis_client: Any, redis_prefix: str, channel: str
) -> None:
    async with Hub(backends[0]) as node_a, Hub(backends[1]) as node_b:
        async with node_b.subscribe(channel) as subscription:
            await node_a.publish(channel, 1)
            await node_a.publish(channel, 2)
            assert offsets(await take(subscription, 2)) == [1, 2]
            await delete_channel(redis_client, redis_prefix, channel)
            new = await node_a.publish(channel, "new epoch")
            reset, event = await take(subscription, 2)
        assert isinstance(reset, Reset)
        assert reset.reason == "epoch"
        assert reset.position == Position(new.epoch, 0)
        assert isinstance(event, Event)
        assert (event.position, event.data) == (new, "new epoch")


async def test_pubsub_reconnection_delivers_every_event_once_in_order(
    backends: list[RedisBackend], redis_client: Any, channel: str
) -> None:
    """The subscriber's Pub/Sub connection is killed while another node publishes."""
    total = 300
    async with Hub(backends[0]) as node_a, Hub(backends[1]) as node_b:
        async with node_b.subscribe(channel) as subscription:
            name = backends[1].pubsub_client_name

            async def publish_all() -> None:
                for n in range(total):
                    await node_a.publish(channel, n)
                    if n in (50, 150):
                        # The first kill may still be reconnecting: wait for it to be back.
                        await eventually(lambda: kill_client(redis_client, name))

            publisher = asyncio.create_task(publish_all())
            try:
                items = await take(subscription, total)
            finally:
                await publisher
        assert all(isinstance(item, Event) for item in items)
        assert [item.data for item in items] == list(range(total))  # type: ignore[union-attr]
        assert backends[1].reconnects >= 2


async def kill_client(client: Any, name: str) -> bool:
    """Close the Redis connection named ``name`` from the server side, if it is there."""
    for entry in await client.client_list():
        if entry.get("name") == name:
            return int(await client.execute_command("CLIENT", "KILL", "ID", entry["id"])) == 1
    return False


async def test_start_fails_fast_when_redis_is_not_there(redis_prefix: str) -> None:
    from tidings.testing import free_port

    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", prefix=redis_prefix, timeout=1)
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(BackendUnavailable, match="unavailable"):
            await backend.start()
    await backend.aclose()


async def publish_unannounced(
    backend: RedisBackend, channel: str, data: int, *, history_size: int = 1000
) -> None:
    """Publish through the real script but announce it on no one's Pub/Sub channel.

    For the subscribers this is a Pub/Sub message lost in transit: the
    offset and the stream move on, the next message they get skips one.
    """
    await backend.scripts.call(
        "publish",
        backend.scripts.keys(channel),
        (
            channel,
            "nobody-listens",
            str(data),
            "message",
            0,
            history_size,
            300_000,
            86_400_000,
            "",
            "fresh",
            1000,
            16 * 1024 * 1024,
        ),
    )


async def test_a_skipped_offset_is_filled_from_the_stream(
    backends: list[RedisBackend], channel: str
) -> None:
    async with (
        Hub(backends[0]) as node_a,
        Hub(backends[1]) as node_b,
        node_b.subscribe(channel) as subscription,
    ):
        await node_a.publish(channel, 1)
        await publish_unannounced(backends[0], channel, 2)
        await publish_unannounced(backends[0], channel, 3)
        await node_a.publish(channel, 4)
        items = await take(subscription, 4)
    assert offsets(items) == [1, 2, 3, 4]
    assert [item.data for item in items] == [1, 2, 3, 4]  # type: ignore[union-attr]


async def test_a_gap_older_than_history_is_a_reset(
    backends: list[RedisBackend], channel: str
) -> None:
    namespace = channel.partition(":")[0]
    options = Namespaces(by_name={namespace: NamespaceOptions(history_size=2)})
    async with (
        Hub(backends[0], namespaces=options) as node_a,
        Hub(backends[1], namespaces=options) as node_b,
        node_b.subscribe(channel) as subscription,
    ):
        await node_a.publish(channel, 1)
        for n in (2, 3, 4):
            await publish_unannounced(backends[0], channel, n, history_size=2)
        last = await node_a.publish(channel, 5)
        first, reset, *rest = await take(subscription, 4)
    assert offsets([first]) == [1]
    assert isinstance(reset, Reset)
    # History (size 2) holds 4 and 5 when the gap is noticed: 2 and 3 are
    # lost, and the stream goes on with what is left.
    assert (reset.reason, reset.position) == ("window", Position(last.epoch, 3))
    assert offsets(rest) == [4, 5]
    assert [item.data for item in rest] == [4, 5]  # type: ignore[union-attr]


async def test_watched_channels_keep_their_epoch_without_publishes(
    redis_url: str, redis_prefix: str, redis_client: Any, channel: str
) -> None:
    backend = RedisBackend(redis_url, prefix=redis_prefix, meta_ttl=3600, refresh_interval=0.05)
    meta = f"{redis_prefix}{{{channel}}}:m"
    async with Hub(backend) as hub, hub.subscribe(channel):
        await hub.publish(channel, 1)
        await redis_client.pexpire(meta, 10_000)  # as if the last publish were long ago

        async def refreshed() -> bool:
            return int(await redis_client.pttl(meta)) > 3_000_000

        await eventually(refreshed)


async def test_clients_moving_between_nodes_resume_exactly_while_others_publish(
    make_hub: MakeHub, channel: str
) -> None:
    """Subscribers hop from node to node with ``since`` under racing publishes.

    The channel is live on some nodes, unwatched and watched again on others,
    so every path of the watch/replay switch is crossed many times.
    """
    publishers = [await make_hub(), await make_hub()]
    nodes = [await make_hub(), await make_hub()]
    total = 1500
    published = 0

    async def publish_all() -> None:
        nonlocal published
        while published < total:
            published += 1
            await publishers[published % 2].publish(channel, published)

    async def hop(name: int, since: Position) -> list[int]:
        received: list[int] = []
        hops = 0
        while len(received) < total:
            node = nodes[(name + hops) % len(nodes)]
            async with node.subscribe(channel, since=since) as subscription:
                batch = min(37 + name, total - len(received))
                for item in await take(subscription, batch):
                    assert isinstance(item, Event), item
                    received.append(item.offset)
                    since = item.position
            hops += 1
        return received

    start = await publishers[0].position(channel)
    assert start.offset == 0
    async with asyncio.timeout(TIMEOUT * 6):
        results = await asyncio.gather(publish_all(), *(hop(n, start) for n in range(4)))
    for received in results[1:]:
        assert received == list(range(1, total + 1))


async def test_a_read_ahead_of_delivery_fills_from_the_stream(
    backends: list[RedisBackend], channel: str
) -> None:
    """A subscriber joins while Pub/Sub never brings the newest event: no gap, no duplicate."""
    async with (
        Hub(backends[0]) as node_a,
        Hub(backends[1]) as node_b,
        node_b.subscribe(channel) as live,
    ):
        first = await node_a.publish(channel, 1)
        assert offsets(await take(live, 1)) == [1]
        await publish_unannounced(backends[0], channel, 2)
        async with node_b.subscribe(channel, since=Position(first.epoch, 0)) as joining:
            await node_a.publish(channel, 3)
            assert offsets(await take(joining, 3)) == [1, 2, 3]
            assert offsets(await take(live, 2)) == [2, 3]
            await node_a.publish(channel, "marker")
            (marker,) = await take(joining, 1)
            assert marker.data == "marker"  # type: ignore[union-attr]


async def test_one_pubsub_connection_subscribed_only_to_locally_watched_channels(
    backends: list[RedisBackend], redis_client: Any, channel: str
) -> None:
    backend = backends[0]
    name = backend.pubsub_client_name

    async def subscriptions() -> list[int]:
        """Channel subscriptions of each connection carrying the backend's name."""
        return [
            int(entry["sub"])
            for entry in await redis_client.client_list()
            if entry.get("name") == name
        ]

    async def subscribed_to(count: int) -> bool:
        return await subscriptions() == [count]

    names = [f"{channel}-{n}" for n in range(20)]
    async with Hub(backend) as hub:
        first = hub.subscription()
        second = hub.subscription()
        for each in names:
            await first.add(each)
        for each in names[:5]:
            await second.add(each)  # already watched here: no new SUBSCRIBE
        assert await subscriptions() == [20]
        for each in names[:10]:
            first.remove(each)
        await eventually(lambda: subscribed_to(15))  # 5 still have a subscriber
        second.close()
        await eventually(lambda: subscribed_to(10))
        first.close()
        await eventually(lambda: subscribed_to(0))
