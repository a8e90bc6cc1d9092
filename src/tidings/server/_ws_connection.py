"""One WebSocket connection: its state, its commands, its replies and its heartbeat watch.

Theory of operation
-------------------

A connection is a :class:`Connection` (slots only) shared by two flows:

* **commands**: each message is checked for size and rate, decoded, run
  against the hub and answered with exactly one reply when the command has an
  ``id``, one command at a time in arrival order. A ``subscribe`` answers
  from ``Subscription.add(on_live=…)``, so its reply is on the wire before the
  replayed events. On the fast path the connection is *handed off* once
  accepted: the ASGI call returns, the protocol hands each message to
  ``Connection.message_received``, and a worker task runs only while
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

Every command runs for the connection's :class:`~tidings.server.ops.Caller`,
authorised when it starts (a subscription once, never per delivery). A
connection whose principal has a token expiry holds one timer: it closes the
connection with 4401 at ``exp``, and a ``refresh`` (a token for the same
``sub``) swaps the caller and re-arms it.

The subscription closing is the one signal that a connection is over; its
reason picks the close code (``slow_consumer`` → 4008, hub shutdown → 4001;
a peer that left gets nothing). Errors in a command end in an error reply;
only an oversized message (1009), a rate-limit flood (4029), a raw-mode
client that sends (4500) and internal failures (1011) close the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from starlette.types import Message, Receive, Send

from tidings.errors import FrameTooLarge, ProtocolError, RateLimited, TidingsError
from tidings.hub import Subscribed, Subscription
from tidings.hub.subscription import CloseReason
from tidings.server import ops
from tidings.server._ws_codec import Codec
from tidings.server.auth import Kind
from tidings.server.errors import close_code
from tidings.server.logs import log_closed
from tidings.server.rates import TokenBucket
from tidings.server.writer import WebSocketFastWrite
from tidings.types import Position
from tidings.wire import protocol
from tidings.wire.codes import CloseCode, ErrorCode

if TYPE_CHECKING:
    from tidings.server.websocket import WebSocketEndpoint

__all__ = [
    "DISCONNECTED",
    "GONE",
    "MAX_PENDING_COMMANDS",
    "MAX_PENDING_REPLIES",
    "MAX_PENDING_REPLY_BYTES",
    "Connection",
    "StallWatch",
]

logger = logging.getLogger(__name__)

#: Replies a slow ASGI-path connection may have waiting before commands stop being read.
MAX_PENDING_REPLIES = 64
#: Bytes of replies a slow ASGI-path connection may have waiting before commands stop
#: being read (the one that passes it may be up to ``max_reply_bytes``).
MAX_PENDING_REPLY_BYTES = 64 * 1024
#: Commands a handed-off connection may have waiting before reading pauses.
MAX_PENDING_COMMANDS = 32
#: "Send no close frame": the peer is gone, or the server sends its own.
GONE = CloseCode.ABNORMAL_CLOSURE
#: The close reason of a connection closed from ``/admin``.
DISCONNECTED = "disconnected by the admin"


#: Close code and reason for each way a subscription can end.
_CLOSE_FOR = {
    CloseReason.SLOW_CONSUMER: (CloseCode.SLOW_CONSUMER, "slow consumer"),
    CloseReason.SHUTDOWN: (CloseCode.SHUTDOWN, "server shutdown"),
    CloseReason.CLOSED: (CloseCode.NORMAL, ""),
    # The peer leaving sets ``closing`` first; a subscription the hub
    # disconnected by itself (a delivery failed) is an internal error.
    CloseReason.DISCONNECT: (CloseCode.INTERNAL_ERROR, "internal error"),
}


def _nothing() -> None:
    pass


class Connection:
    """State of one WebSocket connection, and its fast-path write listener."""

    __slots__ = (
        "_writable",
        "caller",
        "channels",
        "client_id",
        "closing",
        "codec",
        "commands",
        "endpoint",
        "expiry",
        "fast",
        "handed_off",
        "inbox",
        "opened_at",
        "release",
        "replies",
        "reply_bytes",
        "sending",
        "stamp",
        "started",
        "strikes",
        "subscription",
        "worker",
    )

    def __init__(
        self,
        endpoint: WebSocketEndpoint,
        codec: Codec,
        subscription: Subscription,
        client_id: str,
        caller: ops.Caller,
    ) -> None:
        self.endpoint = endpoint
        self.codec = codec
        self.subscription = subscription
        self.client_id = client_id
        #: The most channels the connection held at once (for its closing log line).
        self.channels = 0
        #: Who runs the connection's commands; a ``refresh`` replaces it.
        self.caller = caller
        #: Closes the connection when its token expires (None: no expiry).
        self.expiry: asyncio.TimerHandle | None = None
        self.fast: WebSocketFastWrite | None = None
        #: Replies waiting for the writer task (ASGI path only), and their bytes.
        self.replies: list[bytes] = []
        self.reply_bytes = 0
        #: The close code and reason once the connection is ending.
        self.closing: tuple[int, str] | None = None
        self.started = False  # a command was handled (connect must come first)
        now = asyncio.get_running_loop().time()
        rate = endpoint.rate_limit
        self.commands = TokenBucket(rate, burst=rate, now=now)
        self.stamp = now
        self.strikes = 0.0
        #: When the pending ASGI send started (0.0: none pending), for the stall watch.
        self.sending = 0.0
        self._writable: asyncio.Future[None] | None = None
        #: Handed off (fast path): the connection outlives its ASGI call.
        self.handed_off = False
        #: Frees the connection's slot (``server/limits.py``) when a handed-off connection ends.
        self.release: Callable[[], None] = _nothing
        #: Messages waiting for the worker task, which exists only while some do.
        self.inbox: deque[str | bytes] | None = None
        self.worker: asyncio.Task[None] | None = None
        #: When it was accepted (Unix seconds), as listed by ``/admin``.
        self.opened_at = time.time()

    # -- listed by the app's registry (server/connections.py) ---------------------

    transport = "ws"

    @property
    def id(self) -> str:
        return self.client_id

    @property
    def peer(self) -> str:
        return self.caller.peer

    def disconnect(self) -> None:
        """Close from the server side (``/admin``) with 1000; the client may reconnect."""
        self.end(CloseCode.NORMAL, DISCONNECTED)

    # -- ending ----------------------------------------------------------------

    def end(self, code: int, reason: str = "") -> None:
        """Close the connection with ``code`` (nothing is sent for a peer that left)."""
        if self.closing is None:
            self.closing = (code, close_reason(reason))
        self.subscription.close(CloseReason.CLOSED)

    def close_args(self) -> tuple[int, str]:
        if self.closing is not None:
            return self.closing
        reason = self.subscription.close_reason or CloseReason.CLOSED
        code, text = _CLOSE_FOR[reason]
        return int(code), text

    def expire_at(self, expires: float | None) -> None:
        """(Re)arm the one expiry timer: at ``expires`` (Unix seconds) close with 4401."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if expires is not None and not self.subscription.closed:
            delay = max(0.0, expires - time.time())
            self.expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        self.expiry = None
        self.end(CloseCode.TOKEN_EXPIRED, "token expired")

    def on_closed(self, subscription: Subscription) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.closing is None:
            self.closing = self.close_args()
        code, reason = self.closing
        fast = self.fast
        if fast is not None and code != GONE:
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
            self.endpoint.closed(self)
            self.release()
            self.log_end()

    def log_end(self) -> None:
        """Leave the connection's closing line in the log (``server/logs.py``)."""
        code, text = self.closing if self.closing is not None else self.close_args()
        reason: str = self.subscription.close_reason or CloseReason.DISCONNECT
        if code == CloseCode.TOKEN_EXPIRED:
            reason = "expired"
        elif code == CloseCode.INTERNAL_ERROR:
            reason = "error"
        log_closed("ws", self.client_id, self.channels, reason, code=code, close_reason=text)

    # -- fast-path listener (server/fastwrite.py calls these) ---------------------

    def pause_writing(self) -> None:
        self.subscription.pause_writing()

    def resume_writing(self) -> None:
        self.subscription.resume_writing()
        self._wake()

    def connection_lost(self) -> None:
        self.closing = self.closing or (GONE, "")
        self.subscription.close(CloseReason.DISCONNECT)

    def shutdown(self) -> None:
        self.closing = self.closing or (GONE, "")  # the server sends its own close
        self.subscription.close(CloseReason.SHUTDOWN)

    # -- flow control for commands -------------------------------------------------

    def blocked(self) -> bool:
        """Whether replies cannot go out now, so the next command must wait."""
        if self.subscription.closed:
            return False
        fast = self.fast
        if fast is not None:
            return fast.paused
        # Replies wait in memory until the server takes them: a few small ones,
        # or a single large one (at most max_reply_bytes), never a pile of them.
        return (
            len(self.replies) >= MAX_PENDING_REPLIES or self.reply_bytes >= MAX_PENDING_REPLY_BYTES
        )

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
            self.reply_bytes += len(payload)
            self.subscription.wakeup()

    def send_error(self, request: protocol.RequestId, exc: TidingsError) -> None:
        retry_after = exc.retry_after
        if retry_after is not None:
            retry_after = round(retry_after, 3) or 0.001
        self.send_reply(protocol.ErrorReply(request, exc.code, str(exc), retry_after))

    # -- commands ----------------------------------------------------------------------

    def allow(self) -> bool:
        """Take a token from the connection's command bucket (``rate_limit`` per
        second, bursts of as many).

        Refusals are counted in ``strikes``, which drains at the same rate,
        so it only grows while a client sends at more than twice the limit.
        """
        now = asyncio.get_running_loop().time()
        self.strikes = max(0.0, self.strikes - (now - self.stamp) * self.endpoint.rate_limit)
        self.stamp = now
        if self.commands.take(now) == 0.0:
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
            self.end(close_code(exc), str(exc))
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
            gate = self.caller.gate
            if gate is not None and isinstance(document, dict) and document.get("op") == "publish":
                gate.refuse(exc)  # ops.publish counts the refusals of a well-formed one
            self.send_error(protocol.request_id(document), exc)
            return
        await self.execute(command)

    async def execute(self, command: protocol.Command) -> None:
        request = command.id
        refused = False
        try:
            if isinstance(command, protocol.Subscribe):
                await self.subscribe(command)
                return
            if isinstance(command, protocol.Refresh):
                self.refresh(command)
                return
            result = await self.run(command)
        except TidingsError as exc:
            refused = True
            self.send_error(request, exc)
            return
        except Exception:
            logger.exception("%s failed", type(command).__name__.lower())
            self.send_reply(protocol.ErrorReply(request, ErrorCode.INTERNAL, "internal error"))
            return
        finally:
            # A refused connect (its info too large) may be sent again, fixed.
            if not (refused and isinstance(command, protocol.Connect)):
                self.started = True
        if request is not None:
            self.send_reply(protocol.Reply(request, result))

    async def run(self, command: protocol.Command) -> Any:
        caller = self.caller
        if isinstance(command, protocol.Ping):
            return {}
        if isinstance(command, protocol.Connect):
            if self.started:
                raise ProtocolError("connect must be the first command of a connection")
            principal = caller.principal
            user = principal.sub if principal.kind is Kind.CLIENT else None
            if caller.info is None:
                self.subscription.client = ops.client_info(
                    self.client_id,
                    user,
                    command,
                    max_info_bytes=self.endpoint.presence_info_max_bytes,
                )
            # else the on_connect hook's info stays the presence info: the server's word wins.
            return {"client": self.client_id}
        if isinstance(command, protocol.Unsubscribe):
            return ops.unsubscribe(self.subscription, command)
        if isinstance(command, protocol.Publish):
            return await ops.publish(caller, command)
        max_reply_bytes = self.endpoint.max_reply_bytes
        if isinstance(command, protocol.History):
            return await ops.history(caller, command, max_reply_bytes=max_reply_bytes)
        assert isinstance(command, protocol.Presence)
        return await ops.presence(caller, command, max_reply_bytes=max_reply_bytes)

    def refresh(self, command: protocol.Refresh) -> None:
        """Swap the connection's token for a fresh one of the same subject.

        An invalid token is an ``unauthorized`` reply, a token of another
        subject (or a connection opened without a token) ``permission_denied``;
        either way the connection keeps its old token and its timer.

        Raises:
            Unauthorized: the token is refused.
        """
        caller = self.caller
        principal = caller.authority.client_principal(command.token)
        current = caller.principal
        if current.kind is not Kind.CLIENT or principal.sub != current.sub:
            message = "a refresh token must name the subject the connection was opened with"
            self.send_reply(protocol.ErrorReply(command.id, ErrorCode.PERMISSION_DENIED, message))
            return
        self.caller = caller.with_principal(principal)
        self.expire_at(principal.expires)
        if command.id is not None:
            expires = principal.expires
            shown = int(expires) if expires is not None and expires.is_integer() else expires
            self.send_reply(protocol.Reply(command.id, {"expires": shown}))

    async def subscribe(self, command: protocol.Subscribe) -> None:
        request = command.id
        answered = False

        def on_live(subscribed: Subscribed) -> None:
            nonlocal answered
            answered = True
            self.channels = max(self.channels, len(self.subscription.channels))
            if request is not None:
                self.send_reply(protocol.Reply(request, ops.subscribed_result(subscribed)))

        try:
            await ops.subscribe(
                self.caller,
                self.subscription,
                command,
                max_channels=self.endpoint.max_channels,
                notify_reset=request is None,
                on_live=on_live,
            )
        except Exception:
            if not answered:
                raise
            # The channel is live and the reply went out: one reply per id, so
            # a later failure (delivering the replay) is logged, not answered.
            logger.exception("subscribing %s failed after the reply", command.channel)

    async def subscribe_all(self, channels: Iterable[str], cursor: dict[str, Position]) -> None:
        """Subscribe the channels named in the URL (validated already)."""
        try:
            for channel in channels:
                await self.subscription.add(channel, since=cursor.get(channel))
            self.channels = len(self.subscription.channels)
        except TidingsError as exc:
            self.end(close_code(exc), str(exc))

    async def read(self, receive: Receive) -> None:
        """ASGI path: run the peer's messages until the connection ends."""
        subscription = self.subscription
        try:
            while not subscription.closed:
                message = await receive()
                if message["type"] != "websocket.receive":
                    self.connection_lost()
                    return
                await self.writable()
                await self.receive(message)
        except Exception:
            logger.exception("WebSocket reader failed")
            self.end(CloseCode.INTERNAL_ERROR, "internal error")

    async def write(self, send: Send) -> None:
        """ASGI path: send replies, then queued events in batches, until the connection ends."""
        subscription = self.subscription
        codec = self.codec
        key = "bytes" if codec.binary else "text"
        try:
            while True:
                if not self.replies:
                    await subscription.wait()
                if subscription.closed:
                    return
                text = key == "text"
                replies = self.replies
                while replies:
                    # A reply stays counted until the server has taken it, so a
                    # peer that reads nothing holds one answer here, not many.
                    payload = replies[0]
                    await self._send(send, key, payload.decode("utf-8") if text else payload)
                    del replies[0]
                    self.reply_bytes -= len(payload)
                    self._wake()
                    if subscription.closed:
                        return
                items = subscription.take()
                for payload in codec.messages(items) if items else ():
                    await self._send(send, key, payload.decode("utf-8") if text else payload)
        except OSError:  # the server says the peer went away
            self.connection_lost()
        except Exception:
            logger.exception("WebSocket writer failed")
            self.end(CloseCode.INTERNAL_ERROR, "internal error")

    async def _send(self, send: Send, key: str, payload: str | bytes) -> None:
        # The stall watch reads the stamp: a send blocked past the heartbeat
        # means the peer is gone or stopped.
        self.sending = asyncio.get_running_loop().time()
        await send({"type": "websocket.send", key: payload})
        self.sending = 0.0


def close_reason(text: str) -> str:
    """``text`` cut to the 123 bytes of UTF-8 a close frame can carry (RFC 6455 5.5)."""
    data = text.encode("utf-8")
    if len(data) <= 123:
        return text
    return data[:120].decode("utf-8", "ignore") + "..."


class StallWatch:
    """Ends ASGI-path connections whose send stays blocked for a whole heartbeat.

    Plain ASGI has no pings; a peer that stopped reading (half-open, stopped)
    shows as a ``send`` that never returns. One task checks every open
    connection each quarter period, so no send pays for a timer of its own;
    it starts with the first connection and is cancelled with the last.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._connections: dict[Connection, None] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, connection: Connection) -> None:
        self._connections[connection] = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="tidings-ws-stall-watch"
            )

    def discard(self, connection: Connection) -> None:
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
