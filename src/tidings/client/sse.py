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

With ``get_token``, the listener asks it for a new token whenever the server
says the current one expired (an ``expired`` event at the token's ``exp``)
or refuses it (401), and reconnects with the same cursor::

    async with listen(url, ["chat"], get_token=fetch_token) as events:
        ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from types import TracebackType

import httpx

from tidings.client._reconnect import (
    ConnectionState,
    Listening,
    Message,
    RetryableResponse,
    Verdict,
)
from tidings.client._token import AsyncTokenSource, fetch_token
from tidings.client.backoff import Backoff
from tidings.wire.reset import Reset

__all__ = ["ConnectionState", "Message", "Reset", "SSEListener", "listen"]


class SSEListener(Listening):
    """The async iterator behind :func:`listen`; see there.

    The reconnection logic is :class:`~tidings.client._reconnect.ReconnectingStream`'s;
    this class only moves its bytes with an ``httpx.AsyncClient``.
    """

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
        token: str | None = None,
        get_token: AsyncTokenSource | None = None,
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
        self._client = client
        self._own_client = client is None
        self._timeout = httpx.Timeout(10.0, read=read_timeout)
        self._events: AsyncGenerator[Message | Reset, None] | None = None

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
            self._stream.close()

    def __aiter__(self) -> SSEListener:
        return self

    async def __anext__(self) -> Message | Reset:
        if self._events is None:
            raise RuntimeError("use the listener inside 'async with'")
        return await self._events.__anext__()

    async def _open(self, client: httpx.AsyncClient) -> httpx.Response:
        """Open a stream, retrying with backoff; raise when retrying cannot help."""
        stream = self._stream
        stream.connect()
        while True:
            if stream.needs_token and self._get_token is not None:
                stream.set_token(await fetch_token(self._get_token))
            try:
                response = await self._open_once(client)
            except (httpx.TransportError, RetryableResponse) as exc:
                delay = stream.connect_failed(exc)
            else:
                if response is not None:
                    return response
                continue  # the token was refused: a new one, at once
            await asyncio.sleep(delay)

    async def _open_once(self, client: httpx.AsyncClient) -> httpx.Response | None:
        """One request: the open stream, or None when a new token is needed."""
        stream = self._stream
        headers = stream.request_headers()
        request = client.build_request("GET", stream.url, headers=headers, timeout=self._timeout)
        response = await client.send(request, stream=True)
        try:
            status, content_type = response.status_code, response.headers.get("content-type", "")
            verdict = stream.response_received(status, content_type)
            if verdict is Verdict.REJECT:
                raise stream.rejected(status, await response.aread())
            if verdict is Verdict.RETRY:
                raise RetryableResponse(status, content_type)
        except BaseException:
            await response.aclose()
            raise
        if verdict is Verdict.RENEW:
            await response.aclose()
            return None
        return response

    async def _run(
        self, client: httpx.AsyncClient, response: httpx.Response | None
    ) -> AsyncGenerator[Message | Reset, None]:
        stream = self._stream
        while True:
            if response is None:
                response = await self._open(client)
            error: httpx.TransportError | None = None
            try:
                async for chunk in response.aiter_bytes():
                    stream.receive_data(chunk)
                    while (item := stream.next_event()) is not None:
                        yield item
            except httpx.TransportError as exc:
                error = exc
            finally:
                await response.aclose()
                response = None
            await asyncio.sleep(stream.stream_ended(error))


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
    token: str | None = None,
    get_token: AsyncTokenSource | None = None,
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
        token: A token, sent as ``Authorization: Bearer <token>``.
        get_token: A callable (plain or async) returning a fresh token. It is
            called before the first connection when no ``token`` is given,
            and before each reconnection that follows the token's expiry
            (the server's ``expired`` event) or a 401 answer; the stream then
            resumes from the last event received. What it raises ends the
            iteration.

    Raises (while iterating):
        StreamRejected: the server answered 400/401/403/404/…; retrying cannot
            help. (With ``get_token``, a 401 is final only when it answers a
            token fresh from ``get_token``.)
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
        token=token,
        get_token=get_token,
    )
