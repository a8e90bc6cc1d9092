"""Subscribe, publish, history, presence and channel listing, once for every transport.

The HTTP API, the WebSocket endpoint and the SSE endpoint parse their requests
into the command objects of :mod:`tidings.wire.protocol` and call these
functions; no transport talks to the hub about a client's request by itself.
Every operation runs for a :class:`Caller` (the hub, the authority and the
request's principal) and asks :meth:`Authority.authorize
<tidings.server.auth.Authority.authorize>` first, through :func:`permit`:
the one place that decides whether a client may do it. When the authority
carries hooks (``server/hooks.py``), they run right after it allowed the
operation, here and nowhere else: :func:`connect` for a stream or socket
that opens, :func:`admit` before a read, and :func:`publish` before the
data reaches the hub. Decisions are made
when a request or subscription starts, never per delivered event. Each
answer is one document, the same for an HTTP body and a WebSocket reply,
with event data as :class:`protocol.Raw` so that JSON and MessagePack each
embed it without decoding it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers

from tidings.errors import (
    AlreadySubscribed,
    HookFailed,
    InvalidChannel,
    InvalidCursor,
    ProtocolError,
    TidingsError,
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
from tidings.server.hooks import ConnectContext, PublishContext, SubscribeContext
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
    "admit",
    "channels",
    "client_info",
    "connect",
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

logger = logging.getLogger(__name__)

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
    ``transport`` (``http``, ``sse``, ``ws``) and ``headers`` (the request's
    raw ASGI headers) are what hooks are told; ``info`` is what the
    ``on_connect`` hook returned for the connection.
    """

    hub: Hub
    authority: Authority
    principal: Principal = ANONYMOUS
    peer: str = ""
    gate: PublishGate | None = None
    bucket: TokenBucket | None = None
    transport: str = "http"
    headers: Sequence[tuple[bytes, bytes]] = ()
    info: Any = None

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


async def admit(caller: Caller, action: Action, channel: str) -> str:
    """:func:`permit`, then, for a read (``subscribe``, ``history``, ``presence``),
    the ``on_subscribe`` hook.

    Returns:
        The channel name, validated.

    Raises:
        InvalidChannel, Unauthorized, PermissionDenied: from :func:`permit`.
        Rejected, HookFailed, ProxyUnavailable: the hook refused.
    """
    channel = permit(caller, action, channel)
    hooks = caller.authority.hooks
    if hooks is not None and hooks.on_subscribe is not None:
        await hooks.subscribe(
            SubscribeContext(
                caller.principal,
                caller.peer,
                caller.transport,
                Headers(raw=list(caller.headers)),
                caller.info,
                channel,
                action.value,
            )
        )
    return channel


async def connect(caller: Caller, channels: Sequence[str]) -> Caller:
    """Run the hooks of a stream or socket that opens: ``on_connect``, then
    ``on_subscribe`` for each channel of its URL (authorised already by
    :func:`request_channels`).

    Returns:
        The caller, with the info ``on_connect`` returned.

    Raises:
        Rejected, HookFailed, ProxyUnavailable: a hook refused.
    """
    hooks = caller.authority.hooks
    if hooks is None:
        return caller
    if hooks.on_connect is not None:
        context = ConnectContext(
            caller.principal,
            caller.peer,
            caller.transport,
            Headers(raw=list(caller.headers)),
            tuple(channels),
        )
        info = await hooks.connect(context)
        if info is not None:
            try:
                dumps_kept(info)
            except TypeError as exc:
                logger.error("on_connect hook returned info that is not JSON-serialisable: %s", exc)
                raise HookFailed("on_connect", "it returned info that is not JSON") from None
            caller = dataclasses.replace(caller, info=info)
    if hooks.on_subscribe is not None:
        for channel in channels:
            await admit(caller, Action.SUBSCRIBE, channel)
    return caller


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
        Rejected, HookFailed, ProxyUnavailable: the ``on_subscribe`` hook refused.
        AlreadySubscribed: the subscription has the channel.
        ProtocolError: the subscription has ``max_channels`` channels.
    """
    channel = await admit(caller, Action.SUBSCRIBE, command.channel)
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
    publish never spends a token), then the ``on_publish`` hook may refuse it
    or replace its data (inside the gate: a drain waits for it, and a rate
    limit spares the hook's backend). The gate counts every refusal.

    Raises:
        InvalidChannel, Unauthorized, PermissionDenied: from :func:`permit`.
        RateLimited: a publish rate limit refused it (``retry_after``).
        ShuttingDown: the server is draining.
        Rejected, HookFailed, ProxyUnavailable: the ``on_publish`` hook refused.
        InvalidPublication: a reserved event type, or data too large.
        PublishError: the backend did not publish it.
    """
    try:
        return await _publish(caller, command)
    except TidingsError as exc:
        if caller.gate is not None:
            caller.gate.refuse(exc)
        raise


async def _publish(caller: Caller, command: protocol.Publish) -> dict[str, Any]:
    channel = permit(caller, Action.PUBLISH, command.channel)
    gate = caller.gate
    if gate is not None:
        gate.admit(caller.principal, caller.peer, caller.bucket)
    try:
        hooks = caller.authority.hooks
        if hooks is not None and hooks.on_publish is not None:
            command = await _rewrite(caller, channel, command)
        position = await caller.hub.publish(
            channel, command.data, text=command.text, event=command.event, key=command.key
        )
    finally:
        if gate is not None:
            gate.settle()
    return {"channel": channel, "epoch": position.epoch, "offset": position.offset}


async def _rewrite(caller: Caller, channel: str, command: protocol.Publish) -> protocol.Publish:
    """The publish the ``on_publish`` hook lets through: ``command``, or its data replaced.

    A text publish stays text when the replacement is a string; any other
    replacement is JSON data.

    Raises:
        HookFailed: the replacement is not JSON-serialisable (logged).
    """
    hooks = caller.authority.hooks
    assert hooks is not None
    text = command.text is not None
    replacement = await hooks.publish(
        PublishContext(
            caller.principal,
            caller.peer,
            caller.transport,
            Headers(raw=list(caller.headers)),
            caller.info,
            channel,
            command.event,
            command.text if text else command.data,
            text,
        )
    )
    if replacement is None:
        return command
    if text and isinstance(replacement, str):
        return dataclasses.replace(command, text=replacement)
    try:
        dumps_kept(replacement)
    except TypeError as exc:
        logger.error("on_publish hook returned data that is not JSON-serialisable: %s", exc)
        raise HookFailed("on_publish", "it returned data that is not JSON-serialisable") from None
    return dataclasses.replace(command, data=replacement, text=None)


async def history(
    caller: Caller, command: protocol.History, *, max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
) -> dict[str, Any]:
    """Return a channel's kept events after ``command.since`` (newest ``limit``).

    The answer holds at most ``limit`` events and about ``max_reply_bytes`` of
    them (always one when any is left); ``next`` is the position to read on
    from (``since`` of the next request), ``more`` whether events follow it.

    Raises:
        InvalidChannel, Unauthorized, PermissionDenied: from :func:`permit`.
        Rejected, HookFailed, ProxyUnavailable: the ``on_subscribe`` hook refused.
    """
    channel = await admit(caller, Action.HISTORY, command.channel)
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
        Rejected, HookFailed, ProxyUnavailable: the ``on_subscribe`` hook refused.
    """
    channel = await admit(caller, Action.PRESENCE, command.channel)
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
