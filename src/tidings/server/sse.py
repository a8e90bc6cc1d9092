"""The SSE transport: ``GET /sse?channel=…`` and ``GET /sse/{channel}``.

One connection streams one or more hub channels. The response starts with
``retry:`` and an ``id:`` holding the connection's cursor, so a client that
drops before its first event still resumes from the right place; then each
event carries, in ``id:``, the cursor of *all* the connection's channels.

Theory of operation
-------------------

A connection is an :class:`SSEStream` (one per request, an ASGI app) and, once
subscribed, a :class:`_Connection` that encodes items for it. There are two
ways to get bytes to the client:

* **fast path**: under ``tidings serve`` the scope offers the
  ``tidings.write`` extension (``server/fastwrite.py``). The subscription
  then writes each event's cached, already chunk-framed frame straight to
  the transport; the connection object receives the transport's flow
  control and loss notifications. The ASGI coroutine just waits for the
  subscription to close.
* **ASGI path**: anywhere else. A loop takes everything queued in the
  subscription and sends it as one ``http.response.body``; a watcher task
  turns ``http.disconnect`` into closing the subscription.

With compression on (``sse_compression = "gzip"``) and a client whose
``Accept-Encoding`` takes gzip, the response is gzip-coded and flushed after
every batch (``server/compression.py``): on the ASGI path each body sent is
one batch; on the fast path the connection writes its (shared) frames
unchunked and the transport's coalescing writer compresses each burst.
Keepalive comments and the last ``retry:`` are flushed the same way, so a
client decodes every event as soon as it arrives.

A request is authenticated and every channel authorised before the response
starts (a refusal is a 401 or 403 with a JSON body and no stream byte). When
the principal's token expires, one timer per connection ends the stream with
a final ``event: expired`` (data ``{"reason": "token_expired"}``, no ``id:``
line, so the client's cursor stays put); the client gets a new token and
resumes with its ``Last-Event-ID``. Nothing is checked per delivered event.

Single-channel connections share their frames across subscribers: the
cursor of a one-channel connection is the event's own position. A
multi-channel connection tracks its cursor and writes the ``id:`` line
itself, sharing the rest of the frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import parse_qsl

import orjson
from starlette.types import Receive, Scope, Send

from tidings.errors import ProtocolError, TidingsError
from tidings.hub import Encoding, Hub, Item, OverflowPolicy, Reset, Subscription
from tidings.hub.subscription import CloseReason
from tidings.server import ops
from tidings.server.auth import Authority
from tidings.server.compression import (
    CONTENT_ENCODING,
    LAST_CHUNK,
    SSE_COMPRESSION,
    VARY,
    GzipSend,
    GzipStream,
    accepts_gzip,
)
from tidings.server.connections import Connections
from tidings.server.errors import error_response
from tidings.server.limits import keep_slot
from tidings.server.logs import log_closed
from tidings.server.writer import FAST_WRITE, HTTPFastWrite
from tidings.types import Position
from tidings.wire.cursor import decode_cursor, encode_cursor, encode_cursor_bytes, encode_entry
from tidings.wire.sse import PING, encode_data, encode_event, encode_id

__all__ = ["SSE_HEADERS", "SSEEndpoint", "SSEKeepalive", "SSEStream"]

logger = logging.getLogger(__name__)
#: Numbers SSE connections for their log lines (``sse-1``, ``sse-2`` …).
_connection_ids = itertools.count(1)

SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def _chunk(frame: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(frame), frame)


PING_CHUNK = _chunk(PING)
#: The last event of a stream whose token expired: no ``id:``, so the cursor stays.
EXPIRED = encode_event(orjson.dumps({"reason": "token_expired"}).decode(), event="expired")
EXPIRED_CHUNK = _chunk(EXPIRED)


def _reset_data(item: Reset) -> bytes:
    epoch, offset = item.position
    return orjson.dumps(
        {"channel": item.channel, "epoch": epoch, "offset": offset, "reason": item.reason}
    )


def _body(item: Item) -> bytes:
    """Everything of an item's frame after its ``id:`` line."""
    if isinstance(item, Reset):
        return encode_data(_reset_data(item), event="reset")
    return encode_data(item.raw, event=item.event)


