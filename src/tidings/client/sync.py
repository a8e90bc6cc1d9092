"""Blocking facade for scripts: publish and listen without touching asyncio.

::

    from tidings.client import publish, listen_sync

    publish("http://127.0.0.1:8000", "jobs", {"done": 3})
    with listen_sync("http://127.0.0.1:8000", ["jobs"]) as events:
        for event in events:
            print(event.channel, event.json())

``listen_sync`` behaves like the asyncio ``listen``: it reconnects with
backoff, resumes with ``Last-Event-ID`` and yields ``Reset`` for gaps. Both
share the same sans-I/O pieces (``SSEDecoder``, ``Backoff``, the event
conversion); only the I/O loop differs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from types import TracebackType
from typing import Any

import httpx

from tidings.client.backoff import Backoff
from tidings.client.sse import (
    TERMINAL_STATUSES,
    ConnectionState,
    Message,
    Reset,
    _Retryable,
    check_response,
    convert,
    request_headers,
    stream_url,
)
from tidings.errors import ReconnectExhausted, StreamRejected, TidingsError
from tidings.types import Position
from tidings.wire.sse import SSEDecoder

__all__ = ["SyncListener", "apublish", "listen_sync", "publish"]

logger = logging.getLogger(__name__)

_MISSING: Any = object()


def _publish_request(
    channel: str, data: Any, text: str | None, event: str, key: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"channel": channel, "event": event}
    if (data is _MISSING) == (text is None):
        raise TypeError("publish() takes data (JSON) or text, exactly one")
    if text is not None:
        body["text"] = text
    else:
        body["data"] = data
    if key is not None:
        body["key"] = key
    return body


def _publish_result(response: httpx.Response) -> Position:
    if response.status_code == 200:
        answer = response.json()
        return Position(answer["epoch"], answer["offset"])
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        code, message = "internal", response.text[:200]
    exc = TidingsError(f"publish failed with {response.status_code} {code}: {message}")
    exc.code = code
    raise exc


def publish(
    url: str,
    channel: str,
    data: Any = _MISSING,
    *,
    text: str | None = None,
    event: str = "message",
    key: str | None = None,
    timeout: float = 10.0,
    client: httpx.Client | None = None,
) -> Position:
    """Publish through a server's HTTP API and return the event's position.

    Give ``data`` (any JSON value) or ``text`` (plain text). ``key`` makes a
    retried publish land once. Raises :class:`~tidings.errors.TidingsError`
    (with the server's ``code``) when the server refuses, and
    ``httpx.HTTPError`` when it cannot be reached.
    """
    body = _publish_request(channel, data, text, event, key)
    target = f"{url.rstrip('/')}/api/publish"
    if client is not None:
        return _publish_result(client.post(target, json=body, timeout=timeout))
    return _publish_result(httpx.post(target, json=body, timeout=timeout))


async def apublish(
    url: str,
    channel: str,
    data: Any = _MISSING,
    *,
    text: str | None = None,
    event: str = "message",
    key: str | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - the HTTP request's own timeout, as in httpx
    client: httpx.AsyncClient | None = None,
) -> Position:
    """The asyncio twin of :func:`publish`."""
    body = _publish_request(channel, data, text, event, key)
    target = f"{url.rstrip('/')}/api/publish"
    if client is not None:
        return _publish_result(await client.post(target, json=body, timeout=timeout))
    async with httpx.AsyncClient() as own:
        return _publish_result(await own.post(target, json=body, timeout=timeout))


class SyncListener:
    """The blocking iterator behind :func:`listen_sync`."""

    def __init__(
        self,
        url: str,
        channels: Sequence[str] = (),
        *,
        last_event_id: str | None = None,
        backoff: Backoff | None = None,
        headers: dict[str, str] | None = None,
        read_timeout: float = 45.0,
        on_state: Callable[[ConnectionState], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = stream_url(url, channels)
        self.last_event_id = last_event_id or ""
        self.backoff = backoff or Backoff()
        self.state = ConnectionState.CLOSED
        self._headers = dict(headers or {})
        self._timeout = httpx.Timeout(10.0, read=read_timeout)
        self._on_state = on_state
        self._sleep = sleep
        self._client: httpx.Client | None = None
        self._events: Generator[Message | Reset, None, None] | None = None

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self.state:
            self.state = state
            if self._on_state is not None:
                self._on_state(state)

    def __enter__(self) -> SyncListener:
        """Connect; return once the server has opened the stream (and subscribed)."""
        self._client = httpx.Client(timeout=self._timeout)
        try:
            first = self._open(self._client)
        except BaseException:
            self.close()
            raise
        self._events = self._run(self._client, first)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the stream and its connection at once."""
        events, self._events = self._events, None
        try:
            if events is not None:
                events.close()
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None
            self._set_state(ConnectionState.CLOSED)

    def __iter__(self) -> Iterator[Message | Reset]:
        if self._events is None:
            raise RuntimeError("use the listener inside 'with'")
        return self._events

    def _open(self, client: httpx.Client) -> httpx.Response:
        last_error: BaseException | None = None
        if self.state is ConnectionState.CLOSED:
            self._set_state(ConnectionState.CONNECTING)
        while True:
            try:
                return self._open_once(client)
            except (httpx.TransportError, _Retryable) as exc:
                last_error = exc
                logger.info("cannot open the SSE stream %s: %r", self.url, exc)
            if self.backoff.exhausted:
                self._set_state(ConnectionState.CLOSED)
                raise ReconnectExhausted(self.backoff.attempt, last_error)
            self._sleep(self.backoff.next_delay())

    def _open_once(self, client: httpx.Client) -> httpx.Response:
        headers = request_headers(self.last_event_id, self._headers)
        response = client.send(client.build_request("GET", self.url, headers=headers), stream=True)
        try:
            if response.status_code in TERMINAL_STATUSES:
                body = response.read().decode("utf-8", "replace")
                self._set_state(ConnectionState.CLOSED)
                raise StreamRejected(response.status_code, body)
            check_response(response.status_code, response.headers.get("content-type", ""))
        except BaseException:
            response.close()
            raise
        self._set_state(ConnectionState.OPEN)
        self.backoff.reset()
        return response

    def _run(
        self, client: httpx.Client, response: httpx.Response | None
    ) -> Generator[Message | Reset, None, None]:
        while True:
            if response is None:
                response = self._open(client)
            try:
                yield from self._read(response)
                logger.info("SSE stream from %s ended; reconnecting", self.url)
            except httpx.TransportError as exc:
                logger.info("SSE stream from %s dropped: %r", self.url, exc)
            finally:
                response.close()
                response = None
            self._set_state(ConnectionState.RECONNECTING)
            if self.backoff.exhausted:
                self._set_state(ConnectionState.CLOSED)
                raise ReconnectExhausted(self.backoff.attempt, None)
            self._sleep(self.backoff.next_delay())

    def _read(self, response: httpx.Response) -> Generator[Message | Reset, None, None]:
        decoder = SSEDecoder()
        for chunk in response.iter_bytes():
            for event in decoder.feed(chunk):
                self.last_event_id = event.id
                yield convert(event)
            self.last_event_id = decoder.last_event_id
            if decoder.retry is not None:
                self.backoff.honour_retry(decoder.retry)


def listen_sync(
    url: str,
    channels: Sequence[str] = (),
    *,
    last_event_id: str | None = None,
    backoff: Backoff | None = None,
    headers: dict[str, str] | None = None,
    read_timeout: float = 45.0,
    on_state: Callable[[ConnectionState], None] | None = None,
) -> SyncListener:
    """The blocking twin of :func:`~tidings.client.listen`.

    ``with listen_sync(url, channels) as events: for event in events: ...``
    """
    return SyncListener(
        url,
        channels,
        last_event_id=last_event_id,
        backoff=backoff,
        headers=headers,
        read_timeout=read_timeout,
        on_state=on_state,
    )
