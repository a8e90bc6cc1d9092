"""The admin page ``/admin`` and its API: what the server is doing, a test publish,
and closing one connection.

Theory of operation
-------------------

The routes exist only when the ``admin_key`` setting is set (otherwise
``/admin`` and everything under it is a 404). The page itself is static
(``admin_page/``) and asks for the key, which it keeps in
``sessionStorage`` and sends as ``Authorization: Admin <key>`` with every
call; each call of the API is authorised by the one ``authorize()``
(``Action.ADMIN``, which only the admin principal passes).

A :class:`Monitor` turns counters that exist anyway into a *snapshot*: the
hub's totals (``Hub.stats``: the same numbers ``/metrics`` reads), the
connection registry (``server/connections.py``), each local channel's
subscriber count and delivered position (``Hub.subscriber_counts``,
``Hub.positions``), and the ring of recent errors. Rates are differences
between two readings at least :data:`MIN_INTERVAL` apart, so nothing is
counted per event or per delivery for the admin page; a reading costs one
pass over the open connections and the local channels, made only while
someone asks (``GET /admin/api/snapshot``, or once every
:data:`INTERVAL` per open ``GET /admin/api/events`` stream, which share
readings). At most :data:`MAX_STREAMS` event streams are open at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from tidings.errors import ProtocolError, TidingsError, TooManyConnections
from tidings.server import api
from tidings.server.auth import Action
from tidings.server.connections import Listed
from tidings.server.errors import error_response
from tidings.server.limits import RETRY_AFTER
from tidings.server.recent_errors import RecentErrors
from tidings.server.sse import SSE_HEADERS
from tidings.types import Position
from tidings.wire.codes import ErrorCode
from tidings.wire.protocol import MAX_PAGE_LIMIT
from tidings.wire.sse import encode_event

if TYPE_CHECKING:
    from tidings.server.state import ServerState

__all__ = [
    "CHANNELS_LISTED",
    "INTERVAL",
    "MAX_STREAMS",
    "MIN_INTERVAL",
    "TOP",
    "Monitor",
    "admin_routes",
]

#: The page's files: HTML, CSS and JavaScript, no build step.
PAGE: Final = Path(__file__).parent / "admin_page"
#: Seconds between two snapshots of an event stream.
INTERVAL: Final = 1.0
#: Shortest interval between two readings; a snapshot asked for sooner is the last one.
MIN_INTERVAL: Final = 0.5
#: Channels in each "top" list, and connections in the slow-consumer list.
TOP: Final = 10
#: Event streams (``GET /admin/api/events``) open at once.
MAX_STREAMS: Final = 8
#: Channel names listed per connection (``channel_count`` gives them all).
CHANNELS_LISTED: Final = 10
#: Recent errors carried by each snapshot (``GET /admin/api/errors`` has the whole ring).
ERRORS_IN_SNAPSHOT: Final = 5
#: Connections listed per page unless ``?limit=`` says otherwise.
DEFAULT_PAGE: Final = 100


@dataclass(frozen=True, slots=True)
class _Reading:
    time: float
    published: int
    delivered: int
    positions: dict[str, Position]


class Monitor:
    """Snapshots of one app's activity for the admin page (see the module docstring).

    Args:
        state: The app's shared state.
        errors: The ring of recent errors; a new one when omitted.
        clock: Monotonic seconds, for the rates (tests pass a fake).
    """

    def __init__(
        self,
        state: ServerState,
        errors: RecentErrors | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.clock = clock
        self.errors = errors if errors is not None else RecentErrors()
        #: Event streams open now.
        self.streams = 0
        self._last: _Reading | None = None
        self._snapshot: dict[str, Any] | None = None

    def snapshot(self) -> dict[str, Any]:
        """The activity now, with rates since the previous reading."""
        now = self.clock()
        last = self._last
        if self._snapshot is not None and last is not None and now - last.time < MIN_INTERVAL:
            return self._snapshot
        state = self.state
        hub = state.hub
        stats = hub.stats()
        reading = _Reading(now, stats.published, stats.delivered, hub.positions())
        elapsed = now - last.time if last is not None else 0.0

        def rate(before: int, after: int) -> float:
            return round(max(0, after - before) / elapsed, 2) if elapsed else 0.0

        connections = state.connections
        subscribers = hub.subscriber_counts()
        top_subscribers = heapq.nlargest(TOP, subscribers.items(), key=lambda item: item[1])
        rates: list[tuple[str, float]] = []
        if last is not None:
            for channel, position in reading.positions.items():
                before = last.positions.get(channel)
                if before is not None and before.epoch == position.epoch:
                    channel_rate = rate(before.offset, position.offset)
                    if channel_rate > 0:
                        rates.append((channel, channel_rate))
        slow = heapq.nlargest(
            TOP,
            (c for c in connections if c.subscription.pending_bytes),
            key=lambda c: c.subscription.pending_bytes,
        )
        snapshot = {
            "time": round(time.time(), 3),
            "interval": round(elapsed, 3),
            "backend": hub.backend.name,
            "draining": state.draining,
            "connections": {"total": len(connections), **connections.counts()},
            "subscriptions": stats.subscriptions,
            "channels": stats.channels,
            "outbox_bytes": stats.outbox_bytes,
            "published": stats.published,
            "delivered": stats.delivered,
            "dropped": stats.dropped,
            "slow_consumer_disconnects": stats.slow_consumers,
            "publish_rate": rate(last.published, stats.published) if last else 0.0,
            "delivery_rate": rate(last.delivered, stats.delivered) if last else 0.0,
            "top_subscribers": [
                {"channel": channel, "subscribers": count} for channel, count in top_subscribers
            ],
            "top_rates": [
                {"channel": channel, "rate": value}
                for channel, value in heapq.nlargest(TOP, rates, key=lambda item: item[1])
            ],
            "slow": [
                {
                    "id": c.id,
                    "transport": c.transport,
                    "peer": c.peer,
                    "pending_bytes": c.subscription.pending_bytes,
                    "max_bytes": c.subscription.max_bytes,
                }
                for c in slow
            ],
            "errors": {
                "total": self.errors.total,
                "recent": self.errors.entries(ERRORS_IN_SNAPSHOT),
            },
        }
        self._last = reading
        self._snapshot = snapshot
        return snapshot


def describe(connection: Listed, now: float) -> dict[str, Any]:
    """A connection as ``GET /admin/api/connections`` lists it."""
    channels = connection.subscription.channels
    return {
        "id": connection.id,
        "transport": connection.transport,
        "peer": connection.peer,
        "channels": list(_first(channels, CHANNELS_LISTED)),
        "channel_count": len(channels),
        "age": round(max(0.0, now - connection.opened_at), 1),
        "pending_bytes": connection.subscription.pending_bytes,
    }


def _first(names: dict[str, None], count: int) -> Iterator[str]:
    for place, name in enumerate(names):
        if place == count:
            return
        yield name


# -- routes --------------------------------------------------------------------------------------


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.tidings
    return state


def _monitor(request: Request) -> Monitor:
    """The app's monitor, once the request is authorised as the admin's."""
    state = _state(request)
    authority = state.authority
    authority.authorize(authority.principal(request.scope), Action.ADMIN)
    assert state.admin is not None, "admin routes exist only with an admin_key"
    return state.admin


async def snapshot(request: Request) -> Response:
    """``GET /admin/api/snapshot``: the activity now."""
    return api.JSONBody(_monitor(request).snapshot())


async def errors(request: Request) -> Response:
    """``GET /admin/api/errors``: the recent errors ring, newest first."""
    ring = _monitor(request).errors
    return api.JSONBody({"errors": ring.entries(), "total": ring.total, "size": ring.size})


def _after(value: str | None) -> int:
    """A connection page's ``?cursor=`` (the ``next`` of the page before)."""
    if not value:
        return 0
    if not (value.isascii() and value.isdigit()) or len(value) > 20:
        raise ProtocolError("cursor must be the 'next' of the page before")
    return int(value)


