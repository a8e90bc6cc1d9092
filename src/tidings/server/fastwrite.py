"""uvicorn protocol classes that offer the ``tidings.write`` scope extension.

``tidings serve`` passes these to ``uvicorn.Config(http=…, ws=…)``
(``server/serve.py``). They behave like uvicorn's own classes and add one
thing: each request's scope carries an object (``server/writer.py``) through
which a streaming response or a WebSocket writes pre-encoded bytes straight
to the transport and hears about flow control, connection loss and shutdown,
skipping the per-message cost of ASGI ``send``. This is the one module that
knows uvicorn's (and, for WebSockets, the websockets library's) internals:
:data:`RELIES_ON` lists every private name it reads, writes or overrides, and
``server/serve.py`` uses it only with the releases it was tested against.

The WebSocket class also changes two behaviours, both covered by the Autobahn
run (``docs/websocket.md``): a peer that misses the pong deadline is closed
with 4002 and dropped at once, with its subscriptions released, instead of
waiting for a socket that a half-open peer never drains; and a close frame
received in the middle of a fragmented message is answered with a normal
close (RFC 6455 5.4 allows control frames there) instead of 1002.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from tidings.server.coalesce import CoalescingWriter
from tidings.server.guard import GuardedHttpToolsProtocol, GuardedWebSocketsProtocol
from tidings.server.writer import FAST_WRITE, BodyEncoder, WriteListener
from tidings.wire.codes import CloseCode

__all__ = ["RELIES_ON", "FastHttpToolsProtocol", "FastWebSocketsProtocol"]

Kind = Literal["method", "async method", "attribute"]

#: Every name of uvicorn's and websockets' internals this module overrides,
#: calls, reads or writes, with what it must be: a method, a coroutine method,
#: or an instance attribute (set on ``self`` somewhere in the class).
#: ``tests/unit/server/test_fastwrite.py`` checks each against the installed
#: releases, so an upgrade that moves one fails there and not in production.
RELIES_ON: tuple[tuple[type, str, Kind], ...] = (
    (HttpToolsProtocol, "connection_lost", "method"),
    (HttpToolsProtocol, "cycle", "attribute"),
    (HttpToolsProtocol, "data_received", "method"),
    (HttpToolsProtocol, "flow", "attribute"),
    (HttpToolsProtocol, "headers", "attribute"),
    (HttpToolsProtocol, "on_message_begin", "method"),
    (HttpToolsProtocol, "pause_writing", "method"),
    (HttpToolsProtocol, "resume_writing", "method"),
    (HttpToolsProtocol, "scope", "attribute"),
    (HttpToolsProtocol, "shutdown", "method"),
    (HttpToolsProtocol, "transport", "attribute"),
    (RequestResponseCycle, "disconnected", "attribute"),
    (RequestResponseCycle, "message_event", "attribute"),
    (RequestResponseCycle, "response_complete", "attribute"),
    (RequestResponseCycle, "scope", "attribute"),
    (FlowControl, "_is_writable_event", "attribute"),
    (FlowControl, "write_paused", "attribute"),
    (WebSocketsSansIOProtocol, "app", "attribute"),
    (WebSocketsSansIOProtocol, "close_sent", "attribute"),
    (WebSocketsSansIOProtocol, "close_timeout", "attribute"),
    (WebSocketsSansIOProtocol, "close_timer", "attribute"),
    (WebSocketsSansIOProtocol, "conn", "attribute"),
    (WebSocketsSansIOProtocol, "connection_lost", "method"),
    (WebSocketsSansIOProtocol, "curr_msg_data_type", "attribute"),
    (WebSocketsSansIOProtocol, "disconnected", "attribute"),
    (WebSocketsSansIOProtocol, "frames", "attribute"),
    (WebSocketsSansIOProtocol, "handle_close", "method"),
    (WebSocketsSansIOProtocol, "handle_connect", "method"),
    (WebSocketsSansIOProtocol, "handle_parser_exception", "method"),
    (WebSocketsSansIOProtocol, "handshake_complete", "attribute"),
    (WebSocketsSansIOProtocol, "keepalive_timeout", "method"),
    (WebSocketsSansIOProtocol, "logger", "attribute"),
    (WebSocketsSansIOProtocol, "loop", "attribute"),
    (WebSocketsSansIOProtocol, "pause_writing", "method"),
    (WebSocketsSansIOProtocol, "pending_ping_payload", "attribute"),
    (WebSocketsSansIOProtocol, "pong_timer", "attribute"),
    (WebSocketsSansIOProtocol, "queue", "attribute"),
    (WebSocketsSansIOProtocol, "read_paused", "attribute"),
    (WebSocketsSansIOProtocol, "receive", "async method"),
    (WebSocketsSansIOProtocol, "request", "attribute"),
    (WebSocketsSansIOProtocol, "response", "attribute"),
    (WebSocketsSansIOProtocol, "resume_writing", "method"),
    (WebSocketsSansIOProtocol, "run_asgi", "async method"),
    (WebSocketsSansIOProtocol, "scope", "attribute"),
    (WebSocketsSansIOProtocol, "send", "async method"),
    (WebSocketsSansIOProtocol, "send_500_response", "method"),
    (WebSocketsSansIOProtocol, "send_receive_event_to_app", "method"),
    (WebSocketsSansIOProtocol, "shutdown", "method"),
    (WebSocketsSansIOProtocol, "stop_keepalive", "method"),
    (WebSocketsSansIOProtocol, "transport", "attribute"),
    (WebSocketsSansIOProtocol, "writable", "attribute"),
    (ServerProtocol, "current_size", "attribute"),
    (ServerProtocol, "extensions", "attribute"),
    (ServerProtocol, "recv_frame", "method"),
)


class _Flag:
    """An ``asyncio.Event`` stand-in for a handed-off connection: a flag, no waiters.

    uvicorn keeps two events per HTTP connection and one per WebSocket that
    only its ASGI ``send``/``receive`` wait on; after a hand-off nothing waits,
    and each event's empty deque of waiters costs more than the rest of the
    connection's Tidings state.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bool) -> None:
        self._value = value

    def set(self) -> None:
        self._value = True

    def clear(self) -> None:
        self._value = False

    def is_set(self) -> bool:
        return self._value

    async def wait(self) -> None:
        raise RuntimeError("nothing waits on a handed-off connection")


