"""Blocking facade for scripts: publish and listen without touching asyncio.

::

    from tidings.client import publish, listen_sync

    publish("http://127.0.0.1:8000", "jobs", {"done": 3})
    with listen_sync("http://127.0.0.1:8000", ["jobs"]) as events:
        for event in events:
            print(event.channel, event.json())

``listen_sync`` behaves like the asyncio ``listen``: it reconnects with
backoff, resumes with ``Last-Event-ID`` and yields ``Reset`` for gaps. Both
drive the same sans-I/O state machine (``ReconnectingStream``); only the
I/O loop differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from types import TracebackType
from typing import Any

import httpx
import orjson

from tidings.client._errors import check_url, error_body, http_errors
from tidings.client._reconnect import (
    ConnectionState,
    Listening,
    Message,
    RetryableResponse,
    Verdict,
)
from tidings.client._token import TokenSource, fetch_token_sync
from tidings.client.backoff import Backoff
from tidings.errors import ProtocolError, PublishRejected
from tidings.types import Position
from tidings.wire import protocol
from tidings.wire.reset import Reset

__all__ = ["SyncListener", "apublish", "listen_sync", "publish"]


_MISSING: Any = object()
_JSON = {"content-type": "application/json"}


def _publish_request(
    channel: str, data: Any, text: str | None, event: str, key: str | None
) -> bytes:
    """The JSON body of a publish.

    Raises:
        IntegerOutOfRange: ``data`` holds an integer the server would refuse.
        TypeError: ``data`` is not JSON-serialisable.
    """
    body: dict[str, Any] = {"channel": channel, "event": event}
    if (data is _MISSING) == (text is None):
        raise TypeError("publish() takes data (JSON) or text, exactly one")
    if text is not None:
        body["text"] = text
    else:
        body["data"] = data
    if key is not None:
        body["key"] = key
    return protocol.encode_message(body, protocol.Format.JSON)


def _publish_result(response: httpx.Response) -> Position:
    if response.status_code == 200:
        try:
            answer = orjson.loads(response.content)
            return Position(str(answer["epoch"]), int(answer["offset"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ProtocolError(
                f"{response.url} answered 200 without a publish result: is it a Tidings server?",
                code="invalid_json",
            ) from None
    code, message = error_body(response.content) or ("internal", response.text[:200])
    raise PublishRejected(response.status_code, code, message, retry_after=_retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` of an answer in seconds (the delay form only), or None."""
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isascii() and value.isdigit() else None


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
    retried publish land once.

    Raises:
        PublishRejected: the server refused the publish; ``status`` and
            ``code`` say why (``"invalid_channel"``, ``"permission_denied"``,
            ``"rate_limited"``, ``"unavailable"`` …), and ``retry_after``
            when to try again (its ``Retry-After``). Nothing was published.
        IntegerOutOfRange: ``data`` holds an integer outside
            [-2**63, 2**64-1]; nothing was sent.
        ServerUnavailable: the server could not be reached (code
            ``"unreachable"``: refused, reset, no connection within
            ``timeout`` seconds); the httpx error is its ``__cause__``.
        RequestTimeout: connected, but no answer within ``timeout`` seconds
            (code ``"timeout"``); the publish may have happened: publish
            again with the same ``key`` to make it land once.
        InvalidURL: ``url`` is not an ``http(s)://host`` URL; nothing was sent.
        ProtocolError: the answer was not a Tidings publish result.
        TypeError: neither or both of ``data`` and ``text`` were given.

    Every error but ``TypeError`` is a :class:`~tidings.errors.TidingsError`
    with a ``code``.
    """
    body = _publish_request(channel, data, text, event, key)
    target = f"{check_url(url).rstrip('/')}/api/publish"
    with http_errors(target, "publish", timeout):
        if client is not None:
            response = client.post(target, content=body, headers=_JSON, timeout=timeout)
        else:
            response = httpx.post(target, content=body, headers=_JSON, timeout=timeout)
    return _publish_result(response)


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
    """The asyncio twin of :func:`publish`; it raises the same errors."""
    body = _publish_request(channel, data, text, event, key)
    target = f"{check_url(url).rstrip('/')}/api/publish"
    with http_errors(target, "publish", timeout):
        if client is not None:
            response = await client.post(target, content=body, headers=_JSON, timeout=timeout)
        else:
            async with httpx.AsyncClient() as own:
                response = await own.post(target, content=body, headers=_JSON, timeout=timeout)
    return _publish_result(response)


class SyncListener(Listening):
    """The blocking iterator behind :func:`listen_sync`.

    The reconnection logic is :class:`~tidings.client._reconnect.ReconnectingStream`'s;
    this class only moves its bytes with an ``httpx.Client``.
    """

    def __init__(
        self,
        url: str,
        channels: Sequence[str] = (),
        *,
        last_event_id: str | None = None,
        backoff: Backoff | None = None,
        client: httpx.Client | None = None,
        headers: dict[str, str] | None = None,
        read_timeout: float = 45.0,
        on_state: Callable[[ConnectionState], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        token: str | None = None,
        get_token: TokenSource | None = None,
    ) -> None:
        super().__init__(
            url,
            channels,
            last_event_id=last_event_id,
            backoff=backoff,
            headers=headers,
            on_state=on_state,
            token=token,
            renewable=get_token is not None,
        )
        self._get_token = get_token
        self._timeout = httpx.Timeout(10.0, read=read_timeout)
        self._sleep = sleep
        self._client = client
        self._own_client = client is None
        self._events: Generator[Message | Reset, None, None] | None = None

    def __enter__(self) -> SyncListener:
        """Connect; return once the server has opened the stream (and subscribed)."""
        if self._client is None:
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
            if self._own_client and self._client is not None:
                self._client.close()
                self._client = None
            self._stream.close()

    def __iter__(self) -> Iterator[Message | Reset]:
        if self._events is None:
            raise RuntimeError("use the listener inside 'with'")
        return self._events

    def _open(self, client: httpx.Client) -> httpx.Response:
        """Open a stream, retrying with backoff; raise when retrying cannot help."""
        stream = self._stream
        stream.connect()
        while True:
            if stream.needs_token and self._get_token is not None:
                stream.set_token(fetch_token_sync(self._get_token))
            try:
                response = self._open_once(client)
            except (httpx.TransportError, RetryableResponse) as exc:
                delay = stream.connect_failed(exc)
            else:
                if response is not None:
                    return response
                continue  # the token was refused: a new one, at once
            self._sleep(delay)

    def _open_once(self, client: httpx.Client) -> httpx.Response | None:
        """One request: the open stream, or None when a new token is needed."""
        stream = self._stream
        headers = stream.request_headers()
        request = client.build_request("GET", stream.url, headers=headers, timeout=self._timeout)
        response = client.send(request, stream=True)
        try:
            status, content_type = response.status_code, response.headers.get("content-type", "")
            verdict = stream.response_received(status, content_type)
            if verdict is Verdict.REJECT:
                raise stream.rejected(status, response.read())
            if verdict is Verdict.RETRY:
                raise RetryableResponse(status, content_type)
        except BaseException:
            response.close()
            raise
        if verdict is Verdict.RENEW:
            response.close()
            return None
        return response

    def _run(
        self, client: httpx.Client, response: httpx.Response | None
    ) -> Generator[Message | Reset, None, None]:
        stream = self._stream
        while True:
            if response is None:
                response = self._open(client)
            error: httpx.TransportError | None = None
            try:
                for chunk in response.iter_bytes():
                    stream.receive_data(chunk)
                    while (item := stream.next_event()) is not None:
                        yield item
            except httpx.TransportError as exc:
                error = exc
            finally:
                response.close()
                response = None
            self._sleep(stream.stream_ended(error))


def listen_sync(
    url: str,
    channels: Sequence[str] = (),
    *,
    last_event_id: str | None = None,
    backoff: Backoff | None = None,
    client: httpx.Client | None = None,
    headers: dict[str, str] | None = None,
    read_timeout: float = 45.0,
    on_state: Callable[[ConnectionState], None] | None = None,
    token: str | None = None,
    get_token: TokenSource | None = None,
) -> SyncListener:
    """The blocking twin of :func:`~tidings.client.listen`, with the same
    arguments (``client`` is an ``httpx.Client``, not closed by the listener;
    ``get_token`` is a plain function, not a coroutine function) and the same
    errors.

    ``with listen_sync(url, channels) as events: for event in events: ...``
    """
    return SyncListener(
        url,
        channels,
        last_event_id=last_event_id,
        backoff=backoff,
        client=client,
        headers=headers,
        read_timeout=read_timeout,
        on_state=on_state,
        token=token,
        get_token=get_token,
    )
