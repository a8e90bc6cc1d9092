"""Responses that stream your own async iterables: SSE, NDJSON and raw bytes.

::

    @app.get("/rows")
    async def rows() -> NDJSONResponse:
        return NDJSONResponse(fetch_rows())  # an async generator of dicts


    @app.get("/ticks")
    async def ticks() -> SSEResponse:
        async def produce(last_event_id: str | None) -> AsyncIterator[ServerSentEvent]:
            n = int(last_event_id or 0)
            while True:
                n += 1
                yield ServerSentEvent({"n": n}, id=str(n))
                await asyncio.sleep(1)

        return SSEResponse(produce)

Each one pulls from its producer only as fast as the client reads, closes it
(``contextlib.aclosing``) the moment the client goes, and ends the stream
with an error frame when the producer raises (``server/pump.py``).
:class:`~tidings.server.SSEResponse` takes an iterable (or a callable
given the request's ``Last-Event-ID``) through :class:`EventStream`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tidings.errors import TidingsError
from tidings.hub import Event, Reset
from tidings.server.pump import Pump
from tidings.server.sse import SSE_FRAME, SSE_HEADERS
from tidings.wire.codes import ErrorCode
from tidings.wire.sse import PING, encode_data, encode_event

__all__ = [
    "NDJSON_HEADERS",
    "EventSource",
    "EventStream",
    "NDJSONResponse",
    "ServerSentEvent",
    "StreamResponse",
    "encode_ndjson",
    "encode_sse",
    "error_object",
    "ndjson_error",
]

#: A producer of events, or a callable that makes one from the client's ``Last-Event-ID``.
EventSource = AsyncIterable[Any] | Callable[[str | None], AsyncIterable[Any]]

NDJSON_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"application/x-ndjson"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One Server-Sent Event with every field; yield it to set more than ``data``.

    Attributes:
        data: A ``str`` (sent as is, one ``data:`` line per line), or any
            value orjson encodes (sent as one line of JSON). ``None`` sends
            no ``data:`` line: the block only sets fields.
        event: The event type (``None``: ``message``).
        id: The event id, which the client sends back as ``Last-Event-ID``.
        retry: The reconnection delay to announce, in seconds.
        comment: A comment line, which clients ignore.
    """

    data: Any = None
    event: str | None = None
    id: str | None = None
    retry: float | None = None
    comment: str | None = None


def error_object(exc: Exception) -> dict[str, str]:
    """What a stream tells its client about a failed producer.

    A Tidings error says its code and message; any other exception only that
    the stream failed (its text may hold what a client must not see; the
    server log has it).
    """
    if isinstance(exc, TidingsError):
        return {"code": str(exc.code), "message": str(exc)}
    return {"code": ErrorCode.INTERNAL.value, "message": "the stream failed"}


def encode_sse(item: Any) -> bytes:
    """An item of an SSE producer as an event block.

    ``str`` and ``bytes`` (UTF-8) are the data as is; a :class:`ServerSentEvent`
    sets every field; a hub ``Event`` or ``Reset`` is framed as on ``GET /sse``
    (its ``id:`` the one-channel cursor, so the client resumes it); anything
    else is data encoded as JSON.

    Raises:
        TypeError: orjson cannot encode the item.
        ValueError: an ``id`` or ``event`` with a line break or NUL.
        UnicodeDecodeError: ``bytes`` that are not UTF-8.
    """
    if isinstance(item, str):
        return encode_data(item.encode("utf-8"))
    if isinstance(item, bytes):
        item.decode("utf-8")
        return encode_data(item)
    if isinstance(item, ServerSentEvent):
        data = item.data
        if data is not None and not isinstance(data, str):
            data = orjson.dumps(data).decode("utf-8")
        retry = None if item.retry is None else round(item.retry * 1000)
        return encode_event(data, event=item.event, id=item.id, retry=retry, comment=item.comment)
    if isinstance(item, Event | Reset):
        return SSE_FRAME(item)
    return b"data: %b\n\n" % orjson.dumps(item)


def encode_ndjson(item: Any) -> bytes:
    """An item as one line of JSON.

    Raises:
        TypeError: orjson cannot encode the item.
    """
    return orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE)


def _sse_error(exc: Exception) -> bytes:
    return encode_data(orjson.dumps(error_object(exc)), event="error")


def ndjson_error(exc: Exception) -> bytes:
    """The line that ends an NDJSON stream whose producer failed."""
    return orjson.dumps({"error": error_object(exc)}, option=orjson.OPT_APPEND_NEWLINE)


def _encode_bytes(item: bytes | str) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    return bytes(item)


def _header_list(
    base: list[tuple[bytes, bytes]], headers: Mapping[str, str] | None
) -> list[tuple[bytes, bytes]]:
    extra = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in (headers or {}).items()
    ]
    names = {name for name, _ in extra}
    return [*(pair for pair in base if pair[0] not in names), *extra]


