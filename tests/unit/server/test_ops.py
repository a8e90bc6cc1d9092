"""server/ops.py driven directly against a memory hub: results, refusals, namespace rules."""

from __future__ import annotations

import orjson
import pytest

from tidings.errors import (
    AlreadySubscribed,
    InvalidChannel,
    InvalidPublication,
    PermissionDenied,
    ProtocolError,
)
from tidings.hub import ClientInfo, Hub, Subscribed
from tidings.server import ops
from tidings.server.auth import GRANTS
from tidings.server.ops import Action, Caller
from tidings.types import Position
from tidings.wire import protocol
from tidings.wire.protocol import Format


def as_json(document: object) -> object:
    """A result as a client reads it (event data is embedded as protocol.Raw)."""
    return orjson.loads(protocol.encode_message(document, Format.JSON))


# -- the one decision -------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "channel", "allowed"),
    [
        (Action.SUBSCRIBE, "a", True),
        (Action.PUBLISH, "a", True),
        (Action.HISTORY, "a", True),
        (Action.PRESENCE, "a", True),
        (Action.PUBLISH, "ro:x", False),
        (Action.SUBSCRIBE, "ro:x", True),
        (Action.SUBSCRIBE, "hidden:x", False),
        (Action.HISTORY, "hidden:x", False),
        (Action.PUBLISH, "hidden:x", True),
        (Action.PRESENCE, "quiet:x", False),
        (Action.SUBSCRIBE, "quiet:x", True),
    ],
)
def test_permit_follows_the_namespace_options(
    hub: Hub, action: Action, channel: str, allowed: bool
) -> None:
    if allowed:
        assert ops.permit(Caller.open(hub), action, channel) == channel
    else:
        with pytest.raises(PermissionDenied) as caught:
            ops.permit(Caller.open(hub), action, channel)
        assert (caught.value.channel, caught.value.action) == (channel, action.value)
        assert str(caught.value) == f"{action.value} is not allowed on channel {channel!r}"


def test_permit_validates_the_name_first(hub: Hub) -> None:
    with pytest.raises(InvalidChannel):
        ops.permit(Caller.open(hub), Action.PUBLISH, "hidden:a b")


async def test_without_namespace_settings_everything_is_allowed() -> None:
    async with Hub() as hub:
        for action in GRANTS:
            assert ops.permit(Caller.open(hub), action, "any:thing") == "any:thing"


# -- publish ----------------------------------------------------------------------


async def test_publish_returns_the_position(hub: Hub) -> None:
    first = await ops.publish(Caller.open(hub), protocol.Publish(1, "a", {"n": 1}))
    second = await ops.publish(Caller.open(hub), protocol.Publish(2, "a", text="two", event="note"))
    position = await hub.position("a")
    assert first == {"channel": "a", "epoch": position.epoch, "offset": 1}
    assert second["offset"] == 2