class _FastWriteProtocol(asyncio.Protocol):
    """What both protocol classes add to uvicorn's: a listener and a coalescing writer.

    The state is in slots: uvicorn's protocols already keep about thirty
    attributes in their instance dictionary, and one more there can cost each
    connection a dictionary of its own (about 1.6 KiB). A connection with a
    writer is handed off (or about to be).
    """

    __slots__ = ("fast_listener", "writer")

    transport: asyncio.Transport

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_listener: WriteListener | None = None
        self.writer: CoalescingWriter | None = None

    def fast_open(self) -> bool:
        """Whether a listener may attach now (beyond the transport being open)."""
        return True

    def fast_attach(
        self, listener: WriteListener, encoder: BodyEncoder | None = None
    ) -> Callable[[bytes], object] | None:
        transport = self.transport
        if transport is None or transport.is_closing() or not self.fast_open():
            return None
        self.fast_listener = listener
        writer = self.writer = CoalescingWriter(transport, encoder)
        return writer.write

    def fast_write(self, data: bytes) -> None:
        if self.writer is not None:
            self.writer.write(data)
        else:
            self.transport.write(data)

    def fast_abort(self) -> None:
        if self.writer is not None:
            self.writer.discard()
        self.transport.abort()

    def fast_detach(self) -> None:
        """Give the connection back to uvicorn: flush, then forget the writer and listener."""
        writer, self.writer = self.writer, None
        self.fast_listener = None
        if writer is not None:
            writer.flush()

    def fast_release(self) -> None:
        """Stop fast writes: the connection is closing or gone; nothing pending goes out."""
        if self.writer is not None:
            self.writer.discard()
        listener, self.fast_listener = self.fast_listener, None
        if listener is not None:
            listener.connection_lost()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.fast_listener is not None:
            self.fast_listener.pause_writing()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.fast_listener is not None:
            self.fast_listener.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.fast_release()


_P = TypeVar("_P", bound=_FastWriteProtocol)


