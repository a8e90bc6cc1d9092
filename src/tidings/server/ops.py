"""Subscribe, publish, history, presence and channel listing, once for every transport.

The HTTP API, the WebSocket endpoint and the SSE endpoint parse their requests
into the command objects of :mod:`tidings.wire.protocol` and call these
functions; no transport talks to the hub about a client's request by itself.
Every operation on a channel asks :func:`permit` first, the one place that
decides whether a client may do it. Each answer is one document, the same for
an HTTP body and a WebSocket reply, with event data as :class:`protocol.Raw`
so that JSON and MessagePack each embed it without decoding it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any

from tidings.errors import AlreadySubscribed, PermissionDenied, ProtocolError
from tidings.hub import (
    Event,
    Hub,
    NamespaceOptions,
    Reset,
    Subscribed,
    Subscription,
    validate_channel,
)
from tidings.types import Position
from tidings.wire import protocol
from tidings.wire.codes import ErrorCode

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "Action",
    "channels",
    "history",
    "permit",
    "presence",
    "publish",
    "request_channels",
    "subscribe",
    "subscribed_result",
    "unsubscribe",
]

#: Events a history request returns when it names no limit.
DEFAULT_HISTORY_LIMIT = 100


class Action(StrEnum):
    """What a client asks to do on a channel; the value names it in a refusal."""

    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"
    HISTORY = "history"
    PRESENCE = "presence"


#: Which namespace option allows each action.
_ALLOWED: dict[Action, Callable[[NamespaceOptions], bool]] = {
    Action.SUBSCRIBE: lambda options: options.subscribe,
    Action.HISTORY: lambda options: options.subscribe,
    Action.PUBLISH: lambda options: options.publish is not False,
    Action.PRESENCE: lambda options: options.presence,
}


def permit(hub: Hub, action: Action, channel: str) -> str:
    """Decide whether a client may do ``action`` on ``channel``.

    Returns:
        The channel name, validated.

    Raises:
        InvalidChannel: ``channel`` is not a valid name.
        PermissionDenied: the channel's namespace forbids ``action``.
    """
    channel = validate_channel(channel)
    if not _ALLOWED[action](hub.options(channel)):
        raise PermissionDenied(channel, action.value)
    return channel


def request_channels(hub: Hub, names: Iterable[str], *, max_channels: int) -> list[str]:
    """The channels a connection names in its URL: valid, each once, each permitted.

    Raises:
        InvalidChannel: a name is not valid.
        ProtocolError: more than ``max_channels`` channels.
        PermissionDenied: a channel may not be subscribed to.
    """
    channels = list(dict.fromkeys(validate_channel(name) for name in names))
    if len(channels) > max_channels:
        raise ProtocolError(f"at most {max_channels} channels per connection")
    for channel in channels:
        permit(hub, Action.SUBSCRIBE, channel)
    return channels


async def subscribe(
    hub: Hub,
    subscription: Subscription,
    command: protocol.Subscribe,
    *,
    max_channels: int,
    notify_reset: bool = True,
    on_live: Callable[[Subscribed], None] | None = None,
) -> Subscribed:
    """Add ``command.channel`` to ``subscription`` (see :meth:`Subscription.add`).

    Raises:
        InvalidChannel, PermissionDenied: from :func:`permit`.
        AlreadySubscribed: the subscription has the channel.
        ProtocolError: the subscription has ``max_channels`` channels.
    """
    channel = permit(hub, Action.SUBSCRIBE, command.channel)
    if channel in subscription.channels:
        raise AlreadySubscribed(channel)
    if len(subscription.channels) >= max_channels:
        raise ProtocolError(f"at most {max_channels} channels per connection")
    return await subscription.add(
        channel, since=command.since, notify_reset=notify_reset, on_live=on_live
    )


def unsubscribe(subscription: Subscription, command: protocol.Unsubscribe) -> dict[str, Any]:
    """Remove ``command.channel`` from ``subscription``.

    Raises:
        InvalidChannel: not a valid name.
        ProtocolError: the subscription does not have the channel (``not_subscribed``).
    """
    channel = validate_channel(command.channel)
    if not subscription.remove(channel):
        raise ProtocolError(f"not subscribed to {channel!r}", code=ErrorCode.NOT_SUBSCRIBED)
    return {"channel": channel}


async def publish(hub: Hub, command: protocol.Publish) -> dict[str, Any]:
    """Publish ``command`` and return ``{"channel", "epoch", "offset"}``.

    Raises:
        InvalidChannel, PermissionDenied: from :func:`permit`.
        InvalidPublication: a reserved event type, or data too large.
        PublishError: the backend did not publish it.
    """
    channel = permit(hub, Action.PUBLISH, command.channel)
    position = await hub.publish(
        channel, command.data, text=command.text, event=command.event, key=command.key
    )
    return {"channel": channel, "epoch": position.epoch, "offset": position.offset}


async def history(hub: Hub, command: protocol.History) -> dict[str, Any]:
    """Return a channel's kept events after ``command.since`` (newest ``limit``).

    Raises:
        InvalidChannel, PermissionDenied: from :func:`permit`.
    """
    channel = permit(hub, Action.HISTORY, command.channel)
    limit = command.limit if command.limit is not None else DEFAULT_HISTORY_LIMIT
    result = await hub.history(channel, since=command.since, limit=limit)
    return _history_result(channel, result.position, result.events, result.reset)


async def presence(hub: Hub, command: protocol.Presence) -> dict[str, Any]:
    """Return the clients subscribed to a channel.

    Raises:
        InvalidChannel, PermissionDenied: from :func:`permit`.
    """
    channel = permit(hub, Action.PRESENCE, command.channel)
    clients = await hub.presence(channel)
    return {
        "channel": channel,
        "clients": [
            {"client": client.client_id, "user": client.user_id, "info": client.info}
            for client in clients
        ],
    }


async def channels(hub: Hub) -> dict[str, Any]:
    """Return the channels with history or subscribers, and where each stands."""
    summaries = await hub.channels()
    return {
        "channels": [
            {
                "channel": summary.channel,
                "epoch": summary.position.epoch,
                "offset": summary.position.offset,
                "history": summary.history,
                "subscribers": summary.subscribers,
            }
            for summary in summaries
        ]
    }


def subscribed_result(subscribed: Subscribed) -> dict[str, Any]:
    """The answer to a subscribe: where the channel stands and what was replayed."""
    result: dict[str, Any] = {
        "channel": subscribed.channel,
        "epoch": subscribed.position.epoch,
        "offset": subscribed.position.offset,
        "recovered": subscribed.recovered,
        "replayed": subscribed.replayed,
    }
    if subscribed.reset is not None:
        result["reset"] = subscribed.reset.reason
    return result


def _history_result(
    channel: str, position: Position, events: list[Event], reset: Reset | None
) -> dict[str, Any]:
    return {
        "channel": channel,
        "epoch": position.epoch,
        "offset": position.offset,
        "events": [
            {
                "epoch": event.epoch,
                "offset": event.offset,
                "event": event.type,
                "time": event.time,
                "data": protocol.Raw(event.raw, event.is_text),
                **({"text": True} if event.is_text else {}),
            }
            for event in events
        ],
        "reset": None
        if reset is None
        else {
            "epoch": reset.position.epoch,
            "offset": reset.position.offset,
            "reason": reset.reason,
        },
    }