def _frame(item: Item) -> bytes:
    """An item's whole frame; its ``id:`` is the one-channel cursor of its position."""
    if isinstance(item, Reset):
        epoch, offset = item.position
        cursor = encode_entry(item.channel, epoch, offset)
        return encode_data(_reset_data(item), event="reset", id=cursor)
    cursor = encode_entry(item.channel, item.epoch, item.offset)
    return encode_data(item.raw, event=item.event, id=cursor)


#: The frame of an item on a one-channel connection, shared by all of them.
SSE_FRAME = Encoding("sse", _frame)
#: The same frame wrapped in an HTTP/1.1 chunk, for the fast path.
SSE_CHUNK = Encoding("sse-chunk", lambda item: _chunk(_frame(item)))
#: The frame without its ``id:`` line, shared by multi-channel connections.
SSE_BODY = Encoding("sse-body", _body)


class SSEKeepalive:
    """Writes a ``: ping`` comment to every open SSE connection each ``period`` seconds.

    One task serves all connections; it starts with the first and is
    cancelled with the last, so nothing runs while no stream is open.
    """

    def __init__(self, period: float) -> None:
        if period <= 0:
            raise ValueError(f"keepalive period must be > 0 seconds, not {period}")
        self.period = period
        self._connections: dict[_Connection, None] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, connection: _Connection) -> None:
        self._connections[connection] = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="tidings-sse-keepalive"
            )

    def discard(self, connection: _Connection) -> None:
        self._connections.pop(connection, None)
        if not self._connections and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            for connection in list(self._connections):
                try:
                    connection.ping()
                except Exception:
                    logger.exception("keepalive ping failed")


