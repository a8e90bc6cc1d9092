"""Socket: the Tidings WebSocket protocol with reconnect, exact resume and an offline queue.

::

    async with Socket("ws://127.0.0.1:8000/ws") as socket:
        chat = await socket.subscribe("chat:lobby")
        await socket.publish("chat:lobby", {"text": "hi"})  # returns the Position
        async for event in chat:
            if isinstance(event, Reset):
                ...  # a gap the server could not fill: reload state
            else:
                print(event.offset, event.data)

Theory of operation
-------------------

One *runner* task owns the connection. It connects (``websockets``, the
``tidings.v1.json`` or ``tidings.v1.msgpack`` subprotocol), then runs three
tasks on it: the *reader*, which matches replies to requests by id and hands
pushes to their :class:`~tidings.client.SocketSubscription`; the *heartbeat*, which
sends a WebSocket ping every ``ping_interval`` seconds and drops the
connection when the pong is later than ``ping_timeout``; and the
*handshake*, which sends ``connect``, re-subscribes every channel with
``since`` = the position of the last event received, starts the *sender*
(which sends the publish queue in call order, paced under the server's rate
limit) and, once the subscribe replies are in, marks the socket ``open``.
Handlers run in a task per subscription, never in the reader.

Every publish goes through the queue (``_pending.OfflineQueue``), bounded by
``queue_limit``. When the connection ends, requests in flight are settled:
publishes go back to the queue in call order (each keeps the idempotency key
drawn at its first call, so one the server already had lands once), reads
are sent again on the next connection within their deadline. The runner
waits a full-jitter backoff delay and connects again. Close codes 4500-4999
(and 1002, 1007, 1009) and handshake answers 400/401/403/404 are final:
everything pending fails with the error and iterators raise it.

Tokens. The handshake carries ``token`` as ``Authorization: Bearer``. With
``get_token``, the socket asks it for a token before the first connection
(when no ``token`` is given), after a close with 4401 (the token expired
unrefreshed) and after a 401 handshake answer to a token that was not fresh
from ``get_token``; it then connects again at once, with no backoff delay,
and resubscribes from its positions as after any drop. A 401 to a fresh
token is final, as is a 403. While a connection lives, the *refresher* task
reads the token's ``exp`` (unverified) and, a little before it, sends the
``refresh`` op with a token from ``get_token``, so the connection never has
to close; if that fails, the server's 4401 close and the reconnection above
take over.

Positions are tracked per subscription from the replies and pushes the
reader sees, in wire order, so a subscribe reply (which the server always
sends before that channel's events) is applied before the events it
precedes; an event at or below the last one delivered (in its epoch) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WebSocketClosed
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.protocol import State
from websockets.typing import Subprotocol

from tidings.client._errors import check_url, stream_rejected
from tidings.client._pending import (
    Dropped,
    OfflineQueue,
    Outgoing,
    Pacer,
    Request,
    Requests,
    retry_after,
)
from tidings.client._reconnect import TERMINAL_STATUSES, ConnectionState
from tidings.client._token import AsyncTokenSource, authorization, fetch_token, token_expiry
from tidings.client.backoff import Backoff
from tidings.client.subscription import (
    Handler,
    HistoryPage,
    Member,
    SocketSubscription,
    event_from,
)
from tidings.errors import (
    AlreadySubscribed,
    ConnectionClosed,
    ProtocolError,
    ReconnectExhausted,
    RequestTimeout,
    TidingsError,
)
from tidings.types import Position, deprecated_name
from tidings.wire import protocol
from tidings.wire.codes import CloseCode, should_reconnect
from tidings.wire.protocol import Format
from tidings.wire.reset import Reset

__all__ = ["Socket", "close_error", "socket_url", "split_frame"]

logger = logging.getLogger(__name__)

_MISSING: Any = object()

#: The refresh is sent this long before ``exp`` at most (a third of the
#: token's remaining life at most, for short-lived tokens).
REFRESH_BEFORE = 30.0


# -- sans-I/O helpers -------------------------------------------------------------


def socket_url(url: str) -> str:
    """The WebSocket URL for ``url``: ``http(s)`` becomes ``ws(s)``, an empty path ``/ws``.

    Raises:
        InvalidURL: ``url`` is not a ``ws(s)://`` or ``http(s)://`` URL with a host.
    """
    parts = urlsplit(check_url(url, ("ws", "wss", "http", "https")))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def close_error(code: int | None, reason: str = "") -> ConnectionClosed:
    """What a close with ``code`` means for the client: ``reconnect`` is false for
    the final codes (4500-4999, 1002, 1007, 1009), the same table as tidings.js.
    No code at all (the connection dropped) is 1006, which reconnects."""
    code = CloseCode.ABNORMAL_CLOSURE if code is None else code
    return ConnectionClosed(code, reason, reconnect=should_reconnect(code))


def split_frame(data: str | bytes, fmt: Format) -> list[Any]:
    """The messages of one frame: a single message, or a batch (an array) of them."""
    document = protocol.load(data, fmt)
    return document if isinstance(document, list) else [document]


# -- the socket --------------------------------------------------------------------------


class Socket:
    """A Tidings WebSocket connection that reconnects, resumes exactly and queues
    publishes while offline. Use as ``async with Socket(url) as socket``.

    Args:
        url: ``ws://host:port/ws`` (``http://host:port`` works too; an empty
            path becomes ``/ws``).
        format: ``"json"`` (``tidings.v1.json``) or ``"msgpack"``.
        info: Sent with ``connect`` on every connection; others see it in presence.
        backoff: The reconnection schedule (exponential, full jitter, forever by default).
        headers: Extra handshake headers (e.g. authorization).
        request_timeout: Seconds a command waits for its reply
            (:class:`~tidings.errors.RequestTimeout` after that).
        ping_interval: Seconds between the client's pings; None disables them.
        ping_timeout: Seconds a pong may take before the connection counts as
            dead and is replaced.
        open_timeout: Seconds the opening handshake may take.
        close_timeout: Seconds :meth:`aclose` waits for the server's close frame.
        queue_limit: Most publishes waiting to be sent, while disconnected or
            held back by ``rate_limit`` (:class:`~tidings.errors.QueueFull` past it).
        rate_limit: Most commands per second the client sends (the server's
            ``ws_rate_limit``, 100 by default); None sends without pacing.
        buffer: Most unread items a subscription iterator holds before reading
            from the server pauses.
        max_size: Largest message accepted from the server, in bytes.
        on_state: Called with each :class:`~tidings.client.ConnectionState` change.
        token: A token, sent in the handshake as ``Authorization: Bearer <token>``.
        get_token: A callable (plain or async) returning a fresh token: called
            before the first connection when no ``token`` is given, before the
            connection that follows an expiry (close code 4401) or a 401
            handshake answer, and a little before the token's ``exp`` to
            refresh the live connection. What it raises stops the socket.
    """

    def __init__(
        self,
        url: str,
        *,
        format: Literal["json", "msgpack"] = "json",
        info: Any = None,
        backoff: Backoff | None = None,
        headers: dict[str, str] | None = None,
        request_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 20.0,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        queue_limit: int = 1000,
        rate_limit: float | None = 100.0,
        buffer: int = 10000,
        max_size: int | None = 16 * 1024 * 1024,
        on_state: Callable[[ConnectionState], None] | None = None,
        token: str | None = None,
        get_token: AsyncTokenSource | None = None,
    ) -> None:
        self.url = socket_url(url)
        self.format = Format(format)
        self.info = info
        self.backoff = backoff or Backoff()
        self.state = ConnectionState.CLOSED
        #: The client id the server gave this connection (with ``info``), or None.
        self.client_id: str | None = None
        #: Close code and reason of the last connection that ended.
        self.close_code: int | None = None
        self.close_reason = ""
        self._headers = dict(headers or {})
        self._token = token
        self._get_token = get_token
        self._needs_token = get_token is not None and token is None
        self._fresh = False  # the token came from get_token and no handshake answered it yet
        self._at_once = False  # the next connection needs no backoff delay (a new token)
        self._request_timeout = request_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._buffer = buffer
        self._max_size = max_size
        self._on_state = on_state
        self._requests = Requests(on_stale=self._stale)
        self._queue = OfflineQueue(queue_limit)
        self._queued = asyncio.Event()  # set when the queue may hold a publish to send
        self._pacer = Pacer(rate_limit)
        #: Loop time before which no queued publish is sent (the server asked to wait).
        self._hold_until = 0.0
        self._subscriptions: dict[str, SocketSubscription] = {}
        self._ws: ClientConnection | None = None
        self._generation = 0
        self._ready = asyncio.Event()  # set when open, and when closed for good
        self._stopped = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._closed_by_client = False
        self._was_open = False
        self._ended: list[SocketSubscription] = []  # subscriptions whose handler may still run
        self._final: BaseException | None = None

    @property
    def queued(self) -> int:
        """How many publishes wait to be sent (the offline queue)."""
        return len(self._queue)

    @property
    def subscriptions(self) -> dict[str, SocketSubscription]:
        """The channels of this socket (a copy)."""
        return dict(self._subscriptions)

    # -- lifecycle --

    async def __aenter__(self) -> Socket:
        """Connect; return once the connection is open (retrying with backoff).

        Raises:
            StreamRejected: the server refused the handshake (400/401/403/404).
            ConnectionClosed: the server closed with a final close code.
            ReconnectExhausted: ``backoff.max_attempts`` attempts failed.
        """
        if self._runner is not None or self._final is not None:
            raise RuntimeError("a Socket can be entered once")
        self._set_state(ConnectionState.CONNECTING)
        self._runner = asyncio.get_running_loop().create_task(
            self._run(), name=f"tidings-socket {self.url}"
        )
        try:
            await self._ready.wait()
        except BaseException:
            await self.aclose()
            raise
        if self._final is not None:
            error = self._final
            await self.aclose()
            raise error
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (1000) and stop; pending publishes and requests
        fail with :class:`~tidings.errors.ConnectionClosed`, iterators end."""
        self._closing = True
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        if self._final is None:
            self._closed_by_client = True
            self._finish(
                ConnectionClosed(CloseCode.NORMAL, "closed by the client", reconnect=False)
            )
        ended, self._ended = self._ended, []
        for subscription in ended:
            await subscription.stop()
        self._set_state(ConnectionState.CLOSED)

    async def wait_closed(self) -> None:
        """Wait until the socket stops; raise the final error when it stopped on one."""
        await self._stopped.wait()
        if self._final is not None and not self._closed_by_us():
            raise self._final

    # -- operations --

    async def subscribe(
        self,
        channel: str,
        *,
        since: Position | tuple[str, int] | None = None,
        handler: Handler | None = None,
    ) -> SocketSubscription:
        """Receive ``channel``; with ``since``, first every event after that position.

        Without ``handler`` iterate the returned :class:`SocketSubscription`; with
        one, each item is passed to it (awaited when it is a coroutine). A
        position that cannot be resumed arrives as a ``Reset`` item. While
        disconnected the channel is subscribed on the next connection.

        Raises:
            RequestRejected: the server refused (``code``: ``permission_denied``,
                ``invalid_channel``, …).
            AlreadySubscribed: this socket has the channel already.
        """
        self._check_usable()
        if channel in self._subscriptions:
            raise AlreadySubscribed(channel)
        subscription = SocketSubscription(
            channel,
            since=Position(*since) if since is not None else None,
            handler=handler,
            buffer=self._buffer,
            socket=self,
        )
        self._subscriptions[channel] = subscription
        ws = self._ws
        if ws is not None and self.state is ConnectionState.OPEN:
            try:
                await self._subscribe_now(ws, subscription)
            except Dropped:
                pass  # the next connection subscribes it
            except BaseException:
                if self._subscriptions.get(channel) is subscription:
                    del self._subscriptions[channel]
                subscription.close()
                raise
        return subscription

    async def unsubscribe(self, channel: str) -> None:
        """Leave ``channel``; its iterator ends after what is buffered."""
        subscription = self._subscriptions.pop(channel, None)
        if subscription is None:
            return
        subscription.close()
        # Its handler still gets what is buffered; aclose() stops it if need be.
        self._ended = [s for s in (*self._ended, subscription) if s.handling]
        ws = self._ws
        if (
            ws is not None
            and self.state is ConnectionState.OPEN
            and subscription.generation == self._generation
        ):
            with contextlib.suppress(Dropped):
                await self._call(ws, protocol.Unsubscribe(None, channel), "unsubscribe")

    async def publish(
        self,
        channel: str,
        data: Any = _MISSING,
        *,
        text: str | None = None,
        event: str = "message",
        key: str | None = None,
        type: str | None = None,
    ) -> Position:
        """Publish JSON ``data`` (or plain ``text``) as an event of type ``event``
        and wait for the server's ack. (``type=`` is the deprecated name of ``event=``.)

        Each publish carries an idempotency ``key`` (a random one unless
        given). Publishes go out in the order of the calls; while disconnected
        they wait in the offline queue and are sent on the next connection. One
        in flight when the connection drops is sent again with the same key, so
        it lands exactly once. A publish not acknowledged within
        ``request_timeout`` is taken as a sign of a dead connection: the socket
        reconnects and sends it again. So the call returns once the server has
        the event, however long that takes, and fails only when the server
        refuses it or the socket stops for good. A publish the server refuses
        for now (``rate_limited``, or ``unavailable`` while it shuts down, each
        with a ``retry_after``) goes back to the head of the queue, and the
        queue waits that long before it sends again. Cancelling the call withdraws
        a publish not sent yet (wrap it in ``asyncio.timeout`` to bound the wait).

        Returns:
            The event's position (for a repeated key, the first publish's).

        Raises:
            QueueFull: ``queue_limit`` publishes are waiting to be sent.
            IntegerOutOfRange: ``data`` holds an integer outside
                [-2**63, 2**64-1], which the server would refuse.
            PublishRejected: the server refused it (``code`` says why;
                ``status`` is None).
            ConnectionClosed, ReconnectExhausted, StreamRejected: the socket
                stopped for good before the server had the publish.
        """
        if type is not None:
            deprecated_name("Socket.publish(type=...)", "Socket.publish(event=...)")
            event = type
        self._check_usable()
        if (data is _MISSING) == (text is None):
            raise TypeError("publish() takes data (JSON) or text, exactly one")
        request_id = self._requests.next_id()
        command = protocol.Publish(
            request_id,
            channel,
            None if text is not None else data,
            text,
            event,
            key or uuid.uuid4().hex,
        )
        payload = protocol.encode_command(command, self.format)  # refuses bad data here
        outgoing = Outgoing(request_id, payload, asyncio.get_running_loop().create_future())
        self._queue.put(outgoing)
        self._queued.set()
        result = await outgoing.future
        return Position(result["epoch"], result["offset"])

    async def history(
        self,
        channel: str,
        *,
        since: Position | tuple[str, int] | None = None,
        limit: int | None = None,
    ) -> HistoryPage:
        """The events of ``channel`` kept by the server (after ``since``, at most ``limit``)."""
        command = protocol.History(
            None, channel, Position(*since) if since is not None else None, limit
        )
        result = await self._read(command, "history")
        reset = result.get("reset")
        following = result.get("next")
        return HistoryPage(
            channel,
            Position(result["epoch"], result["offset"]),
            [event_from(channel, event) for event in result["events"]],
            None
            if reset is None
            else Reset(channel, Position(reset["epoch"], reset["offset"]), reset["reason"]),
            None if following is None else Position(following["epoch"], following["offset"]),
            bool(result.get("more", False)),
        )

    async def presence(self, channel: str) -> list[Member]:
        """The clients subscribed to ``channel``, sorted by client id (every page of them)."""
        members: list[Member] = []
        cursor: str | None = None
        while True:
            result = await self._read(protocol.Presence(None, channel, cursor), "presence")
            members += [
                Member(entry["client"], entry["user"], entry["info"]) for entry in result["clients"]
            ]
            following = result.get("next")
            if not following or following == cursor:
                return members
            cursor = following

    async def ping(self) -> float:
        """Round-trip a ``ping`` command; return the seconds it took."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._read(protocol.Ping(None), "ping")
        return loop.time() - started

    # -- requests --

    def _check_usable(self) -> None:
        if self._final is not None:
            raise self._final
        if self._runner is None:
            raise RuntimeError("use the Socket inside 'async with'")

    def _closed_by_us(self) -> bool:
        return self._closed_by_client

    def _stale(self, request: Request) -> None:
        """A publish got no ack in time: take the connection for dead."""
        ws = self._ws
        if ws is not None:
            logger.info(
                "socket %s: no ack within %g s; dropping the connection",
                self.url,
                self._request_timeout,
            )
            ws.transport.abort()

    def _open_request(self, ws: ClientConnection, request_id: int, request: Request) -> None:
        if ws is not self._ws:
            raise Dropped
        self._requests.open(request_id, request, timeout=self._request_timeout)

    async def _send(self, ws: ClientConnection, payload: bytes) -> None:
        # On a closed connection the reader sees the end, and the request is settled then.
        with contextlib.suppress(WebSocketClosed):
            await ws.send(payload, text=not self.format.binary)

    async def _start(
        self,
        ws: ClientConnection,
        command: protocol.Command,
        op: str,
        subscription: SocketSubscription | None = None,
    ) -> asyncio.Future[Any]:
        """Send ``command`` on ``ws``; return the future of its reply."""
        await self._pace()
        request_id = self._requests.next_id()
        payload = protocol.encode_command(dataclasses.replace(command, id=request_id), self.format)
        return await self._start_payload(ws, request_id, payload, op, subscription)

    async def _start_payload(
        self,
        ws: ClientConnection,
        request_id: int,
        payload: bytes,
        op: str,
        subscription: SocketSubscription | None = None,
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._open_request(ws, request_id, Request(op, future, subscription=subscription))
        await self._send(ws, payload)
        return future

    async def _call(self, ws: ClientConnection, command: protocol.Command, op: str) -> Any:
        """Send ``command`` on ``ws`` and wait for its reply."""
        return await (await self._start(ws, command, op))

    async def _read(self, command: protocol.Command, op: str) -> Any:
        """Run a read-only command, waiting for a connection and repeating it
        after a drop, all within ``request_timeout``."""
        self._check_usable()
        try:
            async with asyncio.timeout(self._request_timeout):
                while True:
                    await self._ready.wait()
                    self._check_usable()
                    ws = self._ws
                    if ws is None:  # the connection is ending; _ready is cleared soon
                        await asyncio.sleep(0)
                        continue
                    try:
                        return await self._call(ws, command, op)
                    except Dropped:
                        continue
        except TimeoutError as exc:
            if isinstance(exc, RequestTimeout):
                raise
            raise RequestTimeout(op, self._request_timeout) from None

    async def _pace(self) -> None:
        delay = self._pacer.reserve(asyncio.get_running_loop().time())
        if delay:
            await asyncio.sleep(delay)

    async def _send_queue(self, ws: ClientConnection) -> None:
        """Send the queued publishes, in order, for as long as ``ws`` lives."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            hold = self._hold_until - loop.time()
            if hold > 0:
                await asyncio.sleep(hold)
                continue
            await self._pace()
            outgoing = self._queue.pop()
            if outgoing is None:
                continue  # withdrawn by their callers
            # From here the request table owns it: a drop puts it back in the queue.
            try:
                self._open_request(ws, outgoing.id, Request("publish", outgoing.future, outgoing))
            except Dropped:
                self._queue.requeue([outgoing])
                raise
            await self._send(ws, outgoing.payload)

    async def _subscribe_now(self, ws: ClientConnection, subscription: SocketSubscription) -> None:
        await (await self._start_subscribe(ws, subscription))

    # -- the connection --

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self.state:
            logger.debug("socket %s: %s", self.url, state)
            self.state = state
            if self._on_state is not None:
                self._on_state(state)

    async def _run(self) -> None:
        try:
            while True:
                error = await self._session()
                if self._closing:
                    return
                if self._was_open:
                    self._set_state(ConnectionState.RECONNECTING)
                if self._at_once:
                    self._at_once = False
                    continue
                if self.backoff.exhausted:
                    raise ReconnectExhausted(self.backoff.attempt, error)
                await asyncio.sleep(self.backoff.next_delay())
        except TidingsError as exc:
            logger.info("socket %s stopped: %s", self.url, exc)
            self._finish(exc)
        except Exception as exc:
            logger.exception("socket %s failed", self.url)
            self._finish(exc)

    async def _session(self) -> BaseException | None:
        """One connection, from opening to its end; return why it ended (for
        the backoff) or raise a final error."""
        if self._needs_token and self._get_token is not None:
            self._token = await fetch_token(self._get_token)
            self._needs_token, self._fresh = False, True
        headers = dict(self._headers)
        if self._token is not None:
            headers.update(authorization(self._token))
        fresh, self._fresh = self._fresh, False
        try:
            ws = await connect(
                self.url,
                subprotocols=[Subprotocol(self.format.subprotocol)],
                additional_headers=headers,
                open_timeout=self._open_timeout,
                close_timeout=self._close_timeout,
                ping_interval=None,  # our heartbeat, below, drops a dead peer at once
                max_size=self._max_size,
                compression=None,  # the server shares pre-encoded frames: no deflate
                proxy=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401 and self._get_token is not None and not fresh:
                logger.info("socket %s: token refused; asking for a new one", self.url)
                self._needs_token = self._at_once = True
                return exc
            if status in TERMINAL_STATUSES:
                raise stream_rejected(status, bytes(exc.response.body or b"")) from exc
            logger.info("socket %s: handshake answered %s", self.url, status)
            return exc
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            logger.info("socket %s: cannot connect: %r", self.url, exc)
            return exc
        final = True  # until _serve returns: what it raises ends the socket
        try:
            ended = await self._serve(ws)
            final = False
            return ended
        finally:
            await self._drop(ws, settle=not final)

    async def _serve(self, ws: ClientConnection) -> BaseException:
        if ws.subprotocol != self.format.subprotocol:
            raise ProtocolError(f"the server did not accept {self.format.subprotocol}")
        self._generation += 1
        self._ws = ws
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read_loop(ws), name="tidings-socket-reader")
        heartbeat = loop.create_task(self._heartbeat(ws), name="tidings-socket-heartbeat")
        handshake = loop.create_task(self._handshake(ws), name="tidings-socket-handshake")
        refresher = loop.create_task(self._refresher(ws), name="tidings-socket-refresher")
        tasks = (handshake, heartbeat, refresher, reader)
        try:
            await asyncio.wait({reader, handshake}, return_when=asyncio.FIRST_COMPLETED)
            if handshake.done():
                handshake.result()  # a final error (connect refused) ends the socket
            await reader
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        closed = close_error(ws.close_code, ws.close_reason or "")
        self.close_code, self.close_reason = closed.close_code, closed.reason
        if not closed.reconnect:
            raise closed
        if closed.close_code == CloseCode.TOKEN_EXPIRED:
            # Without get_token the same token is sent again, and its 401 is final.
            self._needs_token = self._get_token is not None
            self._at_once = True
        logger.info("socket %s: %s", self.url, closed)
        return closed

    async def _drop(self, ws: ClientConnection, *, settle: bool) -> None:
        """The connection is over: settle its requests (unless the socket stops,
        and they fail with its error), then close it."""
        if self._ws is ws:
            self._ws = None
        if settle:
            self._ready.clear()
            again: list[Outgoing] = []
            for request in self._requests.drop_all():
                if request.outgoing is not None:
                    again.append(request.outgoing)
                elif not request.future.done():
                    request.future.set_exception(Dropped())
            self._queue.requeue(again)
            self._queued.set()
        if ws.state is not State.CLOSED:
            if self._closing:
                with contextlib.suppress(Exception):
                    await ws.close()
            else:
                ws.transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._close_timeout):
                await ws.wait_closed()

    async def _handshake(self, ws: ClientConnection) -> None:
        """Connect, subscribe every channel, then send the queue while the connection lives."""
        sender: asyncio.Task[None] | None = None
        replies: list[tuple[SocketSubscription, asyncio.Future[Any]]] = []
        try:
            if self.info is not None:
                result = await self._call(ws, protocol.Connect(None, self.info), "connect")
                self.client_id = result.get("client")
            while True:
                todo = [s for s in self._subscriptions.values() if s.generation != self._generation]
                if not todo:
                    break
                replies = []
                for subscription in todo:
                    replies.append((subscription, await self._start_subscribe(ws, subscription)))
                if sender is None:
                    # The queued publishes follow the subscribes, so every
                    # channel of this socket sees them.
                    sender = asyncio.get_running_loop().create_task(
                        self._send_queue(ws), name="tidings-socket-sender"
                    )
                for subscription, reply in replies:
                    await self._settle_subscribe(subscription, reply)
            # No await since the loop found nothing left: a channel subscribed
            # from now on is sent at once.
            self.backoff.reset()
            self._was_open = True
            self._set_state(ConnectionState.OPEN)
            self._ready.set()
            if sender is None:
                await self._send_queue(ws)
            else:
                await sender
        except (RequestTimeout, Dropped) as exc:
            logger.info("socket %s: handshake failed (%r); reconnecting", self.url, exc)
            ws.transport.abort()
        finally:
            for _, reply in replies:
                reply.cancel()  # no one waits for them any more
            if sender is not None:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)

    async def _start_subscribe(
        self, ws: ClientConnection, subscription: SocketSubscription
    ) -> asyncio.Future[Any]:
        subscription.generation = self._generation
        command = protocol.Subscribe(None, subscription.channel, subscription.position)
        return await self._start(ws, command, "subscribe", subscription)

    async def _settle_subscribe(
        self, subscription: SocketSubscription, reply: asyncio.Future[Any]
    ) -> None:
        try:
            await reply
        except (RequestTimeout, Dropped):
            raise
        except TidingsError as exc:
            # Refused now (permissions changed): this channel ends, the others go on.
            channel = subscription.channel
            logger.warning("socket %s: cannot subscribe %s again: %s", self.url, channel, exc)
            if self._subscriptions.get(subscription.channel) is subscription:
                del self._subscriptions[subscription.channel]
            subscription.close(exc)

    async def _read_loop(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                try:
                    messages = split_frame(data, self.format)
                except ProtocolError:
                    logger.error("socket %s: unreadable frame %r", self.url, data[:200])
                    ws.transport.abort()
                    return
                for message in messages:
                    if isinstance(message, dict):
                        await self._dispatch(message)
        except WebSocketClosed:
            pass

    async def _dispatch(self, message: dict[str, Any]) -> None:
        if "ok" in message or "error" in message:
            request = self._requests.settle(message)
            if request is None:
                if message.get("id") is None and "error" in message:
                    logger.warning("socket %s: the server refused a message: %s", self.url, message)
                return
            outgoing = request.outgoing
            if outgoing is not None and "error" in message and not outgoing.future.done():
                delay = retry_after(message["error"])
                if delay is not None:
                    self._retry_later(outgoing, delay)
                    return
            subscription = request.subscription
            if (
                subscription is not None
                and "error" not in message
                and self._subscriptions.get(subscription.channel) is subscription
            ):
                reset = subscription.track_subscribed(message["result"])
                if reset is not None:
                    await subscription.deliver(reset)
            self._requests.resolve(request, message)
            return
        channel = message.get("channel")
        subscription = self._subscriptions.get(channel) if isinstance(channel, str) else None
        if subscription is None or subscription.generation != self._generation:
            return  # a channel left already: its last pushes may still arrive
        item = subscription.track_push(message)
        if item is not None:
            await subscription.deliver(item)

    def _retry_later(self, outgoing: Outgoing, delay: float) -> None:
        """The server refused a publish for now: send it again after ``delay`` seconds,
        before the publishes queued after it."""
        logger.info("socket %s: publish held back %.3g s by the server", self.url, delay)
        self._hold_until = max(self._hold_until, asyncio.get_running_loop().time() + delay)
        self._queue.requeue([outgoing])
        self._queued.set()

    async def _refresher(self, ws: ClientConnection) -> None:
        """Swap the connection's token with the ``refresh`` op a little before its ``exp``."""
        get_token = self._get_token
        while get_token is not None and self._token is not None:
            expires = token_expiry(self._token)
            if expires is None:
                return  # not a JWT with exp: the server's 4401 says when
            remaining = expires - time.time()
            await asyncio.sleep(max(0.0, remaining - min(REFRESH_BEFORE, remaining / 3)))
            try:
                token = await fetch_token(get_token)
                newer = token_expiry(token)
                if newer is not None and newer <= expires:
                    logger.warning("socket %s: get_token gave no later token", self.url)
                    return
                await self._refresh(ws, token)
            except (Dropped, RequestTimeout):
                return  # the connection is ending; the next one sends the token
            except Exception as exc:
                # The connection keeps its old token; at exp the server closes
                # it with 4401 and the next connection asks get_token again.
                logger.warning("socket %s: cannot refresh the token: %r", self.url, exc)
                return
            self._token = token

    async def _refresh(self, ws: ClientConnection, token: str) -> Any:
        """Send ``{"op": "refresh", "token": …}`` on ``ws`` and wait for its reply."""
        await self._pace()
        request_id = self._requests.next_id()
        command = {"id": request_id, "op": "refresh", "token": token}
        payload = protocol.encode_message(command, self.format)
        return await (await self._start_payload(ws, request_id, payload, "refresh"))

    async def _heartbeat(self, ws: ClientConnection) -> None:
        interval = self._ping_interval
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            try:
                async with asyncio.timeout(self._ping_timeout):
                    pong = await ws.ping()
                    await pong
            except TimeoutError:
                logger.info(
                    "socket %s: no pong within %g s; dropping the connection",
                    self.url,
                    self._ping_timeout,
                )
                ws.transport.abort()
                return
            except WebSocketClosed:
                return

    def _finish(self, error: BaseException) -> None:
        """Stop for good: fail what waits, end every subscription."""
        self._final = error
        self._ws = None
        for request in self._requests.drop_all():
            if not request.future.done():
                request.future.set_exception(error)
        self._queue.fail(error)
        subscriptions, self._subscriptions = self._subscriptions, {}
        self._ended.extend(subscriptions.values())
        user_closed = self._closed_by_us()
        for subscription in subscriptions.values():
            subscription.close(None if user_closed else error)
        self._set_state(ConnectionState.CLOSED)
        self._ready.set()
        self._stopped.set()
