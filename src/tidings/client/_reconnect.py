"""The reconnecting SSE stream as a sans-I/O state machine, shared by both listeners.

:class:`ReconnectingStream` knows everything about listening except how to
move bytes: which headers a (re)connection sends, which answers open the
stream, which are worth retrying and which are final, how bytes become
:class:`Message` and :class:`~tidings.wire.reset.Reset` items, where to
resume, and how long to wait before the next attempt. It never awaits and
never touches a socket; ``sse.py`` (httpx.AsyncClient) and ``sync.py``
(httpx.Client) drive it, so the two behave the same by construction.
"""

# Theory of operation
# -------------------
#
# A shell calls, in this order:
#
#   connect()                         CLOSED -> CONNECTING (a first connect)
#   request_headers()                 before each request
#   set_token(get_token())            first, whenever needs_token is true
#   response_received(status, type)   OPEN   -> the stream is open: read it
#                                     REJECT -> read the body, raise rejected(status, body)
#                                     RETRY  -> close it, then as for a failed connect
#                                     RENEW  -> close it, then request again at once
#                                               (needs_token is now true)
#   connect_failed(error) -> delay    after a failed attempt: sleep, then try again
#   receive_data(chunk)               for each chunk of an open stream, then
#   next_event() until None           hands out items one by one, moving last_event_id
#   stream_ended(error) -> delay      OPEN -> RECONNECTING: sleep, then request again
#   close()                           any -> CLOSED
#
# connect_failed() and stream_ended() raise ReconnectExhausted (and go to
# CLOSED) once the backoff's attempts are used up; response_received() resets
# the backoff each time a stream opens. The state only changes through
# _set_state(), which reports each change to on_state.
#
# Tokens. With a get_token callback (``renewable``), the core asks for a new
# token (needs_token) before the first request when no token was given, after
# an ``expired`` event (the server ends the stream at the token's ``exp``;
# the reconnection then follows at once, with no backoff delay) and after a
# 401 answer to a token that was not fresh (RENEW). A 401 to a token fresh
# from get_token, i.e. the first answer since set_token(), is final: a new
# token would not fix it. Without get_token, a 401 is final at once. The
# ``expired`` event itself carries no ``id:``, so the cursor stays where it
# was and the next request resumes exactly after the last event handed out.

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from tidings.client._errors import check_url, stream_rejected
from tidings.client._token import authorization
from tidings.client.backoff import Backoff
from tidings.errors import InvalidCursor, ReconnectExhausted, StreamRejected
from tidings.types import Position, deprecated_name
from tidings.wire.cursor import decode_cursor
from tidings.wire.reset import Reset
from tidings.wire.sse import SSEDecoder, SSEEvent

__all__ = [
    "TERMINAL_STATUSES",
    "ConnectionState",
    "Listening",
    "Message",
    "ReconnectingStream",
    "RetryableResponse",
    "Verdict",
    "convert",
    "stream_url",
]

logger = logging.getLogger(__name__)

#: Statuses that retrying cannot fix: the client stops and raises StreamRejected.
TERMINAL_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 413, 414, 422})


class ConnectionState(StrEnum):
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class Verdict(Enum):
    """What to do with the answer to a stream request."""

    OPEN = "open"  # read the stream
    RETRY = "retry"  # close it and try again after a delay
    REJECT = "reject"  # final: read the body and raise StreamRejected
    RENEW = "renew"  # the token was refused: close it, get a new token, try again at once


class RetryableResponse(Exception):
    """An answer that retrying may fix (a 5xx, a proxy's page): the attempt failed."""

    def __init__(self, status: int, content_type: str) -> None:
        super().__init__(f"status {status}, content-type {content_type!r}")
        self.status = status
        self.content_type = content_type


