"""Subscription: one consumer of one or more channels, with a bounded outbox.

Theory of operation
-------------------

The hub never waits for a subscriber. Publishing calls ``_deliver`` on every
subscription of the channel, synchronously, and each subscription does one of
two things with the event:

* **write it now**, when a transport has attached a writer (the fast path of
  ``tidings serve``) and the socket is not paused: ``write(encode(event))``
  puts the event's shared, pre-encoded bytes on the transport;
* **queue it** in the outbox otherwise: when the consumer pulls (an ``async
  for`` loop, or an ASGI transport draining with ``take()``), or while the
  transport is paused because the peer reads slower than we write.

The outbox is bounded in bytes (``max_bytes``; each event is charged its data
size plus a fixed overhead). When it would grow past the bound, the policy
decides:

* ``disconnect`` (default): the subscription closes with reason
  ``"slow_consumer"`` and its outbox is freed; the transport closes the
  connection and the client resumes from its cursor.
* ``drop``: the oldest queued events are dropped until the outbox is at half
  its bound, and a :class:`~tidings.hub.event.Reset` for each channel that
  lost events takes their place, so the consumer learns about the gap.

A paused writer gets the whole outbox in one write when the transport resumes
(encoded by ``encode_batch`` when the transport gave one, so that a WebSocket
can put the backlog in one frame).

A replay (history after a resume position) is not live traffic: the hub
reads it in pages and hands each to ``_deliver_page``, which writes it like
anything else, or queues it *without holding it against the bound* (the
page's bytes are counted in ``_grace`` until the outbox has been emptied,
by ``take()``, iteration, a resumed writer, or a drop). The hub reads the
next page only then (``_drained``); a page of another channel that comes
while one waits must fit within the bound. So the replay goes at the pace of
the consumer and the outbox never holds more than its bound plus one page: a
consumer that reads as fast as it can catches up with any history, and one
that stalls holds one page.
Closing is synchronous and idempotent: it removes the subscription from every
channel at once, so ``finally: subscription.close()`` is enough to guarantee
cleanup on cancellation.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

from tidings.errors import SubscriptionClosed
from tidings.hub.event import Event, Item, Reset
from tidings.types import Position

if TYPE_CHECKING:
    from types import TracebackType

    from tidings.hub.hub import Hub
    from tidings.hub.presence import ClientInfo

__all__ = ["CloseReason", "OverflowPolicy", "Subscribed", "Subscription"]


class OverflowPolicy(StrEnum):
    """What happens when a subscription's outbox is full."""

    DISCONNECT = "disconnect"
    DROP = "drop"

    @classmethod
    def _missing_(cls, value: object) -> OverflowPolicy:
        raise ValueError(f"overflow policy must be 'disconnect' or 'drop', not {value!r}")


class CloseReason(StrEnum):
    """Why a subscription ended."""

    CLOSED = "closed"  # its owner closed it
    DISCONNECT = "disconnect"  # the transport's peer went away
    SLOW_CONSUMER = "slow_consumer"  # overflow under the disconnect policy
    SHUTDOWN = "shutdown"  # the hub is closing


#: Reasons the hub chose; iterating a subscription closed for one of these
#: raises SubscriptionClosed instead of ending quietly.
_HUB_REASONS = frozenset({CloseReason.SLOW_CONSUMER, CloseReason.SHUTDOWN})


class Subscribed(NamedTuple):
    """The outcome of adding a channel to a subscription.

    Attributes:
        channel: The channel.
        position: The channel's position when the subscription was added:
            the replay (if any) ends there, and every event after it is
            delivered after this result, so resuming from it loses nothing.
        recovered: ``True`` when ``since`` was honoured exactly (or not given);
            ``False`` when the subscriber was told to reset.
        reset: The reset, when ``recovered`` is ``False``.
        replayed: How many events the replay holds, up to ``position``. A
            replay longer than one page is delivered page by page as the
            subscription drains, after this result (a page that is gone by
            then is replaced by a :class:`Reset`).
    """

    channel: str
    position: Position
    recovered: bool
    reset: Reset | None
    replayed: int