async def connections(request: Request) -> Response:
    """``GET /admin/api/connections?cursor=…&limit=…``: a page of open connections,
    oldest first, at most ``limit`` (1 to 1000, default 100) and about
    ``max_reply_bytes`` of them."""
    _monitor(request)
    state = _state(request)
    after = _after(request.query_params.get("cursor"))
    limit = api.query_limit(request, 1, MAX_PAGE_LIMIT) or DEFAULT_PAGE
    page, more = state.connections.page(after=after, limit=limit)
    now = time.time()
    budget = state.settings.max_reply_bytes
    listed: list[dict[str, Any]] = []
    size = 0
    last = after
    for sequence, connection in page:
        entry = describe(connection, now)
        cost = len(orjson.dumps(entry))
        if listed and size + cost > budget:
            more = True
            break
        listed.append(entry)
        size += cost
        last = sequence
    body = {
        "connections": listed,
        "next": str(last) if more else None,
        "total": len(state.connections),
    }
    return api.JSONBody(body)


async def disconnect(request: Request) -> Response:
    """``DELETE /admin/api/connections/{id}``: close one connection from the server side."""
    _monitor(request)
    connection_id = request.path_params["connection_id"]
    connection = _state(request).connections.get(connection_id)
    if connection is None:
        return error_response(
            status=404,
            code=ErrorCode.NOT_FOUND,
            message=f"no open connection {connection_id[:80]!r}",
        )
    connection.disconnect()
    return api.JSONBody({"disconnected": connection.id, "transport": connection.transport})


