"""Protocol-level limits of ``tidings serve``: request head sizes, deadlines, open sockets.

Subclasses of uvicorn's httptools and websockets-sansio protocols, used on
the plain ASGI path and (under ``server/fastwrite.py``'s classes) on the fast
write path alike. They hold what an ASGI app cannot, because it happens
before the app sees a request or between requests:

- the request line (``max_url_bytes``) and the request headers
  (``max_header_bytes`` in total, ``max_headers`` lines), counted while the
  bytes arrive, before httptools buffers them: answered 414 or 431;
- deadlines: the request head (``header_timeout``, from the connection's
  first byte or from its opening: slowloris and silent connections), the
  body (``body_timeout``) and the WebSocket handshake (``ws_handshake_timeout``):
  answered 408 when the client has said something, else just closed;
- the number of open sockets (``max_connections``): a connection opened past
  it gets 503 with ``Retry-After`` once its request head is in.

Each refusal is a short JSON error (``server/errors.py``'s shape) with
``Connection: close``; the server then stops writing, reads and discards
what the client still sends for a moment (so the answer is not lost to a
reset), and closes. A WebSocket upgrade gets the same HTTP answers.

uvicorn hands a WebSocket upgrade to the websockets library, which parses
the request again with its own 8 KiB line limit; the handshake reader here
allows the lines the HTTP limits allow, so every URL that works on ``/sse``
works on ``/ws``.

Like ``server/fastwrite.py``, this module reads private names of uvicorn and
websockets: :data:`RELIES_ON` lists them, ``tests/unit/server/test_guard.py``
checks them against the installed releases, and ``server/serve.py`` uses
these classes only with the releases in ``TESTED_VERSIONS``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import httptools
import orjson
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from tidings.server.errors import error_body
from tidings.server.limits import RETRY_AFTER, SOCKETS
from tidings.settings import Settings
from tidings.wire.codes import ErrorCode

__all__ = [
    "RELIES_ON",
    "GuardedHttpToolsProtocol",
    "GuardedWebSocketsProtocol",
    "ProtocolLimits",
    "answer",
    "with_limits",
]

logger = logging.getLogger(__name__)

Kind = Literal["method", "async method", "attribute"]

#: Every name of uvicorn's and websockets' internals this module overrides,
#: calls, reads or writes (see ``server/fastwrite.py``'s list of the same kind).
RELIES_ON: tuple[tuple[type, str, Kind], ...] = (
    (HttpToolsProtocol, "_should_upgrade", "method"),
    (HttpToolsProtocol, "_unset_keepalive_if_required", "method"),
    (HttpToolsProtocol, "_unsupported_upgrade_warning", "method"),
    (HttpToolsProtocol, "connection_lost", "method"),
    (HttpToolsProtocol, "connection_made", "method"),
    (HttpToolsProtocol, "connections", "attribute"),
    (HttpToolsProtocol, "cycle", "attribute"),
    (HttpToolsProtocol, "data_received", "method"),
    (HttpToolsProtocol, "flow", "attribute"),
    (HttpToolsProtocol, "handle_websocket_upgrade", "method"),
    (HttpToolsProtocol, "headers", "attribute"),
    (HttpToolsProtocol, "loop", "attribute"),
    (HttpToolsProtocol, "on_headers_complete", "method"),
    (HttpToolsProtocol, "on_message_begin", "method"),
    (HttpToolsProtocol, "on_message_complete", "method"),
    (HttpToolsProtocol, "parser", "attribute"),
    (HttpToolsProtocol, "scope", "attribute"),
    (HttpToolsProtocol, "transport", "attribute"),
    (RequestResponseCycle, "disconnected", "attribute"),
    (RequestResponseCycle, "message_event", "attribute"),
    (RequestResponseCycle, "response_complete", "attribute"),
    (RequestResponseCycle, "response_started", "attribute"),
    (FlowControl, "resume_reading", "method"),
    (WebSocketsSansIOProtocol, "close_sent", "attribute"),
    (WebSocketsSansIOProtocol, "conn", "attribute"),
    (WebSocketsSansIOProtocol, "connection_lost", "method"),
    (WebSocketsSansIOProtocol, "connection_made", "method"),
    (WebSocketsSansIOProtocol, "data_received", "method"),
    (WebSocketsSansIOProtocol, "disconnected", "attribute"),
    (WebSocketsSansIOProtocol, "handshake_complete", "attribute"),
    (WebSocketsSansIOProtocol, "handshake_initiated", "attribute"),
    (WebSocketsSansIOProtocol, "loop", "attribute"),
    (WebSocketsSansIOProtocol, "queue", "attribute"),
    (WebSocketsSansIOProtocol, "transport", "attribute"),
    (ServerProtocol, "data_to_send", "method"),
    (ServerProtocol, "handshake_exc", "attribute"),
    (ServerProtocol, "parse", "method"),
    (ServerProtocol, "parser", "attribute"),
    (ServerProtocol, "reader", "attribute"),
    (StreamReader, "read_line", "method"),
)

#: After a refusal: how long, and how many bytes, the server reads and discards
#: what the client still sends before it closes (a close with unread bytes
#: resets the connection, and the client may lose the answer).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024

#: File descriptors kept for what is not a client socket (listeners, Redis, files, logs).
_DESCRIPTOR_RESERVE = 64

#: Room for what a re-serialised WebSocket handshake line adds to the client's.
_LINE_SLACK = 64

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def answer(status: int, code: str, message: str, *, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 error answer with the JSON error body, ending the connection."""
    body = orjson.dumps(error_body(code, message))
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
    ]
    if retry_after is not None:
        head.append(b"retry-after: %d\r\n" % retry_after)
    return b"".join(head) + b"\r\n" + body


