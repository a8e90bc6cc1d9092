"""The WebSocket transport: ``GET /ws``.

A connection speaks ``tidings.v1.json`` or ``tidings.v1.msgpack``
(``wire/protocol.py``; JSON when the client offers neither) and holds one
hub subscription for all its channels. Channels named in the URL
(``?channel=…``) are subscribed at once; without a Tidings subprotocol such
a connection is in *raw mode*: receive-only, each event one text frame whose
payload is exactly the event's data. ``docs/websocket.md`` is the reference.

The handshake is authenticated (``Authorization`` header, or ``?token=``
from a browser) and the URL's channels authorised before the upgrade: a
refusal is an HTTP 401 or 403 with a JSON error body, never an upgrade; so
is a handshake without credentials when no namespace admits anonymous
clients, and one the ``on_connect`` or ``on_subscribe`` hook refuses. A
connection's token is swapped with the ``refresh`` op; one timer per
connection closes it with 4401 when its token expires unrefreshed.

Each connection is a ``Connection`` (``server/_ws_connection.py``, where the
theory of operation is); ``server/_ws_codec.py`` holds the encodings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from tidings.errors import TidingsError, Unauthorized
from tidings.hub import ClientInfo, Hub, OverflowPolicy
from tidings.server import ops
from tidings.server._ws_codec import (
    WS_JSON,
    WS_JSON_FRAME,
    WS_MSGPACK,
    WS_MSGPACK_FRAME,
    WS_RAW_FRAME,
    Codec,
)
from tidings.server._ws_connection import GONE, Connection, StallWatch
from tidings.server.auth import Authority, Kind
from tidings.server.connections import Connections
from tidings.server.errors import (
    reject_handshake,
)
from tidings.server.limits import keep_slot
from tidings.server.rates import PublishGate
from tidings.server.writer import FAST_WRITE, WebSocketFastWrite
from tidings.settings import DEFAULT_MAX_REPLY_BYTES, DEFAULT_PRESENCE_INFO_MAX_BYTES
from tidings.types import Position
from tidings.wire import protocol
from tidings.wire.cursor import decode_cursor
from tidings.wire.protocol import Format

__all__ = [
    "WS_JSON",
    "WS_JSON_FRAME",
    "WS_MSGPACK",
    "WS_MSGPACK_FRAME",
    "WS_RAW_FRAME",
    "WebSocketEndpoint",
]

logger = logging.getLogger(__name__)

#: Seconds the ASGI path waits to hand a close frame to the server.
CLOSE_SEND_TIMEOUT = 1.0


class WebSocketEndpoint:
    """``GET /ws``: the Tidings WebSocket protocol on one hub (an ASGI app).

    Args:
        hub: The hub.
        authority: Authenticates the handshake and authorises every op; an
            open authority over the hub's namespaces when omitted.
        max_frame_bytes: Largest message a client may send; also the largest
            batch frame the server builds.
        rate_limit: Commands per second one connection may send (bursts of
            as many).
        max_channels: Channels one connection may subscribe to.
        ping_interval: Seconds between the server's pings (heartbeats come
            from the server's protocol; see ``docs/websocket.md``).
        pong_timeout: Seconds a peer has to answer a ping.
        outbox_max_bytes: Bound of each connection's outbox (hub default if None).
        overflow: Slow-consumer policy (hub default if None).
        on_open: Called with +1 when a connection opens and -1 when it ends.
        connections: The registry that lists each connection while it is open.
        gate: Admits publishes (rate limits, draining); None admits every one.
        max_reply_bytes: About the largest answer to a ``history`` or
            ``presence`` command (longer ones are paged).
        presence_info_max_bytes: Largest ``info`` of a ``connect`` (as JSON).
    """

    def __init__(
        self,
        hub: Hub,
        *,
        authority: Authority | None = None,
        max_frame_bytes: int = 64 * 1024,
        rate_limit: float = 100.0,
        max_channels: int = 64,
        ping_interval: float = 20.0,
        pong_timeout: float = 20.0,
        outbox_max_bytes: int | None = None,
        overflow: OverflowPolicy | str | None = None,
        on_open: Callable[[int], None] | None = None,
        gate: PublishGate | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        presence_info_max_bytes: int = DEFAULT_PRESENCE_INFO_MAX_BYTES,
        connections: Connections | None = None,
    ) -> None:
        for name, value in (
            ("max_frame_bytes", max_frame_bytes),
            ("max_reply_bytes", max_reply_bytes),
            ("presence_info_max_bytes", presence_info_max_bytes),
            ("rate_limit", rate_limit),
            ("max_channels", max_channels),
            ("ping_interval", ping_interval),
            ("pong_timeout", pong_timeout),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, not {value}")
        self.hub = hub
        self.authority = authority if authority is not None else Authority(hub.namespaces)
        self.max_frame_bytes = max_frame_bytes
        self.rate_limit = rate_limit
        self.max_channels = max_channels
        self.stall_timeout = ping_interval + pong_timeout
        self.outbox_max_bytes = outbox_max_bytes
        self.overflow = overflow
        self.on_open = on_open
        self.connections = connections
        self.gate = gate
        self.max_reply_bytes = max_reply_bytes
        self.presence_info_max_bytes = presence_info_max_bytes
        self._stall_watch = StallWatch(self.stall_timeout)
        self._codecs = {
            fmt: Codec(fmt, max_frame_bytes=max_frame_bytes)
            for fmt in (Format.JSON, Format.MSGPACK, None)
        }

    def parse(self, scope: Scope) -> tuple[ops.Caller, list[str], dict[str, Position]]:
        """Return the caller, and the channels and resume cursor named in the URL.

        Raises:
            TidingsError: a refused credential or channel, or bad input.
        """
        gate = self.gate
        caller = ops.Caller(
            self.hub,
            self.authority,
            self.authority.principal(scope),
            self.authority.peer(scope),
            gate,
            gate.connection_bucket() if gate is not None else None,
            transport="ws",
            headers=scope.get("headers", ()),
        )
        if caller.principal.kind is Kind.ANONYMOUS and not self.authority.admits_anonymous():
            raise Unauthorized("missing", "this server needs a token or an API key")
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        names = [value for key, value in query if key == "channel"]
        channels = ops.request_channels(caller, names, max_channels=self.max_channels)
        cursor_text = next((value for key, value in query if key == "last_event_id"), "")
        return caller, channels, decode_cursor(cursor_text)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        try:
            caller, channels, cursor = self.parse(scope)
            caller = await ops.connect(caller, channels)
        except TidingsError as exc:
            await reject_handshake(exc, scope, send)
            return
        fmt = protocol.negotiate(scope.get("subprotocols") or ())
        raw = fmt is None and bool(channels)
        codec = self._codecs[None if raw else (fmt or Format.JSON)]
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if fmt is not None:
            accept["subprotocol"] = fmt.subprotocol
        client_id = secrets.token_urlsafe(9)
        principal = caller.principal
        user = principal.sub if principal.kind is Kind.CLIENT else None
        subscription = self.hub.subscription(
            max_bytes=self.outbox_max_bytes,
            policy=self.overflow,
            client=None if raw else ClientInfo(client_id, user, caller.info),
            transport="ws",
        )
        connection = Connection(self, codec, subscription, client_id, caller)
        try:
            await send(accept)
            connection.expire_at(principal.expires)
            self.opened(connection)
            try:
                fast: WebSocketFastWrite | None = scope.get("extensions", {}).get(FAST_WRITE)
                if fast is not None:
                    # The connection may outlive this call: it frees its slot when it ends.
                    connection.release = keep_slot(scope)
                    await self._serve_fast(connection, fast, channels, cursor)
                else:
                    await self._serve_asgi(connection, receive, send, channels, cursor)
            finally:
                if not connection.handed_off:
                    self.closed(connection)
                    connection.release()
                    connection.log_end()
        finally:
            if not connection.handed_off:
                subscription.close()

    def opened(self, connection: Connection) -> None:
        """Count and list a connection that was accepted."""
        if self.on_open is not None:
            self.on_open(1)
        if self.connections is not None:
            self.connections.add(connection)

    def closed(self, connection: Connection) -> None:
        """Uncount and unlist a connection that ended."""
        if self.on_open is not None:
            self.on_open(-1)
        if self.connections is not None:
            self.connections.discard(connection)

    async def _serve_fast(
        self,
        connection: Connection,
        fast: WebSocketFastWrite,
        channels: list[str],
        cursor: dict[str, Position],
    ) -> None:
        """Attach the connection to its transport, then hand it off and return."""
        subscription = connection.subscription
        write = fast.attach(connection)
        if write is None:  # the peer is already gone
            return
        connection.fast = fast
        subscription.on_close(connection.on_closed)
        if fast.paused:
            subscription.pause_writing()
        subscription.attach_writer(
            write, connection.codec.frame_encoding, encode_batch=connection.codec.frames
        )
        await connection.subscribe_all(channels, cursor)
        if subscription.closed:
            connection.fast = None
            fast.detach()
            return
        # From here the subscription and the protocol own the connection;
        # Connection.on_closed cleans up when it ends.
        connection.handed_off = True
        fast.hand_off(connection.message_received)

    async def _serve_asgi(
        self,
        connection: Connection,
        receive: Receive,
        send: Send,
        channels: list[str],
        cursor: dict[str, Position],
    ) -> None:
        subscription = connection.subscription
        subscription.on_close(connection.on_closed)
        await connection.subscribe_all(channels, cursor)
        loop = asyncio.get_running_loop()
        reader = loop.create_task(connection.read(receive), name="tidings-ws-reader")
        writer = loop.create_task(connection.write(send), name="tidings-ws-writer")
        self._stall_watch.add(connection)
        try:
            await subscription.wait_closed()
        finally:
            self._stall_watch.discard(connection)
            for task in (reader, writer):
                task.cancel()
            for result in await asyncio.gather(reader, writer, return_exceptions=True):
                if isinstance(result, Exception):
                    logger.error("WebSocket task failed", exc_info=result)
        code, reason = connection.close_args()
        if code != GONE:
            # A peer that reads nothing never lets the close frame out; the
            # server closes the socket once this app returns.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_SEND_TIMEOUT):
                    await send({"type": "websocket.close", "code": code, "reason": reason})
