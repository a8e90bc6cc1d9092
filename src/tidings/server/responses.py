"""SSEResponse: stream hub channels, or any async iterable, from your own route.

::

    @app.get("/orders/{order_id}/events")
    async def order_events(order_id: str, request: Request) -> SSEResponse:
        return SSEResponse(
            hub, [f"orders:{order_id}"], last_event_id=request.headers.get("last-event-id")
        )

With a hub it is the same transport as ``GET /sse``: cursor ids, resume,
``reset``, keepalive comments, slow-consumer policy and prompt cleanup on
disconnect. With an async iterable (or a callable that makes one from the
client's ``Last-Event-ID``) it streams your own events
(``server/streams.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import overload

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tidings.errors import TidingsError
from tidings.hub import Hub, OverflowPolicy, validate_channel
from tidings.server.errors import error_response
from tidings.server.sse import SSEKeepalive, SSEStream
from tidings.server.streams import EventSource, EventStream
from tidings.types import Position
from tidings.wire.cursor import decode_cursor

__all__ = ["SSEResponse"]


class SSEResponse(Response):
    """An ASGI response streaming hub channels, or your own events, as Server-Sent Events.

    ``SSEResponse(hub, channels, ...)`` streams hub channels:

    Args:
        hub: The hub (started by your app's lifespan).
        channels: One channel name or several.
        last_event_id: The client's ``Last-Event-ID`` (a cursor), or a mapping
            of channel to :class:`~tidings.types.Position`.
        retry: Reconnection delay to announce, in seconds.
        keepalive: Seconds between ``: ping`` comments (``None`` for none).
        outbox_max_bytes: Bound of the outbox (hub default when None).
        overflow: Slow-consumer policy (hub default when None).
        headers: Extra response headers.
        compression: ``"gzip"`` to gzip the stream for clients whose
            ``Accept-Encoding`` accepts it, flushed after every batch of events
            so none waits in the compressor; ``"off"`` (default) never does.

    An invalid channel or cursor is answered with a 400 JSON error when the
    response runs; build-time errors are not raised inside your route. It is
    a Starlette ``Response``, so FastAPI returns it as is.

    ``SSEResponse(source, ...)`` streams what ``source`` yields: ``source`` is
    an async iterable, or a callable taking the client's ``Last-Event-ID``
    (``None`` on a first connection; ``last_event_id`` instead, when given)
    and returning one, such as an async generator function. Items are
    strings, JSON values, :class:`~tidings.server.ServerSentEvent` or hub
    events (:class:`~tidings.server.streams.EventStream`). ``retry``,
    ``keepalive`` and ``headers`` apply; ``outbox_max_bytes`` and
    ``overflow`` do not (the producer waits for the client instead), nor
    does ``compression`` (an event source is sent uncompressed).

    Raises:
        TypeError: a hub without channels, channels without a hub, or a
            source that is neither an async iterable nor a callable.
    """

    media_type = "text/event-stream"

    @overload
    def __init__(
        self,
        source: Hub,
        channels: str | Iterable[str],
        *,
        last_event_id: str | Mapping[str, Position] | None = None,
        retry: float = 3.0,
        keepalive: float | None = 15.0,
        outbox_max_bytes: int | None = None,
        overflow: OverflowPolicy | str | None = None,
        headers: Mapping[str, str] | None = None,
        compression: str = "off",
    ) -> None: ...

    @overload
    def __init__(
        self,
        source: EventSource,
        *,
        last_event_id: str | None = None,
        retry: float = 3.0,
        keepalive: float | None = 15.0,
        headers: Mapping[str, str] | None = None,
    ) -> None: ...

    def __init__(
        self,
        source: Hub | EventSource,
        channels: str | Iterable[str] | None = None,
        *,
        last_event_id: str | Mapping[str, Position] | None = None,
        retry: float = 3.0,
        keepalive: float | None = 15.0,
        outbox_max_bytes: int | None = None,
        overflow: OverflowPolicy | str | None = None,
        headers: Mapping[str, str] | None = None,
        compression: str = "off",
    ) -> None:
        self.status_code = 200
        self.compression = compression
        self.background: BackgroundTask | None = None
        self.events: EventStream | None = None
        if not isinstance(source, Hub):
            if channels is not None:
                raise TypeError("channels go with a hub, not with an event source")
            if last_event_id is not None and not isinstance(last_event_id, str):
                raise TypeError("the last_event_id of an event source is a string")
            if compression != "off":
                raise TypeError("compression applies to hub channels, not to an event source")
            self.events = EventStream(
                source,
                last_event_id=last_event_id,
                retry=retry,
                keepalive=keepalive,
                headers=headers,
            )
            return
        if channels is None:
            raise TypeError("SSEResponse(hub, channels): name the channels to stream")
        self.hub = source
        self.channels = [channels] if isinstance(channels, str) else list(channels)
        self.last_event_id = last_event_id
        self.retry = retry
        self.keepalive = SSEKeepalive(keepalive) if keepalive is not None else None
        self.outbox_max_bytes = outbox_max_bytes
        self.overflow = overflow
        self.extra_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in (headers or {}).items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.events is not None:
            await self.events(scope, receive, send)
        else:
            await self._stream_channels(scope, receive, send)
        if self.background is not None:
            await self.background()

    async def _stream_channels(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            channels = [validate_channel(channel) for channel in self.channels]
            if self.last_event_id is None:
                cursor: dict[str, Position] = {}
            elif isinstance(self.last_event_id, str):
                cursor = decode_cursor(self.last_event_id)
            else:
                cursor = dict(self.last_event_id)
        except TidingsError as exc:
            await error_response(exc)(scope, receive, send)
            return
        stream = SSEStream(
            self.hub,
            channels,
            cursor=cursor,
            retry=self.retry,
            keepalive=self.keepalive,
            outbox_max_bytes=self.outbox_max_bytes,
            overflow=self.overflow,
            headers=self.extra_headers,
            compression=self.compression,
        )
        await stream(scope, receive, send)
