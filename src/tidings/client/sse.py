"""listen(): an SSE client that reconnects, resumes and never loses an event.

::

    async with listen("http://127.0.0.1:8000", ["chat"]) as events:
        async for event in events:
            if isinstance(event, Reset):
                ...  # a gap the server could not fill: reload state
            else:
                print(event.channel, event.offset, event.json())

It reads the stream with httpx and :class:`~tidings.wire.sse.SSEDecoder`,
remembers the last event id (the connection's cursor), and on any drop
reconnects with exponential backoff and full jitter, sending ``Last-Event-ID``
so the server replays exactly what was missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import orjson

from tidings.client.backoff import Backoff
from tidings.errors import InvalidCursor, ReconnectExhausted, StreamRejected
from tidings.types import Position
from tidings.wire.cursor import decode_cursor
from tidings.wire.sse import SSEDecoder, SSEEvent

__all__ = ["ConnectionState", "Message", "Reset", "SSEListener", "listen"]

logger = logging.getLogger(__name__)

#: Statuses that retrying cannot fix: the client stops and raises StreamRejected.
TERMINAL_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 413, 414, 422})


class ConnectionState(StrEnum):
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Message:
    """One event of the stream.

    ``channel`` and ``position`` come from the first entry of the event's id
    (Tidings puts the event's own channel first); ``data`` is the raw text.
    """

    type: str
    data: str
    id: str
    channel: str | None
    position: Position | None

    @property
    def offset(self) -> int | None:
        return self.position.offset if self.position is not None else None

    def json(self) -> Any:
        """The data parsed as JSON."""
        return orjson.loads(self.data)


@dataclass(frozen=True, slots=True)
class Reset:
    """The server could not resume ``channel`` exactly; the stream continues after ``position``."""

    channel: str
    position: Position
    reason: str


class _Retryable(Exception):
    pass


def request_headers(last_event_id: str, extra: dict[str, str]) -> dict[str, str]:
    """The headers of a (re)connection: resume from ``last_event_id`` if any."""
    headers = {"accept": "text/event-stream", "cache-control": "no-cache", **extra}
    if last_event_id:
        headers["last-event-id"] = last_event_id
    return headers


def check_response(status: int, content_type: str) -> None:
    """Raise ``_Retryable`` for an answer that retrying may fix; terminal ones are
    checked by the caller first (their body is read for the error)."""
    if status != 200 or not content_type.startswith("text/event-stream"):
        raise _Retryable(f"status {status}, content-type {content_type!r}")


def stream_url(url: str, channels: Sequence[str]) -> str:
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        url = url.rstrip("/") + "/sse"
    if not channels:
        return url
    query = urlencode([("channel", channel) for channel in channels])
    return f"{url}{'&' if parts.query else '?'}{query}"


def convert(event: SSEEvent) -> Message | Reset:
    if event.type == "reset":
        try:
            body = orjson.loads(event.data)
            return Reset(body["channel"], Position(body["epoch"], body["offset"]), body["reason"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.warning("ignoring a malformed reset event: %r", event.data[:200])
    channel: str | None = None
    position: Position | None = None
    if event.id:
        try:
            first = next(iter(decode_cursor(event.id.split(",", 1)[0]).items()), None)
        except InvalidCursor:
            first = None
        if first is not None:
            channel, position = first
    return Message(event.type, event.data, event.id, channel, position)


class SSEListener:
    """The async iterator behind :func:`listen`; see there."""

    def __init__(
        self,
        url: str,
        channels: Sequence[str] = (),
        *,
        last_event_id: str | None = None,
        backoff: Backoff | None = None,
        client: httpx.AsyncClient | None = None,
        headers: dict[str, str] | None = None,
        read_timeout: float = 45.0,
        on_state: Callable[[ConnectionState], None] | None = None,
    ) -> None:
        self.url = stream_url(url, channels)
        self.last_event_id = last_event_id or ""
        self.backoff = backoff or Backoff()
        self.state = ConnectionState.CLOSED
        self._client = client
        self._own_client = client is None
        self._headers = dict(headers or {})
        self._timeout = httpx.Timeout(10.0, read=read_timeout)
        self._on_state = on_state
        self._events: AsyncGenerator[Message | Reset, None] | None = None

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self.state:
            self.state = state
            if self._on_state is not None:
                self._on_state(state)

    async def __aenter__(self) -> SSEListener:
        """Connect; return once the server has opened the stream (and subscribed)."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        try:
            first = await self._open(self._client)
        except BaseException:
            await self.aclose()
            raise
        self._events = self._run(self._client, first)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the stream and its HTTP connection at once."""
        events, self._events = self._events, None
        try:
            if events is not None:
                await events.aclose()
        finally:
            if self._own_client and self._client is not None:
                await self._client.aclose()
                self._client = None
            self._set_state(ConnectionState.CLOSED)

    def __aiter__(self) -> SSEListener:
        return self

    async def __anext__(self) -> Message | Reset:
        if self._events is None:
            raise RuntimeError("use the listener inside 'async with'")
        return await self._events.__anext__()

    async def _open(self, client: httpx.AsyncClient) -> httpx.Response:
        """Open a stream, retrying with backoff; raise when retrying cannot help."""
        last_error: BaseException | None = None
        if self.state is ConnectionState.CLOSED:
            self._set_state(ConnectionState.CONNECTING)
        while True:
            try:
                return await self._open_once(client)
            except (httpx.TransportError, _Retryable) as exc:
                last_error = exc
                logger.info("cannot open the SSE stream %s: %r", self.url, exc)
            if self.backoff.exhausted:
                self._set_state(ConnectionState.CLOSED)
                raise ReconnectExhausted(self.backoff.attempt, last_error)
            await asyncio.sleep(self.backoff.next_delay())

    async def _open_once(self, client: httpx.AsyncClient) -> httpx.Response:
        headers = request_headers(self.last_event_id, self._headers)
        request = client.build_request("GET", self.url, headers=headers, timeout=self._timeout)
        response = await client.send(request, stream=True)
        try:
            if response.status_code in TERMINAL_STATUSES:
                body = (await response.aread()).decode("utf-8", "replace")
                self._set_state(ConnectionState.CLOSED)
                raise StreamRejected(response.status_code, body)
            check_response(response.status_code, response.headers.get("content-type", ""))
        except BaseException:
            await response.aclose()
            raise
        self._set_state(ConnectionState.OPEN)
        self.backoff.reset()
        return response

    async def _run(
        self, client: httpx.AsyncClient, response: httpx.Response | None
    ) -> AsyncGenerator[Message | Reset, None]:
        while True:
            if response is None:
                response = await self._open(client)
            try:
                async with aclosing(self._read(response)) as items:
                    async for item in items:
                        yield item
                logger.info("SSE stream from %s ended; reconnecting", self.url)
            except httpx.TransportError as exc:
                logger.info("SSE stream from %s dropped: %r", self.url, exc)
            finally:
                await response.aclose()
                response = None
            self._set_state(ConnectionState.RECONNECTING)
            if self.backoff.exhausted:
                self._set_state(ConnectionState.CLOSED)
                raise ReconnectExhausted(self.backoff.attempt, None)
            await asyncio.sleep(self.backoff.next_delay())

    async def _read(self, response: httpx.Response) -> AsyncGenerator[Message | Reset, None]:
        decoder = SSEDecoder()
        async for chunk in response.aiter_bytes():
            for event in decoder.feed(chunk):
                self.last_event_id = event.id
                yield convert(event)
            self.last_event_id = decoder.last_event_id
            if decoder.retry is not None:
                self.backoff.honour_retry(decoder.retry)


def listen(
    url: str,
    channels: Sequence[str] = (),
    *,
    last_event_id: str | None = None,
    backoff: Backoff | None = None,
    client: httpx.AsyncClient | None = None,
    headers: dict[str, str] | None = None,
    read_timeout: float = 45.0,
    on_state: Callable[[ConnectionState], None] | None = None,
) -> SSEListener:
    """Listen to ``channels`` on a Tidings server; use as ``async with listen(...) as events``.

    Args:
        url: The server (``http://host:port``, ``/sse`` is added) or an SSE URL.
        channels: Channel names, added as ``?channel=`` parameters.
        last_event_id: A cursor to resume from.
        backoff: The reconnection schedule (exponential, full jitter, forever by default).
        client: An httpx client to use (not closed by the listener).
        headers: Extra request headers (e.g. authorization).
        read_timeout: Seconds without a byte (the server pings every 15 s)
            after which the connection counts as dead and is replaced.
        on_state: Called with each :class:`ConnectionState` change.

    Raises (while iterating):
        StreamRejected: the server answered 400/401/403/404/…; retrying cannot help.
        ReconnectExhausted: ``backoff.max_attempts`` attempts failed in a row.
    """
    return SSEListener(
        url,
        channels,
        last_event_id=last_event_id,
        backoff=backoff,
        client=client,
        headers=headers,
        read_timeout=read_timeout,
        on_state=on_state,
    )
