"""``GET /api/stream/{channel}?since=…``: a channel as newline-delimited JSON.

Each line is the document a WebSocket client gets as a push (the same cached
bytes, ``server/_ws_codec.py``)::

    {"channel": "orders", "epoch": "k2j4m7qa", "offset": 18, "event": "message", "data": {"id": 7}}

With ``since`` (``epoch:offset`` or a cursor naming the channel, as for
``/api/history``) the events after it come first, from history, then the
live ones, with no gap and no duplicate; a position the history cannot
honour gives a ``"event":"reset"`` line first. Without it the stream starts
live.

The request is admitted as a subscribe (``server/ops.py``: ``authorize()``,
then the ``on_subscribe`` hook) before anything is sent. The stream is a
:class:`~tidings.server.pump.Pump` over the subscription's batches: nothing
is taken from the subscription while the client does not read, so a slow
client fills its bounded outbox
(``outbox_max_bytes``) and, under the ``disconnect`` policy, is cut off
without the response's last chunk; it resumes with ``since`` set to the last
line's position. It holds a connection slot (``max_connections``) for its
whole life, and ends cleanly (last chunk) when the server stops.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from tidings.errors import TidingsError
from tidings.hub import Hub, Item, OverflowPolicy, Subscription
from tidings.hub.subscription import CloseReason
from tidings.server import ops
from tidings.server._ws_codec import WS_JSON
from tidings.server.api import parse_since
from tidings.server.auth import Action, Authority
from tidings.server.connections import Connections
from tidings.server.errors import error_response
from tidings.server.logs import log_closed
from tidings.server.pump import Pump
from tidings.server.streams import NDJSON_HEADERS, ndjson_error
from tidings.types import Position

__all__ = ["ChannelStream"]

#: Numbers channel streams for their log lines (``stream-1``, ``stream-2`` …).
_connection_ids = itertools.count(1)


def _encode(items: list[Item]) -> bytes:
    return b"".join([WS_JSON(item) + b"\n" for item in items])


async def _batches(subscription: Subscription) -> AsyncIterator[list[Item]]:
    """Everything queued in ``subscription``, a batch at a time, until it closes."""
    while True:
        await subscription.wait()
        items = subscription.take()
        if items:
            yield items
        elif subscription.closed:
            return


class _Listed:
    """One open stream as the app's registry lists it (``server/connections.py``)."""

    __slots__ = ("id", "opened_at", "peer", "subscription")

    transport = "stream"

    def __init__(self, peer: str, subscription: Subscription) -> None:
        self.id = f"stream-{next(_connection_ids)}"
        self.peer = peer
        self.opened_at = time.time()
        self.subscription = subscription

    def disconnect(self) -> None:
        """End the stream from the server side (``/admin``): what is queued goes
        out and the response ends cleanly."""
        self.subscription.close(CloseReason.CLOSED)


class ChannelStream:
    """``GET /api/stream/{channel}``: the ASGI endpoint (see the module docstring).

    Args:
        hub: The hub to subscribe to.
        authority: Who may subscribe to what.
        outbox_max_bytes: Bound of each stream's outbox (hub default if None).
        overflow: Slow-consumer policy (hub default if None).
        connections: The registry that lists each stream while it is open.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        authority: Authority,
        outbox_max_bytes: int | None = None,
        overflow: OverflowPolicy | str | None = None,
        connections: Connections | None = None,
    ) -> None:
        self.hub = hub
        self.authority = authority
        self.outbox_max_bytes = outbox_max_bytes
        self.overflow = overflow
        self.connections = connections

    async def parse(self, scope: Scope) -> tuple[str, Position | None]:
        """The channel and ``since`` of a request, admitted (``authorize()``, then
        the ``on_subscribe`` hook, as any HTTP request); or raise a TidingsError."""
        authority = self.authority
        caller = ops.Caller(
            self.hub,
            authority,
            authority.principal(scope),
            authority.peer(scope),
            headers=scope.get("headers", ()),
        )
        channel = await ops.admit(caller, Action.SUBSCRIBE, scope["path_params"]["channel"])
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        since_text = next((value for key, value in query if key == "since"), "")
        return channel, parse_since(channel, since_text) if since_text else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscription = self.hub.subscription(max_bytes=self.outbox_max_bytes, policy=self.overflow)
        try:
            channel, since = await self.parse(scope)
            await subscription.add(channel, since=since)
        except TidingsError as exc:
            subscription.close()
            await error_response(exc)(scope, receive, send)
            return
        pump = Pump(_batches(subscription), _encode, headers=NDJSON_HEADERS, error=ndjson_error)

        def closed(subscription: Subscription) -> None:
            if subscription.close_reason is CloseReason.SLOW_CONSUMER:
                pump.abort()

        subscription.on_close(closed)
        listed = _Listed(self.authority.peer(scope), subscription)
        connections = self.connections
        if connections is not None:
            connections.add(listed)
        try:
            await pump(scope, receive, send)
        finally:
            reason = subscription.close_reason or pump.reason or "error"
            subscription.close()
            if connections is not None:
                connections.discard(listed)
            log_closed("stream", listed.id, 1, reason)