class EventStream:
    """An ASGI app streaming a producer's items as Server-Sent Events.

    Args:
        source: An async iterable, or a callable that takes the client's
            ``Last-Event-ID`` (``None`` on a first connection) and returns
            one (an async generator function does).
        last_event_id: Passed to a callable ``source`` instead of the
            request's ``Last-Event-ID`` header, when given.
        retry: The reconnection delay announced first, in seconds.
        keepalive: Seconds between ``: ping`` comments (``None``: none).
        headers: Extra response headers.

    See :func:`encode_sse` for what the items may be. A producer that raises
    ends the stream with ``event: error`` and ``data: {"code", "message"}``.
    """

    def __init__(
        self,
        source: EventSource,
        *,
        last_event_id: str | None = None,
        retry: float = 3.0,
        keepalive: float | None = 15.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not (isinstance(source, AsyncIterable) or callable(source)):
            raise TypeError(
                "an SSE source is an async iterable or a callable returning one, "
                f"not {type(source).__name__}"
            )
        if keepalive is not None and keepalive <= 0:
            raise ValueError(f"keepalive must be > 0 seconds or None, not {keepalive}")
        if retry < 0:
            raise ValueError(f"retry must be >= 0 seconds, not {retry}")
        self.source = source
        self.last_event_id = last_event_id
        self.retry = retry
        self.keepalive = keepalive
        self.headers = _header_list(SSE_HEADERS, headers)

    def producer(self, scope: Scope) -> AsyncIterable[Any]:
        """The producer for one request: ``source`` itself, or what it makes from the cursor."""
        source = self.source
        if isinstance(source, AsyncIterable):
            return source
        last_event_id = self.last_event_id
        if last_event_id is None:
            for key, value in scope.get("headers", ()):
                if key == b"last-event-id":
                    last_event_id = value.decode("latin-1")
        producer = source(last_event_id)
        if not isinstance(producer, AsyncIterable):
            raise TypeError(
                f"the SSE source returned {type(producer).__name__}, not an async iterable"
            )
        return producer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        retry_ms = round(self.retry * 1000)
        pump = Pump(
            self.producer(scope),
            encode_sse,
            headers=self.headers,
            head=encode_event(retry=retry_ms),
            error=_sse_error,
            ping=PING,
            keepalive=self.keepalive,
            shutdown=lambda: encode_event(retry=retry_ms),
        )
        await pump(scope, receive, send)


class _PumpResponse(Response):
    """A Starlette ``Response`` whose body is a producer pulled by a :class:`Pump`."""

    base_headers: ClassVar[list[tuple[bytes, bytes]]]
    #: Turns an item into body bytes.
    encode_item: ClassVar[staticmethod[[Any], bytes]]
    #: The last bytes after a producer failed (None: the connection is cut instead).
    error_frame: ClassVar[staticmethod[[Exception], bytes] | None] = None

    def __init__(
        self,
        content: AsyncIterable[Any],
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        if not isinstance(content, AsyncIterable):
            raise TypeError(
                f"{type(self).__name__} streams an async iterable, not {type(content).__name__}"
            )
        self.content = content
        self.status_code = status_code
        self.background = background
        base = self.base_headers
        if media_type is not None:
            base = [(b"content-type", media_type.encode("latin-1")), *base[1:]]
        self.media_type = base[0][1].decode("latin-1")
        # A list Starlette's ``headers`` property edits in place, as FastAPI does.
        self.raw_headers = _header_list(base, headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = Pump(
            self.content,
            self.encode_item,
            headers=self.raw_headers,
            status=self.status_code,
            error=self.error_frame,
        )
        await pump(scope, receive, send)
        if self.background is not None:
            await self.background()


class NDJSONResponse(_PumpResponse):
    """Streams an async iterable as newline-delimited JSON (``application/x-ndjson``).

    Args:
        content: The producer; each item is one JSON document on its own line
            (anything orjson encodes: dicts, lists, dataclasses, datetimes …).
        status_code: The response status.
        headers: Extra response headers.
        media_type: Instead of ``application/x-ndjson``.
        background: Run after the response ends.

    A producer that raises, or an item orjson cannot encode, ends the stream
    with the line ``{"error": {"code", "message"}}``.
    """

    base_headers = NDJSON_HEADERS
    encode_item = staticmethod(encode_ndjson)
    error_frame = staticmethod(ndjson_error)


class StreamResponse(_PumpResponse):
    """Streams an async iterable of ``bytes`` (or ``str``, sent as UTF-8) as they are.

    Args:
        content: The producer of body pieces.
        status_code: The response status.
        headers: Extra response headers (``Content-Disposition`` …).
        media_type: The ``Content-Type`` (default ``application/octet-stream``).
        background: Run after the response ends.

    A raw body has no way to say "failed" in band, so a producer that raises
    closes the connection without the response's last chunk: the client sees
    an incomplete body, never a truncated one passed as whole.
    """

    base_headers = [(b"content-type", b"application/octet-stream")]
    encode_item = staticmethod(_encode_bytes)