class _FastWrite(Generic[_P]):
    """The extension object for one connection (see ``server/writer.py``)."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: _P) -> None:
        self._protocol = protocol

    def attach(self, listener: WriteListener) -> Callable[[bytes], object] | None:
        return self._protocol.fast_attach(listener)

    def detach(self) -> None:
        self._protocol.fast_listener = None

    def write(self, data: bytes) -> None:
        self._protocol.fast_write(data)

    def abort(self) -> None:
        self._protocol.fast_abort()


class _HTTPFastWrite(_FastWrite["FastHttpToolsProtocol"]):
    __slots__ = ()

    def attach(
        self, listener: WriteListener, encoder: BodyEncoder | None = None
    ) -> Callable[[bytes], object] | None:
        return self._protocol.fast_attach(listener, encoder)

    @property
    def paused(self) -> bool:
        return bool(self._protocol.flow.write_paused)

    def end(self) -> None:
        protocol = self._protocol
        if protocol.writer is not None:
            protocol.writer.finish()
        protocol.transport.close()

    def release(self) -> None:
        self._protocol.fast_detach()

    def hand_off(self) -> None:
        protocol = self._protocol
        assert protocol.writer is not None, "attach before hand_off"
        # uvicorn then neither logs nor closes when the app returns, and the
        # request's scope and body buffers can go.
        cycle = protocol.cycle
        cycle.response_complete = True
        cycle.scope = None  # type: ignore[assignment]
        cycle.message_event = _Flag(cycle.message_event.is_set())  # type: ignore[assignment]
        flow = protocol.flow
        flow._is_writable_event = _Flag(flow._is_writable_event.is_set())  # type: ignore[assignment]
        protocol.scope = None  # type: ignore[assignment]
        protocol.headers = None  # type: ignore[assignment]


class FastHttpToolsProtocol(_FastWriteProtocol, GuardedHttpToolsProtocol):
    """uvicorn's httptools protocol, guarded (``server/guard.py``), plus ``tidings.write``."""

    __slots__ = ()

    def fast_open(self) -> bool:
        return not (self.cycle is not None and self.cycle.disconnected)

    def data_received(self, data: bytes) -> None:
        if self.writer is not None:
            return  # a handed-off stream reads nothing more; EOF still ends it
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        scope.setdefault("extensions", {})[FAST_WRITE] = _HTTPFastWrite(self)

    def shutdown(self) -> None:
        listener = self.fast_listener
        if listener is not None:
            listener.shutdown()
        super().shutdown()


class _WebSocketFastWrite(_FastWrite["FastWebSocketsProtocol"]):
    __slots__ = ()

    @property
    def paused(self) -> bool:
        return not self._protocol.writable.is_set()

    def close(self, code: int, reason: str = "") -> None:
        self._protocol.fast_close(code, reason)

    def hand_off(self, receiver: Callable[[str | bytes], object]) -> None:
        self._protocol.hand_off(receiver)

    def pause_reading(self) -> None:
        protocol = self._protocol
        if not protocol.read_paused and not protocol.transport.is_closing():
            protocol.read_paused = True
            protocol.transport.pause_reading()

    def resume_reading(self) -> None:
        protocol = self._protocol
        if protocol.read_paused and not protocol.transport.is_closing():
            protocol.read_paused = False
            protocol.transport.resume_reading()


class _Discard:
    """Stands in for uvicorn's receive queue once a WebSocket is handed off."""

    __slots__ = ()

    def put_nowait(self, message: object) -> None:
        pass

    def empty(self) -> bool:
        return True


_DISCARD = _Discard()


class _ServerProtocol(ServerProtocol):
    def recv_frame(self, frame: Frame) -> None:
        # RFC 6455 5.4: control frames may come between the fragments of a
        # message, a close frame included. The unfinished message is dropped
        # and the close answered normally (websockets fails with 1002 here).
        if frame.opcode is Opcode.CLOSE:
            self.current_size = None
        super().recv_frame(frame)