@dataclass(frozen=True, slots=True)
class Message:
    """One event of the stream.

    ``event`` is the event type (``"message"`` unless the publisher chose
    one, the SSE ``event:`` field); ``channel`` and ``position`` come from
    the first entry of the event's id (Tidings puts the event's own channel
    first); ``data`` is the raw text.
    """

    event: str
    data: str
    id: str
    channel: str | None
    position: Position | None

    @property
    def offset(self) -> int | None:
        return self.position.offset if self.position is not None else None

    @property
    def type(self) -> str:
        """Deprecated name of :attr:`event`."""
        deprecated_name("Message.type", "Message.event")
        return self.event

    def json(self) -> Any:
        """The data parsed as JSON."""
        return orjson.loads(self.data)


def stream_url(url: str, channels: Sequence[str]) -> str:
    """The URL to request: ``/sse`` added to a bare server URL, one ``channel=`` per channel.

    Raises:
        InvalidURL: ``url`` is not an ``http(s)://host`` URL.
    """
    parts = urlsplit(check_url(url))
    if parts.path in ("", "/"):
        url = url.rstrip("/") + "/sse"
    if not channels:
        return url
    query = urlencode([("channel", channel) for channel in channels])
    return f"{url}{'&' if parts.query else '?'}{query}"


def convert(event: SSEEvent) -> Message | Reset:
    """The item a decoded event stands for: a :class:`Reset` or a :class:`Message`."""
    if event.event == "reset":
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
    return Message(event.event, event.data, event.id, channel, position)


