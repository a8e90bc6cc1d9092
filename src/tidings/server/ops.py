"""Subscribe, publish, history, presence and channel listing, once for every transport.

The HTTP API, the WebSocket endpoint and the SSE endpoint parse their requests
into the command objects of :mod:`tidings.wire.protocol` and call these
functions; no transport talks to the hub about a client's request by itself.
Every operation runs for a :class:`Caller` (the hub, the authority and the
request's principal) and asks :meth:`Authority.authorize
<tidings.server.auth.Authority.authorize>` first, through :func:`permit`:
the one place that decides whether a client may do it. Decisions are made
when a request or subscription starts, never per delivered event. Each
answer is one document, the same for an HTTP body and a WebSocket reply,
with event data as :class:`protocol.Raw` so that JSON and MessagePack each
embed it without decoding it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tidings.errors import (
    AlreadySubscribed,
    InvalidChannel,
    InvalidCursor,
    ProtocolError,
)
from tidings.hub import (
    ClientInfo,
    Event,
    Hub,
    Reset,
    Subscribed,
    Subscription,
    validate_channel,
)
from tidings.server.auth import ANONYMOUS, Action, Authority, Principal
from tidings.server.rates import PublishGate, TokenBucket
from tidings.settings import DEFAULT_MAX_REPLY_BYTES
from tidings.types import Position
from tidings.wire import protocol
from tidings.wire.codes import ErrorCode
from tidings.wire.json import dumps_kept

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "Action",
    "Caller",
    "channels",
    "client_info",
    "history",
    "history_reply_cost",
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
#: Bytes an event takes in a history answer besides its data and type.
REPLY_EVENT_OVERHEAD = 96


@dataclass(frozen=True, slots=True)
class Caller:
    """Who runs an operation, and against what: the hub, the authority, the principal.

    A transport builds one per request (HTTP) or per connection (SSE,
    WebSocket; a WebSocket ``refresh`` replaces it). ``peer`` is the client's
    address (:meth:`Authority.peer <tidings.server.auth.Authority.peer>`),
    the key of per-client limits; empty when unknown. ``gate`` admits
    publishes (rate limits, draining; None: every publish is admitted) and
    ``bucket`` is the connection's own publish bucket (WebSocket only).
    """

    hub: Hub
    authority: Authority
    principal: Principal = ANONYMOUS
    peer: str = ""
    gate: PublishGate | None = None
    bucket: TokenBucket | None = None

    @classmethod
    def open(cls, hub: Hub) -> Caller:
        """An anonymous caller on a hub with no authentication: the embedded default."""
        return cls(hub, Authority(hub.namespaces))

    def with_principal(self, principal: Principal) -> Caller:
        return dataclasses.replace(self, principal=principal)


def permit(caller: Caller, action: Action, channel: str) -> str:
    """Decide whether ``caller`` may do ``action`` on ``channel``.

    Returns:
        The channel name, validated.

    Raises:
        InvalidChannel: ``channel`` is not a valid name.
        Unauthorized: the action needs an identity the caller does not have.
        PermissionDenied: the caller may not (the namespace or the token forbids it).
    """
    channel = validate_channel(channel)
    caller.authority.authorize(caller.principal, action, channel)
    return channel


def request_channels(caller: Caller, names: Iterable[str], *, max_channels: int) -> list[str]:
    """The channels a connection names in its URL: valid, each once, each permitted.

    Raises:
        InvalidChannel: a name is not valid.
        ProtocolError: more than ``max_channels`` channels.
        Unauthorized, PermissionDenied: a channel may not be subscribed to.
    """
    channels = list(dict.fromkeys(validate_channel(name) for name in names))
    if len(channels) > max_channels:
        raise ProtocolError(f"at most {max_channels} channels per connection")
    for channel in channels:
        permit(caller, Action.SUBSCRIBE, channel)
    return channels


async def subscribe(
    caller: Caller,
    subscription: Subscription,
    command: protocol.Subscribe,
    *,
    max_channels: int,
    notify_reset: bool = True,
    on_live: Callable[[Subscribed], None] | None = None,
) -> Subscribed:
    """Add ``command.channel`` to ``subscription`` (see :meth:`Subscription.add`).

    Raises:
        InvalidChannel, Unauthorized, PermissionDenied: from :func:`permit`.
        AlreadySubscribed: the subscription has the channel.
        ProtocolError: the subscription has ``max_channels`` channels.
    """
    channel = permit(caller, Action.SUBSCRIBE, command.channel)
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


async def publish(caller: Caller, command: protocol.Publish) -> dict[str, Any]:
    """Publish ``command`` and return ``{"channel", "epoch", "offset"}``.

    The caller's gate admits it first (after :func:`permit`, so a refused
    publish never spends a token).

    Raises:
        InvalidChannel, Unauthorized, PermissionDenied: from :func:`permit`.
        RateLimited: a publish rate limit refused it (``retry_after``).
        ShuttingDown: the server is draining.
        InvalidPublication: a reserved event type, or data too large.
        PublishError: the backend did not publish it.
    """
    channel = permit(caller, Action.PUBLISH, command.channel)
    gate = caller.gate
    if gate is None:
        position = await caller.hub.publish(
            channel, command.data, text=command.text, event=command.event, key=command.key
        )
    else:
        gate.admit(caller.principal, caller.peer, caller.bucket)
        try:
            position = await caller.hub.publish(
                channel, command.data, text=command.text, event=command.event, key=command.key
            )
        finally:
            gate.settle()
    return {"channel": channel, "epoch": position.epoch, "offset": position.offset}


async def history(
    caller: Caller, command: protocol.History, *, max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
) -> dict[str, Any]:
    """Return a channel's kept events after ``command.since`` (newest ``limit``).

    The answer holds at most ``limit`` events and about ``max_reply_bytes`` of
    them (always one when any is left); ``next`` is the position to read on
    from (``since`` of the next request), ``more`` whether events follow it.

    Raises:
        InvalidChannel, Unauthorized, PermissionDenied: from :func:`permit`.
    """
    channel = permit(caller, Action.HISTORY, command.channel)
    limit = command.limit if command.limit is not None else DEFAULT_HISTORY_LIMIT
    result = await caller.hub.history(channel, since=command.since, limit=limit)
    events: list[Event] = []
    size = 0
    for event in result.events:
        cost = history_reply_cost(event)
        if events and size + cost > max_reply_bytes:
            break
        size += cost
        events.append(event)
    position, reset = result.position, result.reset
    if reset is not None:
        following = reset.position
    elif events:
        following = Position(events[-1].epoch, events[-1].offset)
    else:
        following = command.since if command.since is not None else position
    more = (
        reset is None and following.epoch == position.epoch and following.offset < position.offset
    )
    return {
        **_history_result(channel, position, events, reset),
        "next": {"epoch": following.epoch, "offset": following.offset},
        "more": more,
    }


def history_reply_cost(event: Event) -> int:
    """About the bytes an event takes in a history answer."""
    return len(event.raw) + len(event.event) + REPLY_EVENT_OVERHEAD


async def presence(
    caller: Caller, command: protocol.Presence, *, max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
) -> dict[str, Any]:
    """Return one page of the clients subscribed to a channel, sorted by client id.

    ``next`` is the ``cursor`` of the next page (None after the last).

    Raises:
        InvalidChannel, Unauthorized, PermissionDenied: from :func:`permit`.
    """
    channel = permit(caller, Action.PRESENCE, command.channel)
    page = await caller.hub.presence_page(
        channel,
        after=command.cursor,
        limit=command.limit or protocol.MAX_PAGE_LIMIT,
        max_bytes=max_reply_bytes,
    )
    return {
        "channel": channel,
        "clients": [
            {"client": client.client_id, "user": client.user_id, "info": client.info}
            for client in page.items
        ],
        "next": page.next,
    }


async def channels(
    caller: Caller,
    *,
    cursor: str | None = None,
    limit: int | None = None,
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
) -> dict[str, Any]:
    """Return one page of the channels with history or subscribers, sorted by name.

    ``next`` is the ``cursor`` of the next page (None after the last).

    Raises:
        InvalidCursor: ``cursor`` is not a channel name.
        Unauthorized, PermissionDenied: listing channels is server-wide; once
            authentication is configured it needs an API key.
    """
    caller.authority.authorize(caller.principal, Action.CHANNELS)
    if cursor:
        try:
            validate_channel(cursor)
        except InvalidChannel:
            raise InvalidCursor(cursor, "not a cursor from a 'next' field") from None
    page = await caller.hub.channels_page(
        after=cursor or None, limit=limit or protocol.MAX_PAGE_LIMIT, max_bytes=max_reply_bytes
    )
    return {
        "channels": [
            {
                "channel": summary.channel,
                "epoch": summary.position.epoch,
                "offset": summary.position.offset,
                "history": summary.history,
                "subscribers": summary.subscribers,
            }
            for summary in page.items
        ],
        "next": page.next,
    }


def client_info(
    client_id: str, user: str | None, command: protocol.Connect, *, max_info_bytes: int
) -> ClientInfo:
    """The presence entry a ``connect`` asks for.

    Raises:
        ProtocolError: ``info`` takes more than ``max_info_bytes`` as JSON (``too_large``).
    """
    size = len(dumps_kept(command.info)) if command.info is not None else 0
    if size > max_info_bytes:
        raise ProtocolError(
            f"presence info of {size} bytes is more than the limit of {max_info_bytes} bytes",
            code=ErrorCode.TOO_LARGE,
        )
    return ClientInfo(client_id, user, command.info)


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
                "event": event.event,
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