class FastWebSocketsProtocol(_FastWriteProtocol, GuardedWebSocketsProtocol):
    """uvicorn's websockets-sansio protocol, guarded (``server/guard.py``), plus the
    ``tidings.write`` extension.

    Writes through the extension bypass the websockets state machine: they
    must be whole data frames, and they stop (the listener hears
    ``connection_lost``) as soon as a closing handshake starts, so no data
    frame ever follows a close frame.
    """

    __slots__ = ("receiver",)  # see _FastWriteProtocol

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receiver: Callable[[str | bytes], object] | None = None
        # Same object, one changed method (see _ServerProtocol); swapping the
        # class keeps whatever options uvicorn built it with.
        self.conn.__class__ = _ServerProtocol

    def fast_open(self) -> bool:
        return self.handshake_complete and not self.close_sent and not self.disconnected

    def fast_write(self, data: bytes) -> None:
        if not self.close_sent and not self.disconnected:
            super().fast_write(data)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # A connection that negotiated an extension (permessage-deflate, with
        # ``ws_compression``) codes each message with state of its own, which
        # shared pre-encoded frames cannot carry: it gets no fast write and is
        # served on the ASGI path, where websockets compresses every message.
        if self.response.status_code == 101 and not self.conn.extensions:
            extensions: dict[str, Any] = self.scope["extensions"]
            extensions[FAST_WRITE] = _WebSocketFastWrite(self)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake is done: its request and response objects (headers
            # and all) are never read again; free them for the connection's life.
            # The websockets parser's generator frame keeps the request alive
            # as a local, so empty its headers too.
            self.request.headers.clear()
            self.request = self.response = None  # type: ignore[assignment]

    def hand_off(self, receiver: Callable[[str | bytes], object]) -> None:
        """Deliver the peer's messages to ``receiver`` instead of ASGI ``receive``."""
        queue, self.queue = self.queue, _DISCARD  # type: ignore[assignment]
        self.receiver = receiver
        self.scope = None  # type: ignore[assignment]
        self.writable = _Flag(self.writable.is_set())  # type: ignore[assignment]
        # Messages that arrived before the hand-off go first, in order.
        while not queue.empty():
            message = queue.get_nowait()
            if message["type"] == "websocket.receive":
                text = message.get("text")
                receiver(text if text is not None else message.get("bytes") or b"")
        if self.read_paused and not self.close_sent:
            self.read_paused = False
            self.transport.resume_reading()

    def send_receive_event_to_app(self) -> None:
        receiver = self.receiver
        if receiver is None:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type == "text":
            try:
                text = bytes(data).decode()
            except UnicodeDecodeError:
                self.conn.send_close(CloseCode.INVALID_DATA)
                self.handle_parser_exception()
                return
            receiver(text)
        else:
            receiver(bytes(data))

    async def run_asgi(self) -> None:
        # A copy of uvicorn's, but for its last step: uvicorn closes the socket
        # when the app returns, with no hook in between, and a handed-off
        # connection outlives its app. So the socket is closed only when the
        # connection was not handed off (``self.receiver is None``).
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None and self.receiver is None:
            self.transport.close()

    def shutdown(self) -> None:
        listener, self.fast_listener = self.fast_listener, None
        if listener is not None:
            listener.shutdown()
        if self.writer is not None:
            self.writer.flush()  # what was sent before the close frame goes before it
        super().shutdown()

    def handle_close(self, event: Any) -> None:
        self.fast_release()
        super().handle_close(event)

    def handle_parser_exception(self) -> None:
        self.fast_release()
        super().handle_parser_exception()

    def keepalive_timeout(self) -> None:
        # The peer did not answer a ping in time. It may be half-open (a
        # stopped process, a dead network), so do not wait for a socket it
        # will never drain: release its subscriptions, say why, and drop it.
        # Not a call to uvicorn's: it closes with 1011 and then waits for the
        # socket to drain (transport.close), the two steps changed here, and
        # the bookkeeping around them is three lines.
        self.pong_timer = None
        self.pending_ping_payload = None
        if self.close_sent or self.transport.is_closing():
            return
        self.fast_release()
        self.conn.fail(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": int(CloseCode.HEARTBEAT_TIMEOUT)}
        )
        self.transport.abort()

    def fast_close(self, code: int, reason: str) -> None:
        """Start the closing handshake from the app without going through ASGI ``send``."""
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return
        self.fast_listener = None
        if self.writer is not None:
            self.writer.flush()  # pending frames go before the close frame
        self.stop_keepalive()
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        # A peer that does not answer (it may not read at all) is dropped.
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)