async def test_publish_with_a_key_publishes_once(hub: Hub) -> None:
    command = protocol.Publish(None, "a", 1, key="k")
    assert await ops.publish(Caller.open(hub), command) == await ops.publish(
        Caller.open(hub), command
    )
    assert (await hub.position("a")).offset == 1


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (protocol.Publish(None, "ro:x", 1), PermissionDenied),
        (protocol.Publish(None, "a b", 1), InvalidChannel),
        (protocol.Publish(None, "a", 1, event="reset"), InvalidPublication),
    ],
)
async def test_refused_publishes_publish_nothing(
    hub: Hub, command: protocol.Publish, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await ops.publish(Caller.open(hub), command)
    assert hub.stats().published == 0


# -- history ----------------------------------------------------------------------


async def test_history_embeds_data_as_published(hub: Hub) -> None:
    first = await hub.publish("h", {"n": 1})
    await hub.publish("h", text="two")
    result = as_json(await ops.history(Caller.open(hub), protocol.History(None, "h")))
    assert isinstance(result, dict)
    assert (result["channel"], result["epoch"], result["offset"]) == ("h", first.epoch, 2)
    assert result["reset"] is None
    assert [(e["offset"], e["data"], e.get("text", False)) for e in result["events"]] == [
        (1, {"n": 1}, False),
        (2, "two", True),
    ]


async def test_history_since_limit_and_reset(hub: Hub) -> None:
    first = await hub.publish("h", 1)
    for n in range(2, 5):
        await hub.publish("h", n)
    since = await ops.history(
        Caller.open(hub), protocol.History(None, "h", Position(first.epoch, 2))
    )
    assert [event["offset"] for event in since["events"]] == [3, 4]
    newest = await ops.history(Caller.open(hub), protocol.History(None, "h", limit=1))
    assert [event["offset"] for event in newest["events"]] == [4]
    stale = await ops.history(Caller.open(hub), protocol.History(None, "h", Position("other", 3)))
    assert stale["events"] == []
    assert stale["reset"] == {"epoch": first.epoch, "offset": 4, "reason": "epoch"}


async def test_history_default_limit(hub: Hub) -> None:
    for n in range(ops.DEFAULT_HISTORY_LIMIT + 5):
        await hub.publish("h", n)
    result = await ops.history(Caller.open(hub), protocol.History(None, "h"))
    assert len(result["events"]) == ops.DEFAULT_HISTORY_LIMIT


async def test_history_is_refused_where_subscribing_is(hub: Hub) -> None:
    with pytest.raises(PermissionDenied) as caught:
        await ops.history(Caller.open(hub), protocol.History(None, "hidden:x"))
    assert caught.value.action == "history"


# -- presence and channels ----------------------------------------------------------


async def test_presence_lists_member_subscriptions(hub: Hub) -> None:
    assert await ops.presence(Caller.open(hub), protocol.Presence(None, "room")) == {
        "channel": "room",
        "clients": [],
        "next": None,
    }
    async with hub.subscription(client=ClientInfo("c1", "u1", {"name": "ada"})) as member:
        await member.add("room")
        result = await ops.presence(Caller.open(hub), protocol.Presence(None, "room"))
    assert result["clients"] == [{"client": "c1", "user": "u1", "info": {"name": "ada"}}]
    with pytest.raises(PermissionDenied):
        await ops.presence(Caller.open(hub), protocol.Presence(None, "quiet:x"))
    with pytest.raises(InvalidChannel):
        await ops.presence(Caller.open(hub), protocol.Presence(None, "a b"))


async def test_channels_lists_where_each_channel_stands(hub: Hub) -> None:
    await hub.publish("z", 1)
    position = await hub.publish("y", 1)
    result = await ops.channels(Caller.open(hub))
    assert result["channels"][0] == {
        "channel": "y",
        "epoch": position.epoch,
        "offset": 1,
        "history": 1,
        "subscribers": 0,
    }
    assert [summary["channel"] for summary in result["channels"]] == ["y", "z"]


# -- subscribe and unsubscribe ------------------------------------------------------------


async def test_subscribe_answers_before_the_replay(hub: Hub) -> None:
    first = await hub.publish("s", 1)
    await hub.publish("s", 2)
    answers: list[Subscribed] = []
    async with hub.subscription() as subscription:
        command = protocol.Subscribe(1, "s", Position(first.epoch, 1))
        subscribed = await ops.subscribe(
            Caller.open(hub), subscription, command, max_channels=4, on_live=answers.append
        )
        assert answers == [subscribed]
        assert [item.offset for item in subscription.take()] == [2]
    assert ops.subscribed_result(subscribed) == {
        "channel": "s",
        "epoch": first.epoch,
        "offset": 2,
        "recovered": True,
        "replayed": 1,
    }


async def test_subscribe_refusals(hub: Hub) -> None:
    async with hub.subscription() as subscription:
        await ops.subscribe(
            Caller.open(hub), subscription, protocol.Subscribe(None, "a"), max_channels=2
        )
        with pytest.raises(AlreadySubscribed) as caught:
            await ops.subscribe(
                Caller.open(hub), subscription, protocol.Subscribe(None, "a"), max_channels=2
            )
        assert caught.value.channel == "a"
        with pytest.raises(PermissionDenied) as denied:
            await ops.subscribe(
                Caller.open(hub), subscription, protocol.Subscribe(None, "hidden:x"), max_channels=2
            )
        assert denied.value.action == "subscribe"
        await ops.subscribe(
            Caller.open(hub), subscription, protocol.Subscribe(None, "b"), max_channels=2
        )
        with pytest.raises(ProtocolError, match="at most 2 channels"):
            await ops.subscribe(
                Caller.open(hub), subscription, protocol.Subscribe(None, "c"), max_channels=2
            )
        # A channel it has is "already subscribed", even at the limit.
        with pytest.raises(AlreadySubscribed):
            await ops.subscribe(
                Caller.open(hub), subscription, protocol.Subscribe(None, "b"), max_channels=2
            )
        assert set(subscription.channels) == {"a", "b"}


async def test_unsubscribe(hub: Hub) -> None:
    async with hub.subscription() as subscription:
        await subscription.add("a")
        assert ops.unsubscribe(subscription, protocol.Unsubscribe(None, "a")) == {"channel": "a"}
        with pytest.raises(ProtocolError) as caught:
            ops.unsubscribe(subscription, protocol.Unsubscribe(None, "a"))
        assert caught.value.code == "not_subscribed"


def test_request_channels(hub: Hub) -> None:
    assert ops.request_channels(Caller.open(hub), ["a", "b", "a"], max_channels=2) == ["a", "b"]
    with pytest.raises(ProtocolError, match="at most 1 channels"):
        ops.request_channels(Caller.open(hub), ["a", "b"], max_channels=1)
    with pytest.raises(PermissionDenied):
        ops.request_channels(Caller.open(hub), ["a", "hidden:x"], max_channels=4)
    with pytest.raises(InvalidChannel):
        ops.request_channels(Caller.open(hub), ["hidden:x", "a b"], max_channels=4)
