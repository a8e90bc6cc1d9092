"""What a :class:`~tidings.client.Socket` has waiting: requests by id, the offline
queue of publishes, and the pacing of commands. No network here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tidings.client.subscription import SocketSubscription
from tidings.errors import PublishRejected, QueueFull, RequestRejected, RequestTimeout
from tidings.wire.codes import ErrorCode

__all__ = [
    "MAX_RETRY_AFTER",
    "Dropped",
    "OfflineQueue",
    "Outgoing",
    "Pacer",
    "Request",
    "Requests",
    "reply_error",
    "retry_after",
]


def reply_error(error: Any, op: str = "") -> RequestRejected:
    """The exception for an error reply's ``error`` object to command ``op``:
    a :class:`PublishRejected` for a publish, else a :class:`RequestRejected`.
    ``code`` is the server's, and ``retry_after`` the seconds it asked to wait
    (a rate limit, a drain), if any."""
    if isinstance(error, dict):
        code, message = str(error.get("code", ErrorCode.INTERNAL)), str(error.get("message", ""))
    else:
        code, message = ErrorCode.INTERNAL.value, repr(error)
    delay = retry_after(error)
    if op == "publish":
        return PublishRejected(None, code, message, retry_after=delay)
    return RequestRejected(code, message, retry_after=delay, what=op or "request")


#: Seconds a client waits at most when a server asks it to retry later.
MAX_RETRY_AFTER = 60.0


def retry_after(error: Any) -> float | None:
    """The ``retry_after`` of an error reply's ``error`` object (seconds, at most
    :data:`MAX_RETRY_AFTER`), or None when it has none."""
    if not isinstance(error, dict):
        return None
    value = error.get("retry_after")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return None
    return min(float(value), MAX_RETRY_AFTER)


class Dropped(Exception):
    """The connection a request was sent on ended before its reply."""


@dataclass(slots=True, eq=False)
class Outgoing:
    """A publish: encoded once (its id and key fixed at the first call), sent once per
    connection until acknowledged."""

    id: int
    payload: bytes
    future: asyncio.Future[Any]


@dataclass(slots=True, eq=False)
class Request:
    op: str
    future: asyncio.Future[Any]
    outgoing: Outgoing | None = None
    subscription: SocketSubscription | None = None
    timer: asyncio.TimerHandle | None = None


class Requests:
    """Commands waiting for their reply, by id. Ids grow for the life of a
    :class:`Socket` and never repeat, so a reply can only settle its own request.

    A request without its reply in time fails with :class:`RequestTimeout`,
    except a publish: it stays, and ``on_stale`` is called (the socket then
    drops the connection, and the publish is sent again on the next one with
    the same idempotency key, so it is neither lost nor repeated).
    """

    def __init__(self, *, on_stale: Callable[[Request], None] | None = None) -> None:
        self._next_id = 1
        self._waiting: dict[int, Request] = {}
        self._on_stale = on_stale

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._waiting

    def next_id(self) -> int:
        request_id = self._next_id
        self._next_id += 1
        return request_id

    def open(self, request_id: int, request: Request, *, timeout: float | None = None) -> None:
        """Wait for the reply to ``request_id``; after ``timeout`` seconds, fail
        the request with :class:`RequestTimeout`."""
        if timeout is not None:
            loop = asyncio.get_running_loop()
            request.timer = loop.call_later(timeout, self._expire, request_id, timeout)
        self._waiting[request_id] = request

    def discard(self, request_id: int) -> None:
        request = self._waiting.pop(request_id, None)
        if request is not None and request.timer is not None:
            request.timer.cancel()

    def settle(self, message: dict[str, Any]) -> Request | None:
        """Take the request a reply answers (None for an unknown or late one).

        The caller applies the reply and then calls :meth:`resolve`, so that
        what the reply changes (a subscription's position) happens before the
        messages that follow it on the wire.
        """
        request_id = message.get("id")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            return None
        request = self._waiting.pop(request_id, None)
        if request is not None and request.timer is not None:
            request.timer.cancel()
        return request

    @staticmethod
    def resolve(request: Request, message: dict[str, Any]) -> None:
        if request.future.done():  # the caller stopped waiting
            return
        if "error" in message:
            request.future.set_exception(reply_error(message["error"], request.op))
        else:
            request.future.set_result(message.get("result"))

    def drop_all(self) -> list[Request]:
        """Forget every request (the connection ended), oldest first."""
        requests = [self._waiting[key] for key in sorted(self._waiting)]
        self._waiting.clear()
        for request in requests:
            if request.timer is not None:
                request.timer.cancel()
        return requests

    def _expire(self, request_id: int, timeout: float) -> None:
        request = self._waiting.get(request_id)
        if request is None:
            return
        request.timer = None
        if request.outgoing is not None and self._on_stale is not None:
            self._on_stale(request)
            return
        del self._waiting[request_id]
        if not request.future.done():
            request.future.set_exception(RequestTimeout(request.op, timeout))


class OfflineQueue:
    """Publishes waiting for a connection, in the order they were made; at most ``limit``."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("queue_limit must be >= 0")
        self.limit = limit
        self._items: deque[Outgoing] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Outgoing) -> None:
        """Queue a new publish.

        Raises:
            QueueFull: ``limit`` publishes are waiting already.
        """
        if len(self._items) >= self.limit:
            raise QueueFull(self.limit)
        self._items.append(item)

    def requeue(self, items: Iterable[Outgoing]) -> None:
        """Put back publishes that were in flight (they were accepted, so the
        limit does not apply); the order stays the order of the calls."""
        merged = [*self._items, *items]
        merged.sort(key=lambda item: item.id)
        self._items = deque(merged)

    def pop(self) -> Outgoing | None:
        """The next publish still awaited by its caller, or None."""
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                return item
        return None

    def fail(self, exc: BaseException) -> None:
        """Fail every waiting publish (the socket closed for good)."""
        items, self._items = self._items, deque()
        for item in items:
            if not item.future.done():
                item.future.set_exception(exc)


class Pacer:
    """Spaces commands to at most ``rate`` per second, in bursts of at most
    ``burst`` (the generic cell rate algorithm), so a client never trips the
    server's ``ws_rate_limit``: a refused publish in the middle of a flush
    would land out of order.
    """

    def __init__(self, rate: float | None, *, burst: float | None = None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate_limit must be > 0 commands per second, or None")
        self.interval = 0.0 if rate is None else 1.0 / rate
        size = max(1.0, burst if burst is not None else (rate or 2.0) / 2)
        self.tolerance = (size - 1.0) * self.interval
        self._theoretical = float("-inf")

    def reserve(self, now: float) -> float:
        """Take the next slot; return how many seconds to wait for it."""
        if not self.interval:
            return 0.0
        theoretical = max(self._theoretical, now)
        self._theoretical = theoretical + self.interval
        delay = theoretical - self.tolerance - now
        return delay if delay > 1e-9 else 0.0  # not a sleep for float rounding