class ReconnectingStream:
    """The state of one listener across its connections; see the module docstring.

    Args:
        url: The stream's URL (see :func:`stream_url`).
        last_event_id: The cursor to resume from ("" for the live stream).
        backoff: The reconnection schedule; the server's ``retry:`` sets its base.
        headers: Extra request headers.
        on_state: Called with each :class:`ConnectionState` change.
        token: The token to send (``Authorization: Bearer``) until a new one is set.
        renewable: Whether the shell can get a new token (it has a ``get_token``).
    """

    def __init__(
        self,
        url: str,
        *,
        last_event_id: str = "",
        backoff: Backoff,
        headers: dict[str, str] | None = None,
        on_state: Callable[[ConnectionState], None] | None = None,
        token: str | None = None,
        renewable: bool = False,
    ) -> None:
        self.url = url
        self.last_event_id = last_event_id
        self.backoff = backoff
        self.state = ConnectionState.CLOSED
        self.token = token
        self.renewable = renewable
        #: True when the shell must call get_token and set_token() before the next request.
        self.needs_token = renewable and token is None
        self._fresh = False  # the token came from get_token and has not been answered yet
        self._expired = False  # the open stream said its token expired
        self._headers = dict(headers or {})
        self._on_state = on_state
        self._decoder = SSEDecoder()
        self._pending: deque[SSEEvent] = deque()

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self.state:
            self.state = state
            if self._on_state is not None:
                self._on_state(state)

    def connect(self) -> None:
        """A first connection starts (a reconnection keeps its RECONNECTING state)."""
        if self.state is ConnectionState.CLOSED:
            self._set_state(ConnectionState.CONNECTING)

    def set_token(self, token: str) -> None:
        """A new token from get_token: the next requests send it."""
        self.token = token
        self.needs_token = False
        self._fresh = True

    def request_headers(self) -> dict[str, str]:
        """The headers of the next request: resume from ``last_event_id`` if any."""
        headers = {"accept": "text/event-stream", "cache-control": "no-cache", **self._headers}
        if self.token is not None:
            headers.update(authorization(self.token))
        if self.last_event_id:
            headers["last-event-id"] = self.last_event_id
        return headers

    def response_received(self, status: int, content_type: str) -> Verdict:
        """Classify the answer; on :attr:`Verdict.OPEN` the stream is open."""
        fresh, self._fresh = self._fresh, False
        if status == 401 and self.renewable and not fresh:
            logger.info("SSE stream %s: token refused; asking for a new one", self.url)
            self.needs_token = True
            return Verdict.RENEW
        if status in TERMINAL_STATUSES:
            return Verdict.REJECT
        if status != 200 or not content_type.startswith("text/event-stream"):
            return Verdict.RETRY
        self._decoder = SSEDecoder(last_event_id=self.last_event_id)
        self._pending.clear()
        self._set_state(ConnectionState.OPEN)
        self.backoff.reset()
        return Verdict.OPEN

    def rejected(self, status: int, body: bytes) -> StreamRejected:
        """The error to raise for a final answer, with the server's code and
        message when the body is a Tidings error; the listener is closed."""
        self._set_state(ConnectionState.CLOSED)
        return stream_rejected(status, body)

    def connect_failed(self, error: BaseException) -> float:
        """An attempt failed: return the seconds to wait before the next one.

        Raises:
            ReconnectExhausted: the backoff's attempts are used up.
        """
        logger.info("cannot open the SSE stream %s: %r", self.url, error)
        self._fresh = False
        return self._next_delay(error)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes of the open stream; read what they completed with :meth:`next_event`."""
        self._pending.extend(self._decoder.feed(data))
        if self._decoder.retry is not None:
            self.backoff.honour_retry(self._decoder.retry)

    def next_event(self) -> Message | Reset | None:
        """The next item received, or None when the bytes fed so far hold no more.

        ``last_event_id`` moves with each item handed out, so a consumer that
        stops between two items resumes exactly after the last one it got.
        An ``expired`` event is not handed out: it makes the next connection
        ask for a new token.
        """
        while self._pending:
            event = self._pending.popleft()
            self.last_event_id = event.id
            if event.event != "expired":
                return convert(event)
            logger.info("SSE stream %s: the token expired", self.url)
            self._expired = True
            self.needs_token = self.renewable
        self.last_event_id = self._decoder.last_event_id
        return None

    def stream_ended(self, error: BaseException | None = None) -> float:
        """The open stream ended (cleanly, or with ``error``): return the seconds
        to wait before reconnecting.

        A stream that ended because its token expired is replaced at once.

        Raises:
            ReconnectExhausted: the backoff's attempts are used up.
        """
        self._set_state(ConnectionState.RECONNECTING)
        if self._expired:
            self._expired = False
            return 0.0
        if error is None:
            logger.info("SSE stream from %s ended; reconnecting", self.url)
        else:
            logger.info("SSE stream from %s dropped: %r", self.url, error)
        return self._next_delay(None)

    def close(self) -> None:
        """The listener is closed."""
        self._set_state(ConnectionState.CLOSED)

    def _next_delay(self, last_error: BaseException | None) -> float:
        if self.backoff.exhausted:
            self._set_state(ConnectionState.CLOSED)
            raise ReconnectExhausted(self.backoff.attempt, last_error)
        return self.backoff.next_delay()


class Listening:
    """What both listeners share: a :class:`ReconnectingStream` and a read-only view of it.

    The I/O shells (``SSEListener``, ``SyncListener``) subclass it and add
    the loop that moves bytes.
    """

    def __init__(
        self,
        url: str,
        channels: Sequence[str],
        *,
        last_event_id: str | None,
        backoff: Backoff | None,
        headers: dict[str, str] | None,
        on_state: Callable[[ConnectionState], None] | None,
        token: str | None,
        renewable: bool,
    ) -> None:
        self._stream = ReconnectingStream(
            stream_url(url, channels),
            last_event_id=last_event_id or "",
            backoff=backoff or Backoff(),
            headers=headers,
            on_state=on_state,
            token=token,
            renewable=renewable,
        )

    @property
    def url(self) -> str:
        """The stream's URL."""
        return self._stream.url

    @property
    def last_event_id(self) -> str:
        """The cursor of the last item received: where a new listener would resume."""
        return self._stream.last_event_id

    @property
    def backoff(self) -> Backoff:
        """The reconnection schedule."""
        return self._stream.backoff

    @property
    def state(self) -> ConnectionState:
        """The connection's state."""
        return self._stream.state
