"""SocketSubscription: one channel of a :class:`~tidings.client.Socket`, and the values it delivers.

A subscription tracks the position of the last event it received from the
replies and pushes the socket's reader hands it, in wire order, and buffers
items for an iterator or a handler. Nothing here touches the network.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from tidings.types import Position, deprecated_name
from tidings.wire.reset import Reset

if TYPE_CHECKING:
    from tidings.client.socket import Socket

__all__ = [
    "Handler",
    "HistoryPage",
    "Item",
    "Member",
    "Notice",
    "SocketEvent",
    "SocketSubscription",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SocketEvent:
    """An event of a channel's stream. ``event`` is the event type
    (``"message"`` unless the publisher chose one); ``data`` is the published
    JSON value, or the published text when ``text`` is true."""

    channel: str
    epoch: str
    offset: int
    event: str
    data: Any
    text: bool = False

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.offset)

    @property
    def type(self) -> str:
        """Deprecated name of :attr:`event`."""
        deprecated_name("SocketEvent.type", "SocketEvent.event")
        return self.event


@dataclass(frozen=True, slots=True)
class Notice:
    """A ``join`` or ``leave`` notice (namespaces with ``join_leave = true``);
    ``event`` says which."""

    channel: str
    event: str
    client: str | None
    user: Any
    info: Any

    @property
    def type(self) -> str:
        """Deprecated name of :attr:`event`."""
        deprecated_name("Notice.type", "Notice.event")
        return self.event


@dataclass(frozen=True, slots=True)
class Member:
    """One client present in a channel."""

    client: str
    user: Any
    info: Any


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """What :meth:`Socket.history` returns: the events and the channel's position.
    ``reset`` is set when ``since`` cannot be served (another epoch, or older
    than the history window). An answer is bounded in bytes: when ``more`` is
    true, read on with ``since=page.next``."""

    channel: str
    position: Position
    events: list[SocketEvent]
    reset: Reset | None
    next: Position | None = None
    more: bool = False


#: What a subscription delivers.
Item: TypeAlias = SocketEvent | Reset | Notice
#: A per-channel handler: a function or a coroutine function taking an item.
Handler: TypeAlias = Callable[[Item], Awaitable[None] | None]


def event_from(channel: str, message: dict[str, Any]) -> SocketEvent:
    return SocketEvent(
        channel,
        message["epoch"],
        message["offset"],
        message.get("event", "message"),
        message.get("data"),
        message.get("text") is True,
    )


class SocketSubscription:
    """One channel of a :class:`Socket`: an async iterator of :class:`SocketEvent`,
    :class:`~tidings.client.Reset` and :class:`Notice` items, or a handler's feed.

    ``position`` is the position of the last event received (or announced by
    a reset); after a reconnect the socket subscribes again from there. Items
    wait in a buffer of at most ``buffer`` until read; a handler is called
    from a task of its own, one item at a time, so it may await the socket
    (a publish, a history read) without holding up the connection.
    """

    def __init__(
        self,
        channel: str,
        *,
        since: Position | None = None,
        handler: Handler | None = None,
        buffer: int = 10000,
        socket: Socket | None = None,
    ) -> None:
        self.channel = channel
        self.position = Position(*since) if since is not None else None
        # The last event delivered (or ``since``): an event at or below it is a duplicate.
        self._floor = self.position
        self.generation = 0  # the connection it was last subscribed on
        self._handler = handler
        self._buffer = buffer
        self._socket = socket
        self._items: deque[Item] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None
        self._pump: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<SocketSubscription {self.channel!r} at {self.position}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def track_subscribed(self, result: dict[str, Any]) -> Reset | None:
        """Apply a subscribe reply; return the reset to deliver when it says
        the position could not be resumed.

        The reply's position is where the channel stood when the
        subscription went live: the replay ends there and events published
        while the server subscribed follow it. It becomes the resume point
        only when there is no other (a new subscription, a reset), and never
        the floor below which events count as duplicates: the replay is
        still to come.
        """
        position = Position(result["epoch"], result["offset"])
        if result.get("recovered") is False:
            self.position = position
            self._floor = None  # another epoch, or a window left: all that follows is new
            return Reset(self.channel, position, str(result.get("reset") or "unknown"))
        if self.position is None:
            self.position = position
        return None

    def track_push(self, message: dict[str, Any]) -> Item | None:
        """Apply a push of this channel; return the item to deliver, or None for
        an event already delivered."""
        offset = message.get("offset")
        if offset is None:  # join and leave are not part of the stream
            data = message.get("data")
            entry = data if isinstance(data, dict) else {}
            kind = message.get("event", "")
            return Notice(
                self.channel, kind, entry.get("client"), entry.get("user"), entry.get("info")
            )
        position = Position(message["epoch"], offset)
        if message.get("event") == "reset":
            self.position = self._floor = position
            data = message.get("data")
            reason = data.get("reason") if isinstance(data, dict) else None
            return Reset(self.channel, position, str(reason or "unknown"))
        floor = self._floor
        if floor is not None and floor.epoch == position.epoch and offset <= floor.offset:
            logger.debug("dropping %s %s: already delivered", self.channel, position)
            return None
        self.position = self._floor = position
        return event_from(self.channel, message)

    async def deliver(self, item: Item) -> None:
        """Buffer ``item`` for the iterator or the handler, waiting while
        ``buffer`` items are unread (the server holds the rest meanwhile)."""
        while len(self._items) >= self._buffer and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            return
        self._items.append(item)
        self._readable.set()
        if self._handler is not None and self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(
                self._call_handler(self._handler), name=f"tidings-socket-handler {self.channel}"
            )

    async def _take(self) -> Item | None:
        """The next item; None once closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        self._writable.set()
        return self._items.popleft()

    async def _call_handler(self, handler: Handler) -> None:
        while (item := await self._take()) is not None:
            try:
                outcome = handler(item)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.exception("the handler of %s failed on %r", self.channel, item)

    @property
    def handling(self) -> bool:
        """Whether the handler's task is running."""
        return self._pump is not None and not self._pump.done()

    async def wait_handled(self) -> None:
        """After :meth:`close`: wait until the handler has been called with every item."""
        if self._pump is not None:
            await asyncio.shield(self._pump)

    async def stop(self) -> None:
        """Close, and stop the handler's task at once."""
        self.close()
        pump = self._pump
        if pump is not None and not pump.done():
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    def close(self, error: BaseException | None = None) -> None:
        """End the subscription: iterators yield what is buffered, then stop
        (or raise ``error``)."""
        if not self._closed:
            self._closed = True
            self._error = error
        self._readable.set()
        self._writable.set()

    async def unsubscribe(self) -> None:
        """Leave the channel (:meth:`Socket.unsubscribe`)."""
        if self._socket is not None:
            await self._socket.unsubscribe(self.channel)
        self.close()

    def __aiter__(self) -> SocketSubscription:
        return self

    async def __anext__(self) -> Item:
        if self._handler is not None:
            raise RuntimeError(f"the items of {self.channel!r} go to its handler")
        item = await self._take()
        if item is None:
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        return item