async def publish(request: Request) -> Response:
    """``POST /admin/api/publish``: a test event, as ``POST /api/publish`` takes it
    (same body, size limit and publish rates; the admin principal publishes)."""
    _monitor(request)
    return await api.publish(request)


class Events:
    """``GET /admin/api/events``: a snapshot every :data:`INTERVAL` as Server-Sent
    Events (``event: snapshot``), until the client leaves or the server drains."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            monitor = _monitor(request)
            if monitor.streams >= MAX_STREAMS:
                raise TooManyConnections(
                    f"at most {MAX_STREAMS} admin event streams are open at once", RETRY_AFTER
                )
        except TidingsError as exc:
            await error_response(exc)(scope, receive, send)
            return
        monitor.streams += 1
        try:
            await self._stream(monitor, receive, send)
        finally:
            monitor.streams -= 1

    async def _stream(self, monitor: Monitor, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.get_running_loop().create_task(watch(), name="tidings-admin-watch")
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            while not gone.is_set() and not monitor.state.draining:
                data = orjson.dumps(monitor.snapshot()).decode()
                body = encode_event(data, event="snapshot")
                await send({"type": "http.response.body", "body": body, "more_body": True})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), INTERVAL)
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-send
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def admin_routes() -> list[BaseRoute]:
    """The page (``admin_page/``) and the API under ``/admin``."""
    page = PAGE / "index.html"
    return [
        Route("/admin", lambda request: FileResponse(page), methods=["GET"]),
        Mount("/admin/static", StaticFiles(directory=PAGE), name="admin-static"),
        Route("/admin/api/snapshot", snapshot, methods=["GET"]),
        Route("/admin/api/events", Events(), methods=["GET"]),
        Route("/admin/api/errors", errors, methods=["GET"]),
        Route("/admin/api/connections", connections, methods=["GET"]),
        Route("/admin/api/connections/{connection_id}", disconnect, methods=["DELETE"]),
        Route("/admin/api/publish", publish, methods=["POST"]),
    ]