class Subscription:
    """A consumer of channels with a bounded outbox; see the module docstring.

    Create one with :meth:`Hub.subscribe` (an async context manager that adds
    channels and closes it) or :meth:`Hub.subscription` (for transports that
    add and remove channels over time). Iterate it to receive
    :class:`Event` and :class:`Reset` items.
    """

    __slots__ = (
        "__weakref__",
        "_closed_waiter",
        "_encode",
        "_encode_batch",
        "_grace",
        "_hub",
        "_on_close",
        "_outbox",
        "_outbox_bytes",
        "_paused",
        "_room",
        "_waiter",
        "_write",
        "_writer",
        "channels",
        "client",
        "close_reason",
        "max_bytes",
        "policy",
        "transport",
    )

    def __init__(
        self,
        hub: Hub,
        *,
        max_bytes: int,
        policy: OverflowPolicy,
        client: ClientInfo | None = None,
        transport: str = "hub",
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, not {max_bytes}")
        self._hub = hub
        self.max_bytes = max_bytes
        self.policy = OverflowPolicy(policy)
        #: The client this subscription belongs to, when it takes part in
        #: presence: it is listed by ``Hub.presence`` for its channels and
        #: receives their join and leave notices (when the namespace enables them).
        self.client = client
        #: What carries it to its client, for the counts of deliveries by
        #: transport (``Hub.stats().delivered_by``).
        self.transport = transport
        #: Channels this subscription receives, in the order they were added.
        self.channels: dict[str, None] = {}
        #: Why it closed, or ``None`` while it is open.
        self.close_reason: CloseReason | None = None
        # The outbox exists only while something is queued: an idle
        # subscription (most of them, on the fast path) does not pay for a deque.
        self._outbox: deque[Item] | None = None
        self._outbox_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None
        self._on_close: Callable[[Subscription], None] | None = None
        # Fast path: _write is the writer when items may be written at once,
        # None when they must be queued (no writer, paused, or closed).
        self._writer: Callable[[bytes], object] | None = None
        self._write: Callable[[bytes], object] | None = None
        self._encode: Callable[[Item], bytes] | None = None
        self._encode_batch: Callable[[list[Item]], bytes] | None = None
        self._paused = False
        # Replay pacing: the bytes of the replay page waiting in the outbox
        # (not held against the bound), and the future of whoever waits for it
        # to leave.
        self._grace = 0
        self._room: asyncio.Future[None] | None = None

    # -- channels ----------------------------------------------------------

    async def add(
        self,
        channel: str,
        *,
        since: Position | None = None,
        notify_reset: bool = True,
        on_live: Callable[[Subscribed], None] | None = None,
    ) -> Subscribed:
        """Start receiving ``channel``.

        With ``since``, events after that position are replayed from history
        first, then live events follow with no gap and no duplicate. The
        replay is read in pages, each delivered once the previous one has
        been drained, so a history of any size never overflows the outbox;
        the first page is delivered before this returns. If
        ``since`` cannot be honoured (another epoch, older than history), the
        result says so and, with ``notify_reset``, a :class:`Reset` is queued
        before the live events.

        ``on_live`` is called with the outcome at the moment the channel goes
        live, before any replayed item is delivered: a transport answers the
        request there, so that the answer precedes the replay on the wire.

        Raises:
            InvalidChannel: ``channel`` is not a valid name.
            AlreadySubscribed: the subscription already receives ``channel``.
            SubscriptionClosed: the subscription is closed (before or while
                subscribing).
            BackendUnavailable: the backend cannot be reached.
        """
        if self.close_reason is not None:
            raise SubscriptionClosed(self.close_reason)
        return await self._hub._attach(self, channel, since, notify_reset, on_live)

    def remove(self, channel: str) -> bool:
        """Stop receiving ``channel``; return whether it was subscribed."""
        if channel not in self.channels:
            return False
        del self.channels[channel]
        self._hub._detach(self, channel)
        return True

    # -- delivery (called by the hub) -----------------------------------------

    def _deliver(self, item: Item) -> None:
        write = self._write
        if write is not None:
            assert self._encode is not None
            write(self._encode(item))
        else:
            self._enqueue(item)

    def _deliver_many(self, items: Iterable[Item]) -> None:
        for item in items:
            self._deliver(item)

    def _deliver_page(self, items: Sequence[Item]) -> None:
        """Deliver a page of a replay: written at once when a writer is ready
        (one write), else queued beyond the bound until the outbox is emptied."""
        if not items or self.close_reason is not None:
            return
        write = self._write
        if write is not None:
            write(self._encode_items(list(items)))
            return
        size = sum(item.size for item in items)
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        outbox.extend(items)
        self._outbox_bytes += size
        self._grace += size
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _drained(self) -> None:
        """Wait until no replay page waits in the outbox, or the subscription closes."""
        while self._grace and self.close_reason is None:
            room = self._room
            if room is None:
                room = self._room = asyncio.get_running_loop().create_future()
            # Shielded: several channels may be replaying, and one of them
            # being cancelled must not cancel the others' wait.
            await asyncio.shield(room)

    def _emptied(self) -> None:
        """The outbox was emptied: no page waits any more; wake the replay."""
        self._grace = 0
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    def _enqueue(self, item: Item) -> None:
        if self.close_reason is not None:
            return
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        outbox.append(item)
        self._outbox_bytes += item.size
        if self._outbox_bytes > self.max_bytes:
            self._overflow()
            if self.close_reason is not None:
                return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _overflow(self) -> None:
        if self._outbox_bytes <= self.max_bytes + self._grace:
            return  # within the bound once the replay page waiting is set aside
        if self.policy is OverflowPolicy.DISCONNECT:
            self._hub._stats.slow_consumers += 1
            self.close(CloseReason.SLOW_CONSUMER)
            return
        # DROP: free down to half the bound, oldest first, and say where the
        # gap is. A Reset already at the front is replaced, not stacked.
        target = self.max_bytes // 2
        lost: dict[str, Position] = {}
        outbox = self._outbox
        assert outbox is not None
        dropped = 0
        while outbox and self._outbox_bytes > target:
            item = outbox.popleft()
            self._outbox_bytes -= item.size
            if isinstance(item, Event):
                if item.offset:  # join/leave notices (offset 0) leave no gap in the stream
                    lost[item.channel] = Position(item.epoch, item.offset)
                dropped += 1
            else:
                lost.setdefault(item.channel, item.position)
        self._hub._stats.dropped += dropped
        self._emptied()  # what is left of a page counts against the bound now
        for channel, position in reversed(list(lost.items())):
            reset = Reset(channel, position, "overflow")
            outbox.appendleft(reset)
            self._outbox_bytes += reset.size

    # -- consuming -----------------------------------------------------------

    def take(self) -> list[Item]:
        """Return and clear everything queued, without waiting."""
        outbox, self._outbox = self._outbox, None
        self._outbox_bytes = 0
        if self._grace:
            self._emptied()
        return list(outbox) if outbox else []

    @property
    def pending_bytes(self) -> int:
        """Bytes currently charged to the outbox."""
        return self._outbox_bytes

    async def wait(self) -> None:
        """Wait until something is queued or the subscription is closed."""
        if self._outbox or self.close_reason is not None:
            return
        if self._waiter is not None:
            raise RuntimeError("another task is already waiting on this subscription")
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def wakeup(self) -> None:
        """Make a pending :meth:`wait` return even though nothing was queued."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_closed(self) -> CloseReason:
        """Wait until the subscription is closed and return why."""
        if self.close_reason is None:
            if self._closed_waiter is None:
                self._closed_waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._closed_waiter)
        assert self.close_reason is not None
        return self.close_reason

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        outbox = self._outbox
        while not outbox:
            if self.close_reason is not None:
                if self.close_reason in _HUB_REASONS:
                    raise SubscriptionClosed(self.close_reason)
                raise StopAsyncIteration
            await self.wait()
            outbox = self._outbox
        item = outbox.popleft()
        self._outbox_bytes -= item.size
        if not outbox:
            self._outbox = None
            if self._grace:
                self._emptied()
        return item

    # -- fast path -------------------------------------------------------------

    def attach_writer(
        self,
        write: Callable[[bytes], object],
        encode: Callable[[Item], bytes],
        *,
        encode_batch: Callable[[list[Item]], bytes] | None = None,
    ) -> None:
        """Write items straight to a transport from now on.

        ``write`` takes bytes and must not block (``asyncio.Transport.write``);
        ``encode`` turns an item into the bytes for this transport (usually an
        :class:`~tidings.hub.event.Encoding`, so the bytes are shared). Anything
        already queued is written first, in one call. The transport reports
        flow control with :meth:`pause_writing` and :meth:`resume_writing`.
        ``encode_batch``, when given, encodes two or more queued items at
        once (default: their ``encode`` bytes joined).
        """
        self._writer = write
        self._encode = encode
        self._encode_batch = encode_batch
        if not self._paused:
            self.resume_writing()

    def pause_writing(self) -> None:
        """The transport's buffer is full: queue items until it resumes."""
        self._paused = True
        self._write = None

    def resume_writing(self) -> None:
        """The transport drained: write everything queued at once and go direct."""
        self._paused = False
        writer = self._writer
        if writer is None or self.close_reason is not None:
            return
        self._write = writer
        if self._outbox:
            writer(self._encode_items(self.take()))

    def _encode_items(self, items: list[Item]) -> bytes:
        encode_batch = self._encode_batch
        if encode_batch is not None and len(items) > 1:
            return encode_batch(items)
        encode = self._encode
        assert encode is not None
        return b"".join([encode(item) for item in items])

    # -- closing -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    def close(self, reason: CloseReason = CloseReason.CLOSED) -> None:
        """Stop receiving every channel; safe to call more than once.

        Items still queued stay readable unless the reason is ``slow_consumer``.
        """
        if self.close_reason is not None:
            return
        self.close_reason = CloseReason(reason)
        self._write = None
        if reason is CloseReason.SLOW_CONSUMER:
            self._outbox = None
            self._outbox_bytes = 0
        self._emptied()  # wakes a replay waiting for room, which then sees the close
        channels, self.channels = self.channels, {}
        for channel in channels:
            self._hub._detach(self, channel)
        self._hub._forget(self)
        for waiter in (self._waiter, self._closed_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)

    def on_close(self, callback: Callable[[Subscription], None]) -> None:
        """Call ``callback(subscription)`` once, when it closes (at once if closed)."""
        if self.close_reason is not None:
            callback(self)
        else:
            self._on_close = callback

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self.close_reason or ("paused" if self._paused else "open")
        return f"<Subscription {list(self.channels)} {state} outbox={self._outbox_bytes}B>"


def since_for(
    channels: Iterable[str], since: Position | Mapping[str, Position] | None
) -> dict[str, Position | None]:
    """Spread ``since`` over ``channels``: one Position for one channel, or a cursor mapping."""
    names = list(channels)
    if since is None:
        return dict.fromkeys(names)
    if isinstance(since, Position) or (isinstance(since, tuple) and len(since) == 2):
        if len(names) != 1:
            raise TypeError("a single Position as since needs exactly one channel; pass a mapping")
        epoch, offset = since
        return {names[0]: Position(epoch, offset)}
    cursor: Mapping[str, Any] = since
    return {name: (Position(*cursor[name]) if name in cursor else None) for name in names}