def socket_ceiling() -> int:
    """How many sockets the process can hold and still answer: its file-descriptor
    limit (``ulimit -n``) less room for everything else it opens."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return sys.maxsize
    if soft == resource.RLIM_INFINITY:
        return sys.maxsize
    return max(1, soft - _DESCRIPTOR_RESERVE)


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """The limits the protocol classes enforce (from :class:`~tidings.settings.Settings`)."""

    max_url_bytes: int
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    ws_handshake_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ProtocolLimits:
        """The limits ``settings`` give; sockets also stay below the descriptor limit."""
        return cls(
            max_url_bytes=settings.max_url_bytes,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            ws_handshake_timeout=settings.ws_handshake_timeout,
            max_connections=min(settings.max_connections, socket_ceiling()),
        )

    @property
    def line_bytes(self) -> int:
        """The longest line a WebSocket handshake may have once the HTTP limits passed it."""
        return max(self.max_url_bytes, self.max_header_bytes) + _LINE_SLACK


#: What the classes enforce unless :func:`with_limits` says otherwise.
DEFAULT_LIMITS = ProtocolLimits.from_settings(Settings())


class _Refused(Exception):
    """Raised in a parser callback once the refusal is written: stop parsing."""


class _Guard:
    """The state a guarded HTTP connection adds, in slots."""

    __slots__ = (
        "body_open",
        "body_timer",
        "discarded",
        "head_bytes",
        "head_limit",
        "head_open",
        "head_timer",
        "line_open",
        "linger_timer",
        "over_capacity",
        "refused",
    )

    def __init__(self) -> None:
        #: Reading a request head (between requests too: the next head).
        self.head_open = True
        #: Reading its request line; bytes of the head so far; where the headers must end.
        self.line_open = True
        self.head_bytes = 0
        self.head_limit = 0
        #: Reading a request body.
        self.body_open = False
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.linger_timer: asyncio.TimerHandle | None = None
        #: Opened past max_connections: the request head gets a 503.
        self.over_capacity = False
        #: Answered for good: what still comes is discarded.
        self.refused = False
        self.discarded = 0


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head sizes, deadlines and a socket cap."""

    limits: ClassVar[ProtocolLimits] = DEFAULT_LIMITS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One attribute: uvicorn's instance dictionary stays at its size.
        self.guard = _Guard()

    # -- the connection --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.guard.over_capacity = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)  # type: ignore[arg-type]
        self.guard.head_timer = self.loop.call_later(self.limits.header_timeout, self.head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timers()
        if self.guard.linger_timer is not None:
            self.guard.linger_timer.cancel()
            self.guard.linger_timer = None
        super().connection_lost(exc)

    def cancel_timers(self) -> None:
        if self.guard.head_timer is not None:
            self.guard.head_timer.cancel()
            self.guard.head_timer = None
        if self.guard.body_timer is not None:
            self.guard.body_timer.cancel()
            self.guard.body_timer = None

    def data_received(self, data: bytes) -> None:
        g = self.guard
        if g.refused:
            g.discarded += len(data)
            if g.discarded > LINGER_BYTES:
                self.transport.close()
            return
        try:
            if g.head_open:
                self.feed_head(data)
            else:
                self.feed(data)
        except _Refused:
            return
        if g.refused or self.transport.is_closing():
            return
        if g.head_open:
            cycle = self.cycle
            if g.head_timer is None and g.head_bytes and (cycle is None or cycle.response_complete):
                g.head_timer = self.loop.call_later(self.limits.header_timeout, self.head_expired)
        elif g.body_open and g.body_timer is None:
            g.body_timer = self.loop.call_later(self.limits.body_timeout, self.body_expired)

    def feed_head(self, data: bytes) -> None:
        """Feed bytes of a request head, no more than its limits allow."""
        limits = self.limits
        g = self.guard
        if g.line_open:
            end = data.find(b"\n")
            size = len(data) if end < 0 else end + 1
            if g.head_bytes + size > limits.max_url_bytes:
                self.refuse(
                    414,
                    ErrorCode.TOO_LARGE,
                    f"the request line is longer than {limits.max_url_bytes} bytes",
                )
                return
            if end < 0:
                g.head_bytes += size
                self.feed(data)
                return
            g.line_open = False
            g.head_limit = g.head_bytes + size + limits.max_header_bytes
        budget = g.head_limit - g.head_bytes
        if len(data) <= budget:
            g.head_bytes += len(data)
            self.feed(data)
            return
        g.head_bytes += budget
        self.feed(data[:budget])
        if g.refused or self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        if g.head_open:
            self.refuse(
                431,
                ErrorCode.TOO_LARGE,
                f"the request headers are longer than {limits.max_header_bytes} bytes",
            )
            return
        self.data_received(data[budget:])

    def feed(self, data: bytes) -> None:
        """uvicorn's ``data_received``, answering a bad request in the same JSON shape."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):
                raise exc.__context__ from None
            self.refuse(400, ErrorCode.BAD_REQUEST, "invalid HTTP request")

    # -- parser callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
        extensions[SOCKETS] = self.connections.__len__

    def on_headers_complete(self) -> None:
        self.guard.head_open = False
        if self.guard.head_timer is not None:
            self.guard.head_timer.cancel()
            self.guard.head_timer = None
        limits = self.limits
        if len(self.headers) > limits.max_headers:
            self.refuse(431, ErrorCode.TOO_LARGE, f"more than {limits.max_headers} request headers")
            raise _Refused
        if self.guard.over_capacity:
            self.refuse(
                503,
                ErrorCode.UNAVAILABLE,
                "the server is at its connection limit",
                retry_after=RETRY_AFTER,
            )
            raise _Refused
        super().on_headers_complete()
        self.guard.body_open = not self.parser.should_upgrade()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.guard.body_open = False
        if self.guard.body_timer is not None:
            self.guard.body_timer.cancel()
            self.guard.body_timer = None
        self.guard.head_open = self.guard.line_open = True
        self.guard.head_bytes = 0

    # -- deadlines and refusals --------------------------------------------------

    def head_expired(self) -> None:
        self.guard.head_timer = None
        if not self.guard.head_open or self.guard.refused or self.transport.is_closing():
            return
        if self.guard.head_bytes:
            self.refuse(408, ErrorCode.TIMEOUT, "the request head did not arrive in time")
        else:
            self.transport.close()  # nothing was said: nothing to answer

    def body_expired(self) -> None:
        self.guard.body_timer = None
        if not self.guard.body_open or self.guard.refused or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.close()
        else:
            self.refuse(408, ErrorCode.TIMEOUT, "the request body did not arrive in time")

    def refuse(
        self, status: int, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        """Answer ``status`` and end the connection; what the client still sends is discarded."""
        logger.debug("refused with %d: %s", status, message)
        self.guard.refused = True
        self.guard.head_open = self.guard.body_open = False
        self.cancel_timers()
        self._unset_keepalive_if_required()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A request still in the app (this was the next one, pipelined):
            # its receive() ends with http.disconnect and its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(answer(status, code, message, retry_after=retry_after))
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.flow.resume_reading()  # read on to the client's end (or the linger deadline)
        self.guard.linger_timer = self.loop.call_later(LINGER_SECONDS, transport.close)


class _HandshakeReader(StreamReader):
    """websockets' stream reader with a longer line limit for the handshake."""

    line_limit = 0

    def read_line(
        self, m: int, too_long_exc_type: type[Exception] = RuntimeError
    ) -> Generator[None, None, bytearray]:
        return super().read_line(max(m, self.line_limit), too_long_exc_type)


class GuardedWebSocketsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with a handshake deadline and HTTP-sized lines."""

    limits: ClassVar[ProtocolLimits] = DEFAULT_LIMITS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn passes the upgrade request, already parsed by httptools under
        # the HTTP limits, to websockets to parse again: let it read those lines.
        conn = self.conn
        reader = _HandshakeReader()
        reader.line_limit = self.limits.line_bytes
        conn.reader = reader
        conn.parser = conn.parse()
        next(conn.parser)
        self.handshake_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.handshake_timer = self.loop.call_later(
            self.limits.ws_handshake_timeout, self.handshake_expired
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if (
            not self.handshake_initiated
            and self.conn.handshake_exc is not None
            and not self.transport.is_closing()
        ):
            # websockets refused the request (its answer, if any, is waiting):
            # uvicorn would neither send it nor close.
            output = b"".join(self.conn.data_to_send())
            if not output:
                output = answer(400, ErrorCode.BAD_REQUEST, "invalid WebSocket handshake")
            self.handshake_complete = self.close_sent = True
            self.transport.write(output)
            self.transport.close()

    def handshake_expired(self) -> None:
        self.handshake_timer = None
        if self.handshake_complete or self.close_sent or self.transport.is_closing():
            return
        logger.debug("refused with 408: the WebSocket handshake did not finish in time")
        # The app (still deciding) hears a disconnect; whatever it sends goes nowhere.
        self.handshake_complete = self.close_sent = self.disconnected = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
        self.transport.write(
            answer(408, ErrorCode.TIMEOUT, "the WebSocket handshake did not finish in time")
        )
        self.transport.close()


_P = TypeVar("_P", bound=type)


def with_limits(cls: _P, limits: ProtocolLimits) -> _P:
    """A subclass of one of these protocol classes (or of theirs) that enforces ``limits``."""
    namespace = {"limits": limits, "__slots__": (), "__module__": cls.__module__}
    subclass: _P = type(cls.__name__, (cls,), namespace)  # type: ignore[assignment]
    return subclass