class _Connection:
    """One SSE connection once subscribed: encoder, cursor and flow-control listener."""

    __slots__ = (
        "chunked",
        "connections",
        "expired",
        "expiry",
        "fast",
        "gzip",
        "id",
        "keepalive",
        "on_open",
        "opened_at",
        "peer",
        "ping_due",
        "positions",
        "release",
        "retry_ms",
        "subscription",
    )

    transport = "sse"

    def __init__(
        self,
        subscription: Subscription,
        positions: dict[str, Position],
        *,
        chunked: bool,
        keepalive: SSEKeepalive | None,
        on_open: Callable[[int], None] | None,
        retry_ms: tuple[int, int] = (3000, 3000),
        gzip: GzipStream | None = None,
        connections: Connections | None = None,
        peer: str = "",
    ) -> None:
        self.subscription = subscription
        #: The response's compressor when it is gzip-coded (then writes are unchunked).
        self.gzip = gzip
        #: The app's registry (``server/connections.py``), which lists this stream while open.
        self.connections = connections
        self.peer = peer
        self.opened_at = time.time()
        #: The range a shutdown's last ``retry:`` is drawn from, in milliseconds.
        self.retry_ms = retry_ms
        self.positions = positions
        self.id = f"sse-{next(_connection_ids)}"
        self.chunked = chunked
        self.keepalive = keepalive
        self.on_open = on_open
        self.fast: HTTPFastWrite | None = None
        self.ping_due = False
        self.expired = False
        self.expiry: asyncio.TimerHandle | None = None
        #: Frees the connection's slot (``server/limits.py``) once it outlives its app.
        self.release: Callable[[], None] | None = None

    def opened(self, expires: float | None) -> None:
        if self.on_open is not None:
            self.on_open(1)
        if self.connections is not None:
            self.connections.add(self)
        if self.keepalive is not None:
            self.keepalive.add(self)
        if expires is not None:
            delay = max(0.0, expires - time.time())
            self.expiry = asyncio.get_running_loop().call_later(delay, self.expire)

    def closed(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.keepalive is not None:
            self.keepalive.discard(self)
        if self.on_open is not None:
            self.on_open(-1)
        if self.connections is not None:
            self.connections.discard(self)
        if self.release is not None:
            self.release()
        reason = self.subscription.close_reason or CloseReason.DISCONNECT
        log_closed("sse", self.id, len(self.positions), "expired" if self.expired else reason)

    def hand_off(self, fast: HTTPFastWrite) -> bool:
        """Give the connection to the transport; False if the peer is gone already."""
        subscription = self.subscription
        write = fast.attach(self, self.gzip)
        if write is None:
            return False
        self.fast = fast
        if fast.paused:
            subscription.pause_writing()
        subscription.attach_writer(write, self.encoder())
        subscription.on_close(self.finish)
        fast.hand_off()
        return True

    def finish(self, subscription: Subscription) -> None:
        """End a handed-off stream according to why its subscription closed."""
        fast = self.fast
        assert fast is not None
        fast.detach()
        self.closed()
        reason = subscription.close_reason
        if reason is CloseReason.SLOW_CONSUMER:
            fast.abort()  # drop what is buffered: that is the memory we protect
        elif reason is not CloseReason.DISCONNECT:
            if reason is CloseReason.SHUTDOWN:
                fast.write(self.framed(self.last_retry()))
            if self.gzip is None:
                fast.write(LAST_CHUNK)  # a clean end of the response
            fast.end()  # gzip: the encoder ends the member and writes the last chunk

    def last_retry(self) -> bytes:
        """The ``retry:`` block that ends a stream the server stops: a delay drawn
        at random from ``retry_ms``, so its clients do not all return at once."""
        return encode_event(retry=random.randint(*self.retry_ms))

    def framed(self, frame: bytes) -> bytes:
        """``frame`` as this connection writes it: in its HTTP/1.1 chunk unless
        something else frames it (ASGI ``send``, or the fast path's gzip encoder)."""
        return _chunk(frame) if self.chunked else frame

    def encoder(self) -> Callable[[Item], bytes]:
        if len(self.positions) == 1:
            return SSE_CHUNK if self.chunked else SSE_FRAME
        return self.encode_multi

    def encode_multi(self, item: Item) -> bytes:
        # The id is the whole connection's cursor with the event's own
        # channel first, so a client can tell which channel an event is from.
        positions = self.positions
        channel = item.channel
        position = item.position if isinstance(item, Reset) else Position(item.epoch, item.offset)
        positions[channel] = position
        cursor = encode_cursor_bytes({channel: position} | positions)
        frame = encode_id(cursor) + SSE_BODY(item)
        return _chunk(frame) if self.chunked else frame

    # Fast-path listener: called by the protocol (server/fastwrite.py).
    def pause_writing(self) -> None:
        self.subscription.pause_writing()

    def resume_writing(self) -> None:
        self.subscription.resume_writing()

    def connection_lost(self) -> None:
        self.subscription.close(CloseReason.DISCONNECT)

    def shutdown(self) -> None:
        self.subscription.close(CloseReason.SHUTDOWN)

    def disconnect(self) -> None:
        """End the stream from the server side (``/admin``): the response ends
        cleanly and the client reconnects after its ``retry:`` delay."""
        self.subscription.close(CloseReason.CLOSED)

    def expire(self) -> None:
        """The token expired: end the stream with the ``expired`` event."""
        self.expiry = None
        fast = self.fast
        if fast is not None:
            if self.subscription._write is not None:
                fast.write(EXPIRED_CHUNK if self.chunked else EXPIRED)
            self.subscription.close(CloseReason.CLOSED)  # finish() ends the response
        else:
            self.expired = True
            self.subscription.wakeup()

    def ping(self) -> None:
        fast = self.fast
        if fast is not None:
            if self.subscription._write is not None:
                fast.write(PING_CHUNK if self.chunked else PING)
        else:
            self.ping_due = True
            self.subscription.wakeup()


class SSEStream:
    """An ASGI app that streams hub channels to one client as Server-Sent Events.

    Args:
        hub: The hub to subscribe to.
        channels: Channel names, already validated.
        cursor: Where to resume each channel (from ``Last-Event-ID``); channels
            not in it start live.
        retry: The reconnection delay to announce, in seconds.
        retry_spread: When the server stops the stream, it ends with a
            ``retry:`` drawn at random from ``[retry, retry + retry_spread]``.
        keepalive: Sends the ``: ping`` comments; ``None`` sends none.
        outbox_max_bytes: Bound of the connection's outbox (hub default if None).
        overflow: Slow-consumer policy (hub default if None).
        headers: Extra response headers.
        on_open: Called with +1 when the stream starts and -1 when it ends.
        expires: When the client's token expires (Unix seconds): the stream
            ends then with an ``expired`` event. None: never.
        compression: ``"gzip"``: gzip the stream when the request's
            ``Accept-Encoding`` accepts it, flushed after every batch of
            events; ``"off"`` (default): never.
        connections: The registry that lists the stream while it is open.
        peer: The client address, as listed there.
    """

    def __init__(
        self,
        hub: Hub,
        channels: Iterable[str],
        *,
        cursor: Mapping[str, Position] | None = None,
        retry: float = 3.0,
        retry_spread: float = 0.0,
        keepalive: SSEKeepalive | None = None,
        outbox_max_bytes: int | None = None,
        overflow: OverflowPolicy | str | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
        on_open: Callable[[int], None] | None = None,
        expires: float | None = None,
        compression: str = "off",
        connections: Connections | None = None,
        peer: str = "",
    ) -> None:
        self.hub = hub
        self.channels = list(channels)
        if not self.channels:
            raise ValueError("an SSE stream needs at least one channel")
        if compression not in SSE_COMPRESSION:
            raise ValueError(f"compression must be 'off' or 'gzip', not {compression!r}")
        self.compressible = compression == "gzip"
        self.cursor = dict(cursor or {})
        self.retry_ms = round(retry * 1000)
        self.retry_spread_ms = round(retry_spread * 1000)
        self.keepalive = keepalive
        self.outbox_max_bytes = outbox_max_bytes
        self.overflow = overflow
        self.headers = [*SSE_HEADERS, *([VARY] if self.compressible else []), *headers]
        self.on_open = on_open
        self.expires = expires
        self.connections = connections
        self.peer = peer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gzip = (
            GzipStream() if self.compressible and accepts_gzip(scope.get("headers", ())) else None
        )
        if scope.get("method") == "HEAD":
            headers = [*self.headers, CONTENT_ENCODING] if gzip is not None else self.headers
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        subscription = self.hub.subscription(
            max_bytes=self.outbox_max_bytes, policy=self.overflow, transport="sse"
        )
        try:
            positions: dict[str, Position] = {}
            try:
                for channel in self.channels:
                    since = self.cursor.get(channel)
                    subscribed = await subscription.add(channel, since=since)
                    # The first id names the position before any replay, so a
                    # client that drops now resumes without missing the replay.
                    positions[channel] = since if since is not None else subscribed.position
            except TidingsError as exc:
                subscription.close()
                await error_response(exc)(scope, receive, send)
                return
            fast: HTTPFastWrite | None = scope.get("extensions", {}).get(FAST_WRITE)
            connection = _Connection(
                subscription,
                positions,
                chunked=fast is not None and gzip is None,
                keepalive=self.keepalive,
                on_open=self.on_open,
                retry_ms=(self.retry_ms, self.retry_ms + self.retry_spread_ms),
                gzip=gzip,
                connections=self.connections,
                peer=self.peer,
            )
            if gzip is not None:
                send = GzipSend(send, gzip)  # every body compressed and flushed
            head = encode_event(retry=self.retry_ms, id=encode_cursor(positions))
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            await send({"type": "http.response.body", "body": head, "more_body": True})
        except BaseException:
            subscription.close()
            raise
        connection.opened(self.expires)
        if fast is not None:
            # The stream may outlive this call: it frees its slot when it ends.
            connection.release = keep_slot(scope)
            if connection.hand_off(fast):
                # The transport owns the stream now; connection.finish() ends it.
                return
        try:
            await self._serve_asgi(connection, receive, send)
        finally:
            subscription.close()
            connection.closed()

    async def _serve_asgi(self, connection: _Connection, receive: Receive, send: Send) -> None:
        subscription = connection.subscription
        encode = connection.encoder()
        task = asyncio.current_task()
        assert task is not None
        blocked = _Blocked()

        def cut(_: Subscription) -> None:
            # A plain ASGI server applies backpressure by not returning from
            # send(); meanwhile the outbox fills and, on overflow, the
            # subscription closes. A send blocked then must be abandoned.
            if blocked.sending:
                blocked.cut = True
                task.cancel()

        subscription.on_close(cut)
        watcher = asyncio.get_running_loop().create_task(watch_disconnect(receive, subscription))
        try:
            while True:
                await subscription.wait()
                items = subscription.take()
                if items:
                    body = b"".join([encode(item) for item in items])
                elif connection.ping_due:
                    body = PING
                else:
                    body = b""
                connection.ping_due = False
                if subscription.closed:
                    break
                if connection.expired:
                    await send({"type": "http.response.body", "body": body + EXPIRED})
                    return
                if body:
                    blocked.sending = True
                    try:
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                    except asyncio.CancelledError:
                        if not blocked.cut:
                            raise
                        task.uncancel()
                        break
                    finally:
                        blocked.sending = False
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        reason = subscription.close_reason
        if reason is CloseReason.SHUTDOWN:
            body = connection.last_retry()
            await send({"type": "http.response.body", "body": body, "more_body": False})
        elif reason is CloseReason.CLOSED and not blocked.cut:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # On slow_consumer the response stays incomplete on purpose: the
        # server closes the connection, and the client resumes from its cursor.


class _Blocked:
    __slots__ = ("cut", "sending")

    def __init__(self) -> None:
        self.sending = False
        self.cut = False


async def watch_disconnect(receive: Receive, subscription: Subscription) -> None:
    """Close ``subscription`` when the client of a streamed response goes away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            subscription.close(CloseReason.DISCONNECT)
            return


class SSEEndpoint:
    """``GET /sse?channel=a&channel=b`` and ``GET /sse/{channel}``.

    Reads the channels and the resume cursor (``Last-Event-ID`` header first,
    then ``?last_event_id=``: a reconnecting browser keeps the original URL
    and sends the header) and runs an :class:`SSEStream`, gzip-coded when
    ``compression`` is ``"gzip"`` and the client accepts it. Bad input gets a
    400, a refused credential a 401 and a forbidden channel a 401 or 403, each
    with a JSON error body before anything is subscribed; so does a refusal
    of the ``on_connect`` or ``on_subscribe`` hook (``server/hooks.py``).
    """

    def __init__(
        self,
        hub: Hub,
        *,
        authority: Authority | None = None,
        retry: float,
        retry_spread: float = 0.0,
        keepalive: SSEKeepalive | None,
        max_channels: int,
        outbox_max_bytes: int | None = None,
        overflow: OverflowPolicy | str | None = None,
        on_open: Callable[[int], None] | None = None,
        compression: str = "off",
        connections: Connections | None = None,
    ) -> None:
        if compression not in SSE_COMPRESSION:
            raise ValueError(f"compression must be 'off' or 'gzip', not {compression!r}")
        self.hub = hub
        self.authority = authority if authority is not None else Authority(hub.namespaces)
        self.compression = compression
        self.connections = connections
        self.retry = retry
        self.retry_spread = retry_spread
        self.keepalive = keepalive
        self.max_channels = max_channels
        self.outbox_max_bytes = outbox_max_bytes
        self.overflow = overflow
        self.on_open = on_open

    def parse(self, scope: Scope) -> tuple[ops.Caller, list[str], dict[str, Position]]:
        """Return the caller, channels and cursor of a request, or raise a TidingsError."""
        caller = ops.Caller(
            self.hub,
            self.authority,
            self.authority.principal(scope),
            self.authority.peer(scope),
            transport="sse",
            headers=scope.get("headers", ()),
        )
        path_channel = scope.get("path_params", {}).get("channel")
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if path_channel is not None:
            names = [path_channel]
        else:
            names = [value for key, value in query if key == "channel"]
            if not names:
                raise ProtocolError("at least one ?channel= is required")
        channels = ops.request_channels(caller, names, max_channels=self.max_channels)
        cursor_text = None
        for key, value in scope.get("headers", ()):
            if key == b"last-event-id":
                cursor_text = value.decode("latin-1")
        if cursor_text is None:
            cursor_text = next((value for key, value in query if key == "last_event_id"), "")
        return caller, channels, decode_cursor(cursor_text)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            caller, channels, cursor = self.parse(scope)
            caller = await ops.connect(caller, channels)
        except TidingsError as exc:
            await error_response(exc)(scope, receive, send)
            return
        stream = SSEStream(
            self.hub,
            channels,
            cursor=cursor,
            retry=self.retry,
            retry_spread=self.retry_spread,
            keepalive=self.keepalive,
            outbox_max_bytes=self.outbox_max_bytes,
            overflow=self.overflow,
            on_open=self.on_open,
            expires=caller.principal.expires,
            compression=self.compression,
            connections=self.connections,
            peer=caller.peer,
        )
        await stream(scope, receive, send)
