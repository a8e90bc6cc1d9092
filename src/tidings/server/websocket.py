"""The WebSocket transport: ``GET /ws``.

A connection speaks ``tidings.v1.json`` or ``tidings.v1.msgpack``
(``wire/protocol.py``; JSON when the client offers neither) and holds one
hub subscription for all its channels. Channels named in the URL
(``?channel=…``) are subscribed at once; without a Tidings subprotocol such
a connection is in *raw mode*: receive-only, each event one text frame whose
payload is exactly the event's data. ``docs/websocket.md`` is the reference.

Theory of operation
-------------------

A connection is a :class:`_Connection` (slots only) shared by two flows:

* **commands**: each message is checked for size and rate, decoded, run
  against the hub and answered with exactly one reply when the command has an
  ``id``, one command at a time in arrival order. A ``subscribe`` answers
  from ``Subscription.add(on_live=…)``, so its reply is on the wire before the
  replayed events. On the fast path the connection is *handed off* once
  accepted: the ASGI call returns, the protocol hands each message to
  ``_Connection.message_received``, and a worker task runs only while
  commands are waiting (reading pauses when too many are). On the ASGI path
  a reader task feeds the same code from ``receive``.
* **pushes**, which reach the subscription from ``Hub._dispatch`` without any
  task of ours:

  - fast path (``tidings serve``; the scope offers ``tidings.write`` from
    ``server/fastwrite.py``): the subscription writes each event's cached,
    already framed push straight to the transport; the same bytes go to every
    connection of that format. While the transport is paused, events wait in
    the bounded outbox; on resume they go out in one write, as few frames as
    ``max_frame_bytes`` allows (a JSON or MessagePack array per frame).
    Replies are framed and written the same way. Commands stop being read
    while the transport is paused, so a client cannot grow our buffers by
    sending requests it never reads the answers of.
  - ASGI path (any other server, or ``--no-fast-write``): a writer task
    waits on the subscription and sends replies, then queued events in
    batches, through ASGI ``send``; a reader task runs the commands; the
    connection's own task waits for the subscription to close and then
    closes the socket. A send blocked longer than the heartbeat period plus
    the pong deadline marks the peer dead (4002).

The subscription closing is the one signal that a connection is over; its
reason picks the close code (``slow_consumer`` → 4008, hub shutdown → 4001;
a peer that left gets nothing). Errors in a command end in an error reply;
only an oversized message (1009), a rate-limit flood (4029), a raw-mode
client that sends (4500) and internal failures (1011) close the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import Message, Receive, Scope, Send

from tidings.errors import (
    BackendUnavailable,
    FrameTooLarge,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    TidingsError,
)
from tidings.hub import (
    ClientInfo,
    Encoding,
    Event,
    Hub,
    Item,
    OverflowPolicy,
    Reset,
    Subscribed,
    Subscription,
    validate_channel,
)
from tidings.hub.subscription import CloseReason
from tidings.server.errors import http_status
from tidings.server.writer import FAST_WRITE, WebSocketFastWrite
from tidings.types import Position
from tidings.wire import protocol
from tidings.wire.codes import CloseCode, ErrorCode
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

#: Replies a slow ASGI-path connection may have waiting before commands stop being read.
MAX_PENDING_REPLIES = 64
#: Commands a handed-off connection may have waiting before reading pauses.
MAX_PENDING_COMMANDS = 32
#: Seconds the ASGI path waits to hand a close frame to the server.
CLOSE_SEND_TIMEOUT = 1.0
#: "Send no close frame": the peer is gone, or the server sends its own.
_GONE = CloseCode.ABNORMAL_CLOSURE


# -- encodings: each event encoded once per format, shared by every connection --


def _push(item: Item) -> protocol.Push:
    if isinstance(item, Reset):
        epoch, offset = item.position
        return protocol.Push(item.channel, "reset", {"reason": item.reason}, epoch, offset)
    if not item.offset:  # a join or leave notice: not part of the stream
        return protocol.Push(item.channel, item.type, protocol.Raw(item.raw))
    return protocol.Push(
        item.channel, item.type, protocol.Raw(item.raw, item.is_text), item.epoch, item.offset
    )


def _raw_frame(item: Item) -> bytes:
    if isinstance(item, Event) and item.offset:
        return protocol.frame(item.raw)
    return b""  # raw mode carries event data only: no resets, no notices


#: A push as a JSON document, and the same in a text frame.
WS_JSON = Encoding("ws-json", lambda item: protocol.encode_push(_push(item), Format.JSON))
WS_JSON_FRAME = Encoding("ws-json-frame", lambda item: protocol.frame(WS_JSON(item)))
#: A push as a MessagePack map, and the same in a binary frame.
WS_MSGPACK = Encoding("ws-msgpack", lambda item: protocol.encode_push(_push(item), Format.MSGPACK))
WS_MSGPACK_FRAME = Encoding(
    "ws-msgpack-frame", lambda item: protocol.frame(WS_MSGPACK(item), binary=True)
)
#: Raw mode: the event's data alone, in a text frame.
WS_RAW_FRAME = Encoding("ws-raw-frame", _raw_frame)


class _Codec:
    """How one kind of connection (JSON, MessagePack or raw) puts items on the wire."""

    __slots__ = ("fmt", "frame_encoding", "max_frame_bytes", "payload_encoding")

    def __init__(self, fmt: Format | None, *, max_frame_bytes: int) -> None:
        self.fmt = fmt
        self.max_frame_bytes = max_frame_bytes
        self.payload_encoding: Encoding | None
        if fmt is Format.JSON:
            self.payload_encoding, self.frame_encoding = WS_JSON, WS_JSON_FRAME
        elif fmt is Format.MSGPACK:
            self.payload_encoding, self.frame_encoding = WS_MSGPACK, WS_MSGPACK_FRAME
        else:
            self.payload_encoding, self.frame_encoding = None, WS_RAW_FRAME

    @property
    def raw(self) -> bool:
        return self.fmt is None

    @property
    def binary(self) -> bool:
        return self.fmt is Format.MSGPACK

    def messages(self, items: list[Item]) -> list[bytes]:
        """The payloads of the messages that carry ``items`` (ASGI path)."""
        encode = self.payload_encoding
        if encode is None:
            return [item.raw for item in items if isinstance(item, Event) and item.offset]
        if len(items) == 1:
            return [encode(items[0])]
        assert self.fmt is not None
        return protocol.batch(
            [encode(item) for item in items], self.fmt, max_frame_bytes=self.max_frame_bytes
        )

    def frames(self, items: list[Item]) -> bytes:
        """The frames that carry ``items``, for one write (fast path)."""
        encode = self.payload_encoding
        if encode is None:
            return b"".join([WS_RAW_FRAME(item) for item in items])
        assert self.fmt is not None
        return protocol.frame_batch(
            [encode(item) for item in items], self.fmt, max_frame_bytes=self.max_frame_bytes
        )

    def reply(self, reply: protocol.Reply | protocol.ErrorReply) -> bytes:
        return protocol.encode_reply(reply, self.fmt or Format.JSON)


# -- one connection -------------------------------------------------------------

#: Close code and reason for each way a subscription can end.
_CLOSE_FOR = {
    CloseReason.SLOW_CONSUMER: (CloseCode.SLOW_CONSUMER, "slow consumer"),
    CloseReason.SHUTDOWN: (CloseCode.SHUTDOWN, "server shutdown"),
    CloseReason.CLOSED: (CloseCode.NORMAL, ""),
    # The peer leaving sets ``closing`` first; a subscription the hub
    # disconnected by itself (a delivery failed) is an internal error.
    CloseReason.DISCONNECT: (CloseCode.INTERNAL_ERROR, "internal error"),
}


class _Connection:
    """State of one WebSocket connection, and its fast-path write listener."""

    __slots__ = (
        "_writable",
        "client_id",
        "closing",
        "codec",
        "endpoint",
        "fast",
        "handed_off",
        "inbox",
        "replies",
        "sending",
        "stamp",
        "started",
        "strikes",
        "subscription",
        "tokens",
        "worker",
    )

    def __init__(
        self,
        endpoint: WebSocketEndpoint,
        codec: _Codec,
        subscription: Subscription,
        client_id: str,
    ) -> None:
        self.endpoint = endpoint
        self.codec = codec
        self.subscription = subscription
        self.client_id = client_id
        self.fast: WebSocketFastWrite | None = None
        #: Replies waiting for the writer task (ASGI path only).
        self.replies: list[bytes] = []
        #: The close code and reason once the connection is ending.
        self.closing: tuple[int, str] | None = None
        self.started = False  # a command was handled (connect must come first)
        self.tokens = float(endpoint.rate_limit)
        self.stamp = asyncio.get_running_loop().time()
        self.strikes = 0.0
        #: When the pending ASGI send started (0.0: none pending), for the stall watch.
        self.sending = 0.0
        self._writable: asyncio.Future[None] | None = None
        #: Handed off (fast path): the connection outlives its ASGI call.
        self.handed_off = False
        #: Messages waiting for the worker task, which exists only while some do.
        self.inbox: deque[str | bytes] | None = None
        self.worker: asyncio.Task[None] | None = None

    # -- ending ----------------------------------------------------------------

    def end(self, code: int, reason: str = "") -> None:
        """Close the connection with ``code`` (nothing is sent for a peer that left)."""
        if self.closing is None:
            self.closing = (code, _close_reason(reason))
        self.subscription.close(CloseReason.CLOSED)

    def close_args(self) -> tuple[int, str]:
        if self.closing is not None:
            return self.closing
        reason = self.subscription.close_reason or CloseReason.CLOSED
        code, text = _CLOSE_FOR[reason]
        return int(code), text

    def on_closed(self, subscription: Subscription) -> None:
        if self.closing is None:
            self.closing = self.close_args()
        code, reason = self.closing
        fast = self.fast
        if fast is not None and code != _GONE:
            fast.close(code, reason)
        self._wake()
        if self.handed_off:
            # No ASGI call is left to clean up after a handed-off connection.
            self.fast = None
            if fast is not None:
                fast.detach()
            self.inbox = None
            worker, self.worker = self.worker, None
            if worker is not None and worker is not asyncio.current_task():
                worker.cancel()
            if self.endpoint.on_open is not None:
                self.endpoint.on_open(-1)

    # -- fast-path listener (server/fastwrite.py calls these) ---------------------

    def pause_writing(self) -> None:
        self.subscription.pause_writing()

    def resume_writing(self) -> None:
        self.subscription.resume_writing()
        self._wake()

    def connection_lost(self) -> None:
        self.closing = self.closing or (_GONE, "")
        self.subscription.close(CloseReason.DISCONNECT)

    def shutdown(self) -> None:
        self.closing = self.closing or (_GONE, "")  # the server sends its own close
        self.subscription.close(CloseReason.SHUTDOWN)

    # -- flow control for commands -------------------------------------------------

    def blocked(self) -> bool:
        """Whether replies cannot go out now, so the next command must wait."""
        if self.subscription.closed:
            return False
        fast = self.fast
        if fast is not None:
            return fast.paused
        return len(self.replies) >= MAX_PENDING_REPLIES

    async def writable(self) -> None:
        while self.blocked():
            waiter = self._writable
            if waiter is None or waiter.done():
                waiter = self._writable = asyncio.get_running_loop().create_future()
            await waiter

    def _wake(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- replies ---------------------------------------------------------------------

    def send_reply(self, reply: protocol.Reply | protocol.ErrorReply) -> None:
        payload = self.codec.reply(reply)
        fast = self.fast
        if fast is not None:
            fast.write(protocol.frame(payload, binary=self.codec.binary))
        elif not self.subscription.closed:
            self.replies.append(payload)
            self.subscription.wakeup()

    def send_error(self, request: protocol.RequestId, exc: TidingsError) -> None:
        self.send_reply(protocol.ErrorReply(request, exc.code, str(exc)))

    # -- commands ----------------------------------------------------------------------

    def allow(self) -> bool:
        """Take a token from the connection's bucket (``rate_limit`` per second).

        Refusals are counted in a second bucket that drains at the same rate,
        so ``strikes`` only grows while a client sends at more than twice
        the limit.
        """
        rate = self.endpoint.rate_limit
        now = asyncio.get_running_loop().time()
        refill = (now - self.stamp) * rate
        self.stamp = now
        self.tokens = min(float(rate), self.tokens + refill)
        self.strikes = max(0.0, self.strikes - refill)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.strikes += 1.0
        return False

    def message_received(self, data: str | bytes) -> None:
        """A message from the peer of a handed-off connection (called by the protocol)."""
        if self.subscription.closed:
            return
        if self.codec.raw:
            self.end(CloseCode.BAD_REQUEST, "raw mode is receive-only")
            return
        inbox = self.inbox
        if inbox is None:
            inbox = self.inbox = deque()
        inbox.append(data)
        if len(inbox) >= MAX_PENDING_COMMANDS and self.fast is not None:
            self.fast.pause_reading()
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(
                self._work(), name="tidings-ws-commands"
            )

    async def _work(self) -> None:
        """Run waiting commands in order; the task ends when none are left."""
        try:
            while self.inbox and not self.subscription.closed:
                data = self.inbox.popleft()
                if len(self.inbox) < MAX_PENDING_COMMANDS // 2 and self.fast is not None:
                    self.fast.resume_reading()
                await self.writable()
                await self.handle(data)
        except Exception:
            logger.exception("WebSocket command failed")
            self.end(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            if self.worker is asyncio.current_task():
                self.worker = None
            if not self.inbox:
                self.inbox = None

    async def receive(self, message: Message) -> None:
        """Handle one ``websocket.receive`` message (the ASGI path)."""
        text = message.get("text")
        await self.handle(text if text is not None else (message.get("bytes") or b""))

    async def handle(self, data: str | bytes) -> None:
        """Check, decode and run one message from the peer."""
        codec = self.codec
        if codec.raw:
            self.end(CloseCode.BAD_REQUEST, "raw mode is receive-only")
            return
        try:
            protocol.check_size(data, self.endpoint.max_frame_bytes)
        except FrameTooLarge as exc:
            self.end(CloseCode.MESSAGE_TOO_BIG, str(exc))
            return
        allowed = self.allow()
        if not allowed and self.strikes > max(1.0, self.endpoint.rate_limit):
            self.end(CloseCode.RATE_LIMITED, "rate limit exceeded")
            return
        assert codec.fmt is not None
        document: Any = None
        try:
            document = protocol.load(data, codec.fmt)
            if not allowed:
                raise RateLimited(self.endpoint.rate_limit)
            command = protocol.parse_command(document)
        except TidingsError as exc:
            self.send_error(protocol.request_id(document), exc)
            return
        await self.execute(command)

    async def execute(self, command: protocol.Command) -> None:
        request = command.id
        try:
            if isinstance(command, protocol.Subscribe):
                await self.subscribe(command)
                return
            result = await self.run(command)
        except TidingsError as exc:
            self.send_error(request, exc)
            return
        except Exception:
            logger.exception("%s failed", type(command).__name__.lower())
            self.send_reply(protocol.ErrorReply(request, ErrorCode.INTERNAL, "internal error"))
            return
        finally:
            self.started = True
        if request is not None:
            self.send_reply(protocol.Reply(request, result))

    async def run(self, command: protocol.Command) -> Any:
        hub = self.endpoint.hub
        if isinstance(command, protocol.Ping):
            return {}
        if isinstance(command, protocol.Connect):
            if self.started:
                raise ProtocolError("connect must be the first command of a connection")
            self.subscription.client = ClientInfo(self.client_id, None, command.info)
            return {"client": self.client_id}
        if isinstance(command, protocol.Unsubscribe):
            channel = validate_channel(command.channel)
            if not self.subscription.remove(channel):
                raise ProtocolError(f"not subscribed to {channel!r}", code=ErrorCode.NOT_SUBSCRIBED)
            return {"channel": channel}
        if isinstance(command, protocol.Publish):
            channel = validate_channel(command.channel)
            if not hub.options(channel).publish:
                raise PermissionDenied(channel, "publish")
            position = await hub.publish(
                channel, command.data, text=command.text, event=command.event, key=command.key
            )
            return {"channel": channel, "epoch": position.epoch, "offset": position.offset}
        if isinstance(command, protocol.History):
            channel = validate_channel(command.channel)
            if not hub.options(channel).subscribe:
                raise PermissionDenied(channel, "history")
            limit = command.limit if command.limit is not None else 100
            history = await hub.history(channel, since=command.since, limit=limit)
            return _history_result(channel, history.position, history.events, history.reset)
        assert isinstance(command, protocol.Presence)
        channel = validate_channel(command.channel)
        if not hub.options(channel).presence:
            raise PermissionDenied(channel, "presence")
        clients = await hub.presence(channel)
        return {
            "channel": channel,
            "clients": [
                {"client": client.client_id, "user": client.user_id, "info": client.info}
                for client in clients
            ],
        }

    async def subscribe(self, command: protocol.Subscribe) -> None:
        channel = self.endpoint.check_subscribe(command.channel, self.subscription)
        request = command.id
        answered = False

        def on_live(subscribed: Subscribed) -> None:
            nonlocal answered
            answered = True
            if request is not None:
                self.send_reply(protocol.Reply(request, _subscribed_result(subscribed)))

        try:
            await self.subscription.add(
                channel, since=command.since, notify_reset=request is None, on_live=on_live
            )
        except Exception:
            if not answered:
                raise
            # The channel is live and the reply went out: one reply per id, so
            # a later failure (delivering the replay) is logged, not answered.
            logger.exception("subscribing %s failed after the reply", channel)

    async def subscribe_all(self, channels: Iterable[str], cursor: dict[str, Position]) -> None:
        """Subscribe the channels named in the URL (validated already)."""
        try:
            for channel in channels:
                await self.subscription.add(channel, since=cursor.get(channel))
        except BackendUnavailable as exc:
            self.end(CloseCode.INTERNAL_ERROR, str(exc))
        except TidingsError as exc:
            self.end(CloseCode.BAD_REQUEST, str(exc))


def _close_reason(text: str) -> str:
    """``text`` cut to the 123 bytes of UTF-8 a close frame can carry (RFC 6455 5.5)."""
    data = text.encode("utf-8")
    if len(data) <= 123:
        return text
    return data[:120].decode("utf-8", "ignore") + "..."


def _subscribed_result(subscribed: Subscribed) -> dict[str, Any]:
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


# -- the endpoint ------------------------------------------------------------------------


class WebSocketEndpoint:
    """``GET /ws``: the Tidings WebSocket protocol on one hub (an ASGI app).

    Args:
        hub: The hub.
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
    """

    def __init__(
        self,
        hub: Hub,
        *,
        max_frame_bytes: int = 64 * 1024,
        rate_limit: float = 100.0,
        max_channels: int = 64,
        ping_interval: float = 20.0,
        pong_timeout: float = 20.0,
        outbox_max_bytes: int | None = None,
        overflow: OverflowPolicy | str | None = None,
        on_open: Callable[[int], None] | None = None,
    ) -> None:
        for name, value in (
            ("max_frame_bytes", max_frame_bytes),
            ("rate_limit", rate_limit),
            ("max_channels", max_channels),
            ("ping_interval", ping_interval),
            ("pong_timeout", pong_timeout),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, not {value}")
        self.hub = hub
        self.max_frame_bytes = max_frame_bytes
        self.rate_limit = rate_limit
        self.max_channels = max_channels
        self.stall_timeout = ping_interval + pong_timeout
        self.outbox_max_bytes = outbox_max_bytes
        self.overflow = overflow
        self.on_open = on_open
        self._stall_watch = _StallWatch(self.stall_timeout)
        self._codecs = {
            fmt: _Codec(fmt, max_frame_bytes=max_frame_bytes)
            for fmt in (Format.JSON, Format.MSGPACK, None)
        }

    def parse(self, scope: Scope) -> tuple[list[str], dict[str, Position]]:
        """Return the channels and resume cursor named in the URL, or raise a TidingsError."""
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        names = [value for key, value in query if key == "channel"]
        channels = list(dict.fromkeys(validate_channel(name) for name in names))
        if len(channels) > self.max_channels:
            raise ProtocolError(f"at most {self.max_channels} channels per connection")
        for channel in channels:
            if not self.hub.options(channel).subscribe:
                raise PermissionDenied(channel, "subscribe")
        cursor_text = next((value for key, value in query if key == "last_event_id"), "")
        return channels, decode_cursor(cursor_text)

    def check_subscribe(self, name: str, subscription: Subscription) -> str:
        channel = validate_channel(name)
        if not self.hub.options(channel).subscribe:
            raise PermissionDenied(channel, "subscribe")
        if channel in subscription.channels:
            raise ProtocolError(
                f"already subscribed to {channel!r}", code=ErrorCode.ALREADY_SUBSCRIBED
            )
        if len(subscription.channels) >= self.max_channels:
            raise ProtocolError(f"at most {self.max_channels} channels per connection")
        return channel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        try:
            channels, cursor = self.parse(scope)
        except TidingsError as exc:
            await _reject(exc, scope, send)
            return
        fmt = protocol.negotiate(scope.get("subprotocols") or ())
        raw = fmt is None and bool(channels)
        codec = self._codecs[None if raw else (fmt or Format.JSON)]
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if fmt is not None:
            accept["subprotocol"] = fmt.subprotocol
        client_id = secrets.token_urlsafe(9)
        subscription = self.hub.subscription(
            max_bytes=self.outbox_max_bytes,
            policy=self.overflow,
            client=None if raw else ClientInfo(client_id),
        )
        connection = _Connection(self, codec, subscription, client_id)
        try:
            await send(accept)
            if self.on_open is not None:
                self.on_open(1)
            try:
                fast: WebSocketFastWrite | None = scope.get("extensions", {}).get(FAST_WRITE)
                if fast is not None:
                    await self._serve_fast(connection, fast, channels, cursor)
                else:
                    await self._serve_asgi(connection, receive, send, channels, cursor)
            finally:
                if self.on_open is not None and not connection.handed_off:
                    self.on_open(-1)
        finally:
            if not connection.handed_off:
                subscription.close()

    async def _serve_fast(
        self,
        connection: _Connection,
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
        # _Connection.on_closed cleans up when it ends.
        connection.handed_off = True
        fast.hand_off(connection.message_received)

    async def _serve_asgi(
        self,
        connection: _Connection,
        receive: Receive,
        send: Send,
        channels: list[str],
        cursor: dict[str, Position],
    ) -> None:
        subscription = connection.subscription
        subscription.on_close(connection.on_closed)
        await connection.subscribe_all(channels, cursor)
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read(connection, receive), name="tidings-ws-reader")
        writer = loop.create_task(self._write(connection, send), name="tidings-ws-writer")
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
        if code != _GONE:
            # A peer that reads nothing never lets the close frame out; the
            # server closes the socket once this app returns.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_SEND_TIMEOUT):
                    await send({"type": "websocket.close", "code": code, "reason": reason})

    async def _read(self, connection: _Connection, receive: Receive) -> None:
        subscription = connection.subscription
        try:
            while not subscription.closed:
                message = await receive()
                if message["type"] != "websocket.receive":
                    connection.connection_lost()
                    return
                await connection.writable()
                await connection.receive(message)
        except Exception:
            logger.exception("WebSocket reader failed")
            connection.end(CloseCode.INTERNAL_ERROR, "internal error")

    async def _write(self, connection: _Connection, send: Send) -> None:
        subscription = connection.subscription
        codec = connection.codec
        key = "bytes" if codec.binary else "text"
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not connection.replies:
                    await subscription.wait()
                if subscription.closed:
                    return
                payloads, connection.replies = connection.replies, []
                connection._wake()
                items = subscription.take()
                if items:
                    payloads += codec.messages(items)
                text = key == "text"
                for payload in payloads:
                    # The stall watch reads the stamp: a send blocked past
                    # the heartbeat means the peer is gone or stopped.
                    connection.sending = loop.time()
                    await send(
                        {
                            "type": "websocket.send",
                            key: payload.decode("utf-8") if text else payload,
                        }
                    )
                    connection.sending = 0.0
        except OSError:  # the server says the peer went away
            connection.connection_lost()
        except Exception:
            logger.exception("WebSocket writer failed")
            connection.end(CloseCode.INTERNAL_ERROR, "internal error")


class _StallWatch:
    """Ends ASGI-path connections whose send stays blocked for a whole heartbeat.

    Plain ASGI has no pings; a peer that stopped reading (half-open, stopped)
    shows as a ``send`` that never returns. One task checks every open
    connection each quarter period, so no send pays for a timer of its own;
    it starts with the first connection and is cancelled with the last.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._connections: dict[_Connection, None] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, connection: _Connection) -> None:
        self._connections[connection] = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="tidings-ws-stall-watch"
            )

    def discard(self, connection: _Connection) -> None:
        self._connections.pop(connection, None)
        if not self._connections and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.timeout / 4)
            deadline = loop.time() - self.timeout
            for connection in list(self._connections):
                if 0.0 < connection.sending < deadline:
                    connection.end(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")


async def _reject(exc: TidingsError, scope: Scope, send: Send) -> None:
    """Refuse the handshake: an HTTP error with a JSON body when the server can send one."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = orjson.dumps({"error": {"code": exc.code, "message": str(exc)}})
        await send(
            {
                "type": "websocket.http.response.start",
                "status": http_status(exc),
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": CloseCode.BAD_REQUEST})
