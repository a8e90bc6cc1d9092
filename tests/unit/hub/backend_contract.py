"""The behavioural contract every backend must honour, written once.

A test module imports these tests with ``from tests.unit.hub.backend_contract
import *`` and provides two fixtures:

- ``make_hub(**options)``: an async factory returning a started :class:`Hub`
  on the backend under test (several calls share one backend "cluster", so a
  test can open two hubs as two nodes; a test that opens several passes them
  the same options), cleaned up by the fixture;
- ``advance(seconds)``: an async callable that makes that much backend time pass.

Channel names are unique per test (``channel`` fixture) so that backends with
shared storage (Redis) do not see each other's data.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import pytest

from tests.support.env import TIMEOUT, eventually
from tidings import Event, Hub, NamespaceOptions, Namespaces, Position, Reset
from tidings.hub import ClientInfo
from tidings.hub.subscription import Subscription

__all__ = [
    "channel",
    "test_a_replay_bigger_than_the_outbox_goes_page_by_page",
    "test_a_replay_page_trimmed_meanwhile_is_a_reset",
    "test_concurrent_publishes_get_unique_consecutive_offsets",
    "test_history_limit_returns_newest",
    "test_history_returns_events_in_order",
    "test_history_size_trims_oldest",
    "test_history_ttl_expires_events",
    "test_idempotent_publish_lands_once",
    "test_join_and_leave_reach_members_on_every_node",
    "test_namespace_without_presence_keeps_no_entries",
    "test_position_before_first_publish",
    "test_positions_follow_delivery_on_watched_channels",
    "test_presence_entries_are_listed_until_removed",
    "test_presence_entries_expire_unless_refreshed",
    "test_presence_is_shared_and_released_when_subscriptions_close",
    "test_presence_without_join_leave_sends_no_notices",
    "test_publish_assigns_consecutive_offsets_in_one_epoch",
    "test_read_since_ahead_is_a_reset",
    "test_read_since_current_position_is_empty_and_exact",
    "test_read_since_in_window_is_exact",
    "test_read_since_other_epoch_is_a_reset",
    "test_read_since_outside_the_window_is_a_reset_whatever_the_limit",
    "test_read_since_trimmed_history_is_a_reset",
    "test_replay_then_live_without_gap_or_duplicate_under_racing_publishes",
    "test_subscribe_live_receives_in_order",
    "test_subscribe_since_other_epoch_yields_reset_then_live",
    "test_text_and_json_events_round_trip",
    "test_two_hubs_share_one_stream",
    "test_two_subscribers_both_receive",
    "test_unsubscribed_channel_receives_nothing_more",
]


class MakeHub(Protocol):
    def __call__(self, **options: Any) -> Awaitable[Hub]: ...


Advance = Callable[[float], Awaitable[None]]


@pytest.fixture
def channel() -> str:
    return f"contract:{uuid.uuid4().hex[:12]}"


async def take(subscription: Subscription, count: int) -> list[Event | Reset]:
    items: list[Event | Reset] = []
    async with asyncio.timeout(TIMEOUT):
        while len(items) < count:
            items.append(await anext(subscription))
    return items


def offsets(items: list[Any]) -> list[int]:
    return [item.offset for item in items]


async def test_position_before_first_publish(make_hub: MakeHub, channel: str) -> None:
    hub = await make_hub()
    position = await hub.position(channel)
    assert position.offset == 0
    assert position == await hub.position(channel)  # the epoch is stable


async def test_publish_assigns_consecutive_offsets_in_one_epoch(
    make_hub: MakeHub, channel: str
) -> None:
    hub = await make_hub()
    positions = [await hub.publish(channel, {"n": n}) for n in range(5)]
    assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
    assert len({p.epoch for p in positions}) == 1
    assert await hub.position(channel) == positions[-1]


async def test_concurrent_publishes_get_unique_consecutive_offsets(
    make_hub: MakeHub, channel: str
) -> None:
    node_a, node_b = await make_hub(), await make_hub()
    positions = await asyncio.gather(
        *(node.publish(channel, n) for n in range(100) for node in (node_a, node_b))
    )
    assert sorted(p.offset for p in positions) == list(range(1, 201))


async def test_history_returns_events_in_order(make_hub: MakeHub, channel: str) -> None:
    hub = await make_hub()
    for n in range(10):
        await hub.publish(channel, n)
    history = await hub.history(channel)
    assert offsets(history.events) == list(range(1, 11))
    assert [event.data for event in history.events] == list(range(10))
    assert history.reset is None
    assert history.position.offset == 10


async def test_history_limit_returns_newest(make_hub: MakeHub, channel: str) -> None:
    hub = await make_hub()
    for n in range(10):
        await hub.publish(channel, n)
    assert offsets((await hub.history(channel, limit=3)).events) == [8, 9, 10]
    assert (await hub.history(channel, limit=0)).events == []


async def test_read_since_in_window_is_exact(make_hub: MakeHub, channel: str) -> None:
    hub = await make_hub()
    first = await hub.publish(channel, 0)
    for n in range(1, 6):
        await hub.publish(channel, n)
    history = await hub.history(channel, since=Position(first.epoch, 2))
    assert offsets(history.events) == [3, 4, 5, 6]
    assert history.reset is None
    assert offsets((await hub.history(channel, since=Position(first.epoch, 0))).events) == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert offsets(
        (await hub.history(channel, since=Position(first.epoch, 2), limit=2)).events
    ) == [
        3,
        4,
    ]


async def test_read_since_current_position_is_empty_and_exact(
    make_hub: MakeHub, channel: str
) -> None:
    hub = await make_hub()
    position = await hub.publish(channel, 1)
    history = await hub.history(channel, since=position)
    assert history.events == []
    assert history.reset is None


async def test_read_since_other_epoch_is_a_reset(make_hub: MakeHub, channel: str) -> None:
    hub = await make_hub()
    await hub.publish(channel, 1)
    history = await hub.history(channel, since=Position("otherepoch", 1))
    assert history.events == []
    assert history.reset is not None
    assert history.reset.reason == "epoch"
    assert history.reset.position == history.position


async def test_read_since_ahead_is_a_reset(make_hub: MakeHub, channel: str) -> None:
    hub = await make_hub()
    position = await hub.publish(channel, 1)
    history = await hub.history(channel, since=Position(position.epoch, 5))
    assert history.reset is not None
    assert history.reset.reason == "window"


async def test_read_since_outside_the_window_is_a_reset_whatever_the_limit(
    make_hub: MakeHub, channel: str
) -> None:
    namespace = channel.partition(":")[0]
    hub = await make_hub(
        namespaces=Namespaces(by_name={namespace: NamespaceOptions(history_size=2)})
    )
    for n in range(5):
        position = await hub.publish(channel, n)
    for limit in (0, 1, None):
        history = await hub.history(channel, since=Position(position.epoch, 1), limit=limit)
        assert history.reset is not None, limit
        assert history.reset.reason == "window"
        assert history.events == []
    within = await hub.history(channel, since=Position(position.epoch, 3), limit=0)
    assert (within.reset, within.events) == (None, [])


async def test_history_size_trims_oldest(make_hub: MakeHub, channel: str) -> None:
    namespace = channel.partition(":")[0]
    hub = await make_hub(
        namespaces=Namespaces(by_name={namespace: NamespaceOptions(history_size=3)})
    )
    for n in range(6):
        position = await hub.publish(channel, n)
    assert offsets((await hub.history(channel)).events) == [4, 5, 6]
    # Since 3 still works (4 is the oldest kept); since 2 lost event 3.
    assert offsets((await hub.history(channel, since=Position(position.epoch, 3))).events) == [
        4,
        5,
        6,
    ]


async def test_read_since_trimmed_history_is_a_reset(make_hub: MakeHub, channel: str) -> None:
    namespace = channel.partition(":")[0]
    hub = await make_hub(
        namespaces=Namespaces(by_name={namespace: NamespaceOptions(history_size=3)})
    )
    for n in range(6):
        position = await hub.publish(channel, n)
    history = await hub.history(channel, since=Position(position.epoch, 2))
    assert history.events == []
    assert history.reset is not None
    assert history.reset.reason == "window"
    assert history.reset.position == position


async def test_history_ttl_expires_events(
    make_hub: MakeHub, advance: Advance, channel: str
) -> None:
    namespace = channel.partition(":")[0]
    hub = await make_hub(
        namespaces=Namespaces(by_name={namespace: NamespaceOptions(history_ttl=1.0)})
    )
    first = await hub.publish(channel, "old")
    await advance(1.5)
    await hub.publish(channel, "new")
    history = await hub.history(channel)
    assert [event.data for event in history.events] == ["new"]
    # Resuming from before the expired event cannot be exact any more ...
    assert (await hub.history(channel, since=Position(first.epoch, 0))).reset is not None
    # ... but resuming from right after it still is.
    assert offsets((await hub.history(channel, since=first)).events) == [2]


async def test_idempotent_publish_lands_once(make_hub: MakeHub, channel: str) -> None:
    node_a, node_b = await make_hub(), await make_hub()
    first = await node_a.publish(channel, {"n": 1}, key="k-1")
    again = await node_b.publish(channel, {"n": 1}, key="k-1")
    other = await node_a.publish(channel, {"n": 2}, key="k-2")
    assert again == first
    assert other.offset == first.offset + 1
    assert offsets((await node_a.history(channel)).events) == [1, 2]


async def test_text_and_json_events_round_trip(make_hub: MakeHub, channel: str) -> None:
    hub = await make_hub()
    await hub.publish(channel, {"a": [1, 2.5, None, "é"]}, event="update")
    await hub.publish(channel, text="line 1\nline 2 ☃")
    events = (await hub.history(channel)).events
    assert events[0].data == {"a": [1, 2.5, None, "é"]}
    assert events[0].event == "update"
    assert not events[0].is_text
    assert events[1].data == "line 1\nline 2 ☃"
    assert events[1].is_text
    assert events[1].event == "message"


async def test_subscribe_live_receives_in_order(make_hub: MakeHub, channel: str) -> None:
    hub = await make_hub()
    async with hub.subscribe(channel) as subscription:
        for n in range(20):
            await hub.publish(channel, n)
        items = await take(subscription, 20)
    assert [item.data for item in items] == list(range(20))  # type: ignore[union-attr]
    assert offsets(items) == list(range(1, 21))


async def test_two_subscribers_both_receive(make_hub: MakeHub, channel: str) -> None:
    hub = await make_hub()
    async with hub.subscribe(channel) as one, hub.subscribe(channel) as two:
        for n in range(5):
            await hub.publish(channel, n)
        assert offsets(await take(one, 5)) == [1, 2, 3, 4, 5]
        assert offsets(await take(two, 5)) == [1, 2, 3, 4, 5]


async def test_two_hubs_share_one_stream(make_hub: MakeHub, channel: str) -> None:
    node_a, node_b = await make_hub(), await make_hub()
    async with node_b.subscribe(channel) as subscription:
        for n in range(5):
            await (node_a if n % 2 else node_b).publish(channel, n)
        items = await take(subscription, 5)
    assert offsets(items) == [1, 2, 3, 4, 5]


async def test_unsubscribed_channel_receives_nothing_more(make_hub: MakeHub, channel: str) -> None:
    hub = await make_hub()
    other = channel + "-other"
    async with hub.subscribe(channel, other) as subscription:
        await hub.publish(channel, 1)
        assert offsets(await take(subscription, 1)) == [1]
        assert subscription.remove(channel)
        assert not subscription.remove(channel)
        await hub.publish(channel, 2)
        await hub.publish(other, 3)  # a marker: everything before it has been fanned out
        (marker,) = await take(subscription, 1)
        assert isinstance(marker, Event)
        assert marker.channel == other
    assert hub.subscriber_count(channel) == 0


async def test_subscribe_since_other_epoch_yields_reset_then_live(
    make_hub: MakeHub, channel: str
) -> None:
    hub = await make_hub()
    await hub.publish(channel, "before")
    async with hub.subscribe(channel, since=Position("gone", 7)) as subscription:
        await hub.publish(channel, "after")
        reset, event = await take(subscription, 2)
    assert isinstance(reset, Reset)
    assert reset.reason == "epoch"
    assert reset.position.offset == 1
    assert isinstance(event, Event)
    assert event.data == "after"


async def test_replay_then_live_without_gap_or_duplicate_under_racing_publishes(
    make_hub: MakeHub, channel: str
) -> None:
    """Subscribers join with ``since`` while two nodes publish as fast as they can."""
    publisher_a, publisher_b, subscriber_node = await make_hub(), await make_hub(), await make_hub()
    total = 400
    start = await publisher_a.publish(channel, -1)
    published = 1
    stop_at = total + 1

    async def publish_many(node: Hub) -> None:
        nonlocal published
        while published < stop_at:
            published += 1
            await node.publish(channel, published)
            await asyncio.sleep(0)

    async def join_and_read(delay: int) -> list[int]:
        for _ in range(delay):
            await asyncio.sleep(0)
        async with subscriber_node.subscribe(channel, since=start) as subscription:
            items = await take(subscription, total)
        assert all(isinstance(item, Event) for item in items)
        return offsets(items)

    async with asyncio.timeout(TIMEOUT * 4):
        results = await asyncio.gather(
            publish_many(publisher_a),
            publish_many(publisher_b),
            *(join_and_read(delay) for delay in (0, 3, 17, 60, 150)),
        )
    for received in results[2:]:
        assert received == list(range(start.offset + 1, start.offset + 1 + total))


async def test_a_replay_bigger_than_the_outbox_goes_page_by_page(
    make_hub: MakeHub, channel: str
) -> None:
    """A replay of many pages, forty times the outbox, read as the subscriber drains
    while another node publishes: then live, with no gap and no duplicate."""
    publisher, subscriber_node = (
        await make_hub(outbox_max_bytes=4096),
        await make_hub(outbox_max_bytes=4096),
    )
    start = await publisher.publish(channel, -1)
    pad = "x" * 200
    for n in range(500):
        await publisher.publish(channel, {"n": n, "pad": pad})

    async def publish_more() -> None:
        for n in range(500, 700):
            await publisher.publish(channel, {"n": n, "pad": pad})
            await asyncio.sleep(0)

    async with subscriber_node.subscribe(channel, since=start) as subscription:
        async with asyncio.timeout(TIMEOUT * 2):
            items, _ = await asyncio.gather(take(subscription, 700), publish_more())
    assert offsets(items) == list(range(start.offset + 1, start.offset + 701))
    assert subscriber_node.stats().slow_consumers == 0


async def test_a_replay_page_trimmed_meanwhile_is_a_reset(make_hub: MakeHub, channel: str) -> None:
    namespace = channel.partition(":")[0]
    hub = await make_hub(
        outbox_max_bytes=4096,
        namespaces=Namespaces(by_name={namespace: NamespaceOptions(history_size=300)}),
    )
    start = await hub.publish(channel, 0)
    for n in range(1, 300):
        await hub.publish(channel, n)
    async with hub.subscribe(channel, since=Position(start.epoch, 0)) as subscription:
        for n in range(300, 600):  # the subscriber reads nothing meanwhile
            position = await hub.publish(channel, n)
        items = await take(subscription, 129)
        first, reset = items[:-1], items[-1]
        assert offsets(first) == list(range(1, 129))  # the first page, read before the trim
        assert isinstance(reset, Reset)
        assert reset.reason == "window"
        assert reset.position == position
        live = await hub.publish(channel, "live")
        (item,) = await take(subscription, 1)
    assert isinstance(item, Event)
    assert item.position == live


# -- presence ------------------------------------------------------------------------


def payload(client_id: str) -> bytes:
    return ClientInfo(client_id).payload()


async def test_presence_entries_are_listed_until_removed(make_hub: MakeHub, channel: str) -> None:
    backend = (await make_hub()).backend
    assert await backend.presence(channel) == {}
    await backend.presence_add(channel, "c1", payload("c1"), ttl=60)
    await backend.presence_add(channel, "c2", payload("c2"), ttl=60)
    await backend.presence_add(channel, "c1", payload("c1"), ttl=60)  # a refresh
    assert await backend.presence(channel) == {"c1": payload("c1"), "c2": payload("c2")}
    await backend.presence_remove(channel, "c1")
    await backend.presence_remove(channel, "c1")  # gone already: nothing happens
    await backend.presence_remove(channel + "-other", "c2")
    assert await backend.presence(channel) == {"c2": payload("c2")}


async def test_presence_entries_expire_unless_refreshed(
    make_hub: MakeHub, advance: Advance, channel: str
) -> None:
    backend = (await make_hub()).backend
    await backend.presence_add(channel, "kept", payload("kept"), ttl=2.0)
    await backend.presence_add(channel, "lost", payload("lost"), ttl=2.0)
    await advance(1.2)
    await backend.presence_add(channel, "kept", payload("kept"), ttl=2.0)
    await advance(1.2)
    assert list(await backend.presence(channel)) == ["kept"]
    await advance(2.5)
    assert await backend.presence(channel) == {}


def join_leave(channel: str) -> Namespaces:
    namespace = channel.partition(":")[0]
    return Namespaces(by_name={namespace: NamespaceOptions(join_leave=True)})


async def notices(subscription: Subscription, count: int) -> list[tuple[str, str]]:
    """The next ``count`` join/leave notices as (type, client id)."""
    found = []
    async with asyncio.timeout(TIMEOUT):
        while len(found) < count:
            item = await anext(subscription)
            if isinstance(item, Event) and item.event in ("join", "leave"):
                assert item.offset == 0
                found.append((item.event, item.data["client"]))
    return found


async def test_join_and_leave_reach_members_on_every_node(make_hub: MakeHub, channel: str) -> None:
    node_a = await make_hub(namespaces=join_leave(channel))
    node_b = await make_hub(namespaces=join_leave(channel))
    async with (
        node_b.subscribe(channel) as anonymous,  # no client: not a member
        node_b.subscription(client=ClientInfo("watcher")) as watcher,
    ):
        await watcher.add(channel)
        assert await notices(watcher, 1) == [("join", "watcher")]
        member = node_a.subscription(client=ClientInfo("ada", "u1", {"name": "Ada"}))
        await member.add(channel)
        assert await notices(watcher, 1) == [("join", "ada")]
        clients = {client.client_id: client for client in await node_b.presence(channel)}
        assert clients["ada"] == ClientInfo("ada", "u1", {"name": "Ada"})
        assert set(clients) == {"watcher", "ada"}
        member.close()
        assert await notices(watcher, 1) == [("leave", "ada")]
        assert [client.client_id for client in await node_a.presence(channel)] == ["watcher"]
        await node_a.publish(channel, "marker")
        (item,) = await take(anonymous, 1)
        assert isinstance(item, Event)
        assert item.data == "marker"  # no join or leave reached the anonymous subscription


async def test_presence_without_join_leave_sends_no_notices(
    make_hub: MakeHub, channel: str
) -> None:
    hub = await make_hub()
    async with hub.subscription(client=ClientInfo("one")) as one:
        await one.add(channel)
        async with hub.subscription(client=ClientInfo("two")) as two:
            await two.add(channel)
            assert {client.client_id for client in await hub.presence(channel)} == {"one", "two"}
        await hub.publish(channel, "marker")
        (item,) = await take(one, 1)
        assert isinstance(item, Event)
        assert item.data == "marker"


async def test_presence_is_shared_and_released_when_subscriptions_close(
    make_hub: MakeHub, channel: str
) -> None:
    node_a, node_b = await make_hub(), await make_hub()
    other = channel + "-b"
    subscription = node_a.subscription(client=ClientInfo("c1"))
    await subscription.add(channel)
    await subscription.add(other)
    assert [client.client_id for client in await node_b.presence(other)] == ["c1"]
    assert subscription.remove(channel)

    # Removal is asynchronous (the hub's presence task): ask until it shows.
    await eventually(lambda: released(node_b, channel))
    subscription.close()
    await eventually(lambda: released(node_b, other))


async def released(hub: Hub, channel: str) -> bool:
    return not await hub.presence(channel)


async def test_namespace_without_presence_keeps_no_entries(make_hub: MakeHub, channel: str) -> None:
    namespace = channel.partition(":")[0]
    hub = await make_hub(
        namespaces=Namespaces(by_name={namespace: NamespaceOptions(presence=False)})
    )
    async with hub.subscription(client=ClientInfo("c1")) as subscription:
        await subscription.add(channel)
        assert await hub.presence(channel) == []


async def test_positions_follow_delivery_on_watched_channels(
    make_hub: MakeHub, channel: str
) -> None:
    hub = await make_hub()
    assert channel not in hub.positions()
    async with hub.subscribe(channel) as subscription:
        for n in range(3):
            await hub.publish(channel, n)
        items = await take(subscription, 3)
        epoch = items[-1].epoch  # type: ignore[union-attr]
        assert hub.positions()[channel] == Position(epoch, 3)
    await eventually(lambda: channel not in hub.positions())
