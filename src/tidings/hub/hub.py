"""Hub: publish, subscribe with exact resume, history, presence, stats.

Theory of operation
-------------------

The backend stores offsets and history and hands every event of a watched
channel to ``Hub._dispatch``, in offset order. The hub keeps, per channel
with local subscribers, the set of subscriptions and fans each event out to
them synchronously (see ``subscription.py`` for what a subscription does with
it). Nothing on that path awaits, allocates per subscriber or encodes per
subscriber.

Adding a channel with ``since`` must not lose or repeat an event even while
publishes race it. The subscription is first registered as *pending*: live
events for it are buffered. Then the backend is asked to watch the channel
and to read history after ``since``. Finally, without awaiting, the replay is
delivered, then the buffered live events newer than the replay, and the
subscription becomes live. With the memory backend the reads do not suspend,
so the buffer stays empty; with Redis it covers the round trips.

A replay is read in pages (``_FIRST_PAGE`` events, then about
``_PAGE_BYTES`` or the outbox bound when smaller, sized from the previous
page) and delivered with ``Subscription._deliver_page``, so that it goes at
the consumer's pace and never counts against the outbox bound. When the first
page does not reach the channel's position, ``_attach`` answers (``on_live``,
the ``Subscribed`` result) and delivers it, and a task (``_replay``) goes on:
it waits until the subscription has drained the page (``_drained``), reads
the next one after the last offset delivered, and repeats. Meanwhile the
subscription stays pending but buffers nothing (``_IGNORED``): whatever is
published meanwhile is in history and comes in a later page. Before each read
a fresh buffer is registered, so the read that reaches the position switches
to live exactly as above, without awaiting. A page that is gone (trimmed or
expired history, another epoch) reads as a ``Reset``: it is delivered and the
channel goes live from the reset's position, so a gap is never silent.
Removing the channel or closing the subscription cancels the task.

A subscription that carries a client takes part in presence (``presence.py``):
once a channel is live for it, its entry is added; when the channel goes, the
entry is removed. Join and leave notices are Events of type ``join`` /
``leave`` with offset 0: they are delivered to member subscriptions only and
are not part of the channel's stream or history.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from tidings.errors import (
    AlreadySubscribed,
    BackendUnavailable,
    InvalidPublication,
    SubscriptionClosed,
)
from tidings.hub.backends.base import Backend, History, PresenceChange
from tidings.hub.backends.memory import MemoryBackend
from tidings.hub.event import Event, Item, Reset
from tidings.hub.names import NamespaceOptions, Namespaces, validate_channel, validate_event_type
from tidings.hub.presence import ClientInfo, PresenceKeeper
from tidings.hub.stats import Counters, HubStats
from tidings.hub.subscription import (
    CloseReason,
    OverflowPolicy,
    Subscribed,
    Subscription,
    since_for,
)
from tidings.types import JSONValue, Position
from tidings.wire.json import dumps_kept

__all__ = ["ChannelSummary", "Hub", "Page"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

_MISSING = object()
#: The latency countdown when nothing observes it: never reaches zero in practice.
_NEVER = 1 << 62


class ChannelSummary(NamedTuple):
    """A channel as ``Hub.channels()`` reports it."""

    channel: str
    position: Position
    history: int
    subscribers: int


#: Bytes a channel's summary takes in an answer besides its name and epoch.
SUMMARY_OVERHEAD = 96


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: the items, and where the next page starts.

    Attributes:
        items: This page's items.
        next: The cursor of the next page (pass it as ``after``); None when
            this page is the last.
    """

    items: list[T]
    next: str | None


#: Events in the first page of a replay, and the most in any page.
_FIRST_PAGE = 128
_MAX_PAGE = 1000
#: Bytes a replay page aims at after the first (or the outbox bound when smaller).
_PAGE_BYTES = 256 * 1024


class _Ignored:
    """The buffer of a subscription whose replay waits for room: live events
    are not kept, as the next page reads them from history."""

    __slots__ = ()

    def append(self, item: Item) -> None:
        pass


_IGNORED = _Ignored()


class _Local:
    """Per-channel state of this process: who listens, who is joining."""

    __slots__ = ("error", "pending", "ready", "replays", "snapshot", "subscribers", "tally")

    def __init__(self) -> None:
        self.subscribers: dict[Subscription, None] = {}
        # Fan-out iterates a tuple rebuilt only after a change, so a
        # subscription closing mid-broadcast cannot disturb the loop.
        self.snapshot: tuple[Subscription, ...] = ()
        #: The snapshot's subscriptions counted by transport, so that fan-out
        #: counts its deliveries with an addition per transport.
        self.tally: tuple[tuple[str, int], ...] = ()
        self.pending: dict[Subscription, list[Item] | _Ignored] = {}
        #: The tasks that go on with replays bigger than one page.
        self.replays: dict[Subscription, asyncio.Task[None]] = {}
        self.ready: asyncio.Future[None] | None = None
        self.error: BaseException | None = None

    def count(self) -> int:
        """Subscriptions that receive the channel: live, or replaying history."""
        return len(self.subscribers) + len(self.replays)

    def refresh(self) -> None:
        """Rebuild the snapshot and its tally after ``subscribers`` changed."""
        self.snapshot = snapshot = tuple(self.subscribers)
        self.tally = tuple(Counter(subscription.transport for subscription in snapshot).items())


class Hub:
    """The pub/sub core: every transport is a view of one hub.

    Args:
        backend: Where offsets and history live; a new :class:`MemoryBackend`
            when omitted.
        namespaces: History size, TTL and client permissions per namespace.
        outbox_max_bytes: Default bound of each subscription's outbox.
        overflow: Default policy when an outbox is full: ``"disconnect"`` or ``"drop"``.
        presence_ttl: Seconds a presence entry outlives this process if it
            stops without cleaning up (entries are refreshed meanwhile).

    Use ``async with hub:`` (or ``await hub.start()`` / ``await hub.aclose()``)
    to run the backend's background work and to close every subscription at
    the end.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        namespaces: Namespaces | None = None,
        outbox_max_bytes: int = 1024 * 1024,
        overflow: OverflowPolicy | str = OverflowPolicy.DISCONNECT,
        presence_ttl: float = 60.0,
    ) -> None:
        if outbox_max_bytes <= 0:
            raise ValueError(f"outbox_max_bytes must be > 0, not {outbox_max_bytes}")
        self._backend: Backend = backend if backend is not None else MemoryBackend()
        self._namespaces = namespaces if namespaces is not None else Namespaces()
        self._outbox_max_bytes = outbox_max_bytes
        self._overflow = OverflowPolicy(overflow)
        self._locals: dict[str, _Local] = {}
        self._subscriptions: set[Subscription] = set()
        self._stats = Counters()
        self._latency: Callable[[float], None] | None = None
        self._sample_every = _NEVER
        self._countdown = _NEVER
        self._started = False
        self._presence = PresenceKeeper(self._backend, ttl=presence_ttl)
        self._backend.set_listener(self._dispatch)
        self._backend.set_presence_listener(self._dispatch_presence)
        self._backend.set_reset_listener(self._dispatch_reset)

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def namespaces(self) -> Namespaces:
        return self._namespaces

    def options(self, channel: str) -> NamespaceOptions:
        """Return the namespace options that apply to ``channel``."""
        return self._namespaces.options(channel)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start the backend (connections, sweepers). Idempotent."""
        if not self._started:
            await self._backend.start()
            self._started = True

    async def aclose(self) -> None:
        """Close every subscription (reason ``shutdown``) and stop the backend."""
        for subscription in list(self._subscriptions):
            subscription.close(CloseReason.SHUTDOWN)
        await self._presence.aclose()
        if self._started:
            self._started = False
            await self._backend.aclose()

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- publishing ----------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: JSONValue = None,
        *,
        text: str | bytes | None = None,
        event: str = "message",
        key: str | None = None,
    ) -> Position:
        """Publish to ``channel`` and return the new event's position.

        Args:
            channel: The channel name.
            data: A JSON-serialisable value (encoded with orjson).
            text: Plain text to publish instead of JSON (``str``, or ``bytes``
                of UTF-8). Give ``data`` or ``text``, not both.
            event: The event type; ``message`` unless given.
            key: An idempotency key: a second publish with the same key in the
                backend's window publishes nothing and returns the first position.

        Raises:
            InvalidChannel: the channel name is not valid.
            InvalidPublication: the data cannot be encoded, the text is not
                UTF-8, or the event type is not allowed.
            BackendUnavailable: the backend cannot be reached; nothing was published.
        """
        validate_channel(channel)
        if event != "message":
            validate_event_type(event)
        if text is not None:
            if data is not None:
                raise TypeError("publish() takes data or text, not both")
            raw, is_text = _text_bytes(text), True
        else:
            try:
                raw = dumps_kept(data)  # history keeps it
            except TypeError as exc:
                raise InvalidPublication(f"data is not JSON-serialisable: {exc}") from exc
            is_text = False
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 256):
            raise InvalidPublication("an idempotency key must be a string of 1-256 characters")
        try:
            position = await self._backend.publish(
                channel,
                raw,
                type=event,
                is_text=is_text,
                options=self._namespaces.options(channel),
                key=key,
            )
        except BackendUnavailable:
            self._stats.backend_error("publish")
            raise
        self._stats.published += 1
        return position

    def _dispatch(self, event: Event) -> None:
        """Fan an event out to local subscribers (called by the backend)."""
        local = self._locals.get(event.channel)
        if local is None:
            return
        for buffer in local.pending.values():
            buffer.append(event)
        subscribers = local.snapshot
        # Most subscriptions share one encoding, so the frame of the previous
        # one is reused when the encoder is the same object: one identity test
        # per delivery instead of a call.
        last_encode: object = None
        frame = b""
        for subscription in subscribers:
            try:
                # Subscription._deliver, inlined: this loop runs once per
                # delivery and the method call is a measurable share of it.
                write = subscription._write
                if write is not None:
                    encode = subscription._encode
                    if encode is not last_encode:
                        frame = encode(event)  # type: ignore[misc]
                        last_encode = encode
                    write(frame)
                else:
                    subscription._enqueue(event)
            except Exception:
                logger.exception("delivery to %r failed; closing it", subscription)
                subscription.close(CloseReason.DISCONNECT)
        delivered = self._stats.delivered
        for transport, count in local.tally:
            delivered[transport] += count
        self._countdown -= 1
        if not self._countdown:
            self._sample(event)

    def _sample(self, event: Event) -> None:
        """Report one event's publish-to-write time (one event in ``every``)."""
        self._countdown = self._sample_every
        observer = self._latency
        if observer is not None and event.time:
            observer(max(0.0, time.time() - event.time))

    def observe_latency(self, observer: Callable[[float], None] | None, *, every: int = 16) -> None:
        """Report, for one dispatched event in ``every``, the seconds from its publish
        to its hand-off to the local subscribers (written to their sockets on the fast
        write path, queued in their outboxes otherwise); ``None`` stops it.

        The cost is one counter per event, never per subscriber. The publish time
        comes from the publishing process's clock (in milliseconds with Redis).
        """
        if every < 1:
            raise ValueError(f"every must be >= 1, not {every}")
        self._latency = observer
        self._sample_every = every if observer is not None else _NEVER
        self._countdown = self._sample_every

    def _dispatch_reset(self, reset: Reset) -> None:
        """Tell local subscribers of a gap the backend could not fill (called by the backend)."""
        local = self._locals.get(reset.channel)
        if local is None:
            return
        for buffer in local.pending.values():
            buffer.append(reset)
        for subscription in local.snapshot:
            try:
                subscription._deliver(reset)
            except Exception:
                logger.exception("delivery to %r failed; closing it", subscription)
                subscription.close(CloseReason.DISCONNECT)

    def _dispatch_presence(self, change: PresenceChange) -> None:
        """Deliver a join or leave notice to member subscriptions (called by the backend)."""
        local = self._locals.get(change.channel)
        if local is None or not self._namespaces.options(change.channel).join_leave:
            return
        notice = Event(change.channel, "", 0, change.payload, event=change.kind, time=time.time())
        for subscription in local.snapshot:
            if subscription.client is None:
                continue
            try:
                subscription._deliver(notice)
            except Exception:
                logger.exception("delivery to %r failed; closing it", subscription)
                subscription.close(CloseReason.DISCONNECT)

    # -- subscribing -----------------------------------------------------------

    def subscription(
        self,
        *,
        max_bytes: int | None = None,
        policy: OverflowPolicy | str | None = None,
        client: ClientInfo | None = None,
        transport: str = "hub",
    ) -> Subscription:
        """Create an empty subscription; add channels with ``Subscription.add``.

        With ``client``, the subscription is listed in the presence of its
        channels and receives their join and leave notices.

        ``transport`` names what carries it, for ``HubStats.delivered_by``.

        The caller owns it and must ``close()`` it (transports do so in ``finally``).
        """
        subscription = Subscription(
            self,
            max_bytes=max_bytes if max_bytes is not None else self._outbox_max_bytes,
            policy=OverflowPolicy(policy) if policy is not None else self._overflow,
            client=client,
            transport=transport,
        )
        self._subscriptions.add(subscription)
        return subscription

    @asynccontextmanager
    async def subscribe(
        self,
        *channels: str,
        since: Position | Mapping[str, Position] | None = None,
        max_bytes: int | None = None,
        policy: OverflowPolicy | str | None = None,
    ) -> AsyncIterator[Subscription]:
        """Subscribe to ``channels`` for the duration of an ``async with`` block.

        ``since`` is a :class:`Position` (one channel) or a mapping of channel
        to position, such as a decoded cursor. Iterate the subscription to get
        :class:`Event` and :class:`Reset` items::

            async with hub.subscribe("chat", since=position) as subscription:
                async for item in subscription:
                    ...
        """
        if not channels:
            raise TypeError("subscribe() needs at least one channel")
        subscription = self.subscription(max_bytes=max_bytes, policy=policy)
        try:
            for channel, position in since_for(channels, since).items():
                await subscription.add(channel, since=position)
            yield subscription
        finally:
            subscription.close()

    async def _attach(
        self,
        subscription: Subscription,
        channel: str,
        since: Position | None,
        notify_reset: bool,
        on_live: Callable[[Subscribed], None] | None = None,
    ) -> Subscribed:
        validate_channel(channel)
        local = self._locals.get(channel)
        if channel in subscription.channels or (
            local is not None and subscription in local.pending
        ):
            raise AlreadySubscribed(channel)
        options = self._namespaces.options(channel)
        if local is None:
            local = self._locals[channel] = _Local()
        buffer: list[Item] = []
        local.pending[subscription] = buffer
        try:
            await self._watch(channel, local)
            if since is not None:
                history = await self._backend.read(
                    channel, since=since, limit=_FIRST_PAGE, options=options
                )
            else:
                position = await self._backend.position(channel, options=options)
                history = History(position, [])
        except BaseException as exc:
            if isinstance(exc, BackendUnavailable):
                self._stats.backend_error("subscribe")
            local.pending.pop(subscription, None)
            self._release(channel, local)
            raise
        # From here to the end nothing awaits: the switch to live is atomic.
        if subscription.close_reason is not None:
            del local.pending[subscription]
            self._release(channel, local)
            raise SubscriptionClosed(subscription.close_reason)
        position, replay, reset = history
        # The position reported is where the channel stood when the read was
        # made, so the replay ends there and every buffered event comes after
        # it: a subscriber that resumes from it before those items arrive
        # misses none of them.
        head = Position(position.epoch, max(replay[-1].offset if replay else 0, position.offset))
        if since is not None and reset is None:
            cursor = replay[-1].position if replay else since
            if not _fits(subscription, replay):
                # A page of another channel waits in the outbox and this one
                # would not fit beside it: it is read again once there is room.
                replay, cursor = [], since
            if cursor.offset < position.offset:
                # More than one page: answer, deliver this page, and go on in a task.
                local.pending[subscription] = _IGNORED
                subscription.channels[channel] = None
                task = asyncio.get_running_loop().create_task(
                    self._replay(
                        subscription, channel, local, cursor, _next_page(subscription, replay)
                    ),
                    name=f"tidings-replay-{channel}",
                )
                local.replays[subscription] = task
                subscribed = Subscribed(channel, head, True, None, position.offset - since.offset)
                try:
                    if on_live is not None:
                        on_live(subscribed)
                finally:
                    self._deliver_replay(subscription, replay)
                return subscribed
        del local.pending[subscription]
        subscribed = Subscribed(channel, head, reset is None, reset, len(replay))
        live = self._go_live(subscription, channel, local, history, buffer)
        try:
            if on_live is not None:
                on_live(subscribed)
        finally:
            if reset is not None and notify_reset:
                subscription._deliver(reset)
                self._stats.delivered[subscription.transport] += 1
            self._deliver_replay(subscription, replay)
            self._deliver_live(subscription, live)
        await self._joined(subscription, channel, options)
        return subscribed

    def _go_live(
        self,
        subscription: Subscription,
        channel: str,
        local: _Local,
        history: History,
        buffer: list[Item],
    ) -> list[Item]:
        """Make the subscription live on ``channel`` after the last page of its replay
        (``history``); return the buffered live items it must get after that page."""
        position, replay, _ = history
        epoch = position.epoch
        last = replay[-1].offset if replay else position.offset
        items: list[Item] = []
        for event in buffer:
            if isinstance(event, Reset):
                # The backend lost track of the stream while we read it: what
                # follows continues from the reset's position.
                if event.position.epoch != epoch or event.position.offset > last:
                    items.append(event)
                    epoch, last = event.position
                continue
            if event.epoch != epoch or event.offset <= last:
                continue  # in the replay, before our position, or from an older epoch
            items.append(event)
            last = event.offset
        local.subscribers[subscription] = None
        local.refresh()
        subscription.channels[channel] = None
        return items

    def _deliver_replay(self, subscription: Subscription, page: list[Event]) -> None:
        """Deliver a page of a replay: beyond the bound, unless another page waits
        already (then it fits within the bound, see ``_fits``)."""
        if not page:
            return  # no series for a transport that has delivered nothing
        if subscription._grace:
            subscription._deliver_many(page)
        else:
            subscription._deliver_page(page)
        self._stats.delivered[subscription.transport] += len(page)

    def _deliver_live(self, subscription: Subscription, items: list[Item]) -> None:
        if items:
            subscription._deliver_many(items)
            self._stats.delivered[subscription.transport] += len(items)

    async def _joined(
        self, subscription: Subscription, channel: str, options: NamespaceOptions
    ) -> None:
        """Add the subscription's client to the channel's presence, now that it is live."""
        client = subscription.client
        if client is not None and (options.presence or options.join_leave):
            await self._presence.add(channel, client)

    async def _replay(
        self,
        subscription: Subscription,
        channel: str,
        local: _Local,
        cursor: Position,
        limit: int,
    ) -> None:
        """Go on with a replay page by page as the subscription drains, then go live."""
        options = self._namespaces.options(channel)
        try:
            while True:
                await subscription._drained()
                await asyncio.sleep(0)  # a consumer that is always ready does not hog the loop
                if subscription.close_reason is not None:
                    return
                buffer: list[Item] = []
                local.pending[subscription] = buffer
                history = await self._backend.read(
                    channel, since=cursor, limit=limit, options=options
                )
                if local.pending.get(subscription) is not buffer:
                    return  # removed or closed meanwhile
                position, page, reset = history
                if not _fits(subscription, page):
                    # Another channel's page came first: read this one again
                    # once the outbox has been emptied.
                    local.pending[subscription] = _IGNORED
                    continue
                if reset is None and page and page[-1].offset < position.offset:
                    local.pending[subscription] = _IGNORED
                    self._deliver_replay(subscription, page)
                    cursor = page[-1].position
                    limit = _next_page(subscription, page)
                    continue
                del local.pending[subscription]
                local.replays.pop(subscription, None)  # counted as a subscriber from here
                live = self._go_live(subscription, channel, local, history, buffer)
                if reset is not None:
                    subscription._deliver(reset)  # the page is gone: say where the gap is
                    self._stats.delivered[subscription.transport] += 1
                self._deliver_replay(subscription, page)
                self._deliver_live(subscription, live)
                break
            await self._joined(subscription, channel, options)
        except BackendUnavailable:
            # Like a failed subscribe: the client reconnects and resumes from its cursor.
            self._stats.backend_error("subscribe")
            logger.warning("replaying %s failed: the backend is unavailable", channel)
            subscription.close(CloseReason.DISCONNECT)
        except Exception:
            logger.exception("replaying %s failed; closing %r", channel, subscription)
            subscription.close(CloseReason.DISCONNECT)
        finally:
            if local.replays.get(subscription) is asyncio.current_task():
                del local.replays[subscription]

    async def _watch(self, channel: str, local: _Local) -> None:
        ready = local.ready
        if ready is None:
            ready = local.ready = asyncio.get_running_loop().create_future()
            try:
                await self._backend.watch(channel)
            except BaseException as exc:
                local.error = exc
                raise
            finally:
                ready.set_result(None)
        elif not ready.done():
            await asyncio.shield(ready)
        if local.error is not None:
            raise local.error

    def _detach(self, subscription: Subscription, channel: str) -> None:
        local = self._locals.get(channel)
        if local is None:
            return
        if local.subscribers.pop(subscription, _MISSING) is not _MISSING:
            local.refresh()
            if subscription.client is not None:
                self._presence.remove(channel, subscription.client.client_id)
        local.pending.pop(subscription, None)
        replay = local.replays.pop(subscription, None)
        if replay is not None:
            replay.cancel()
        self._release(channel, local)

    def _release(self, channel: str, local: _Local) -> None:
        if local.subscribers or local.pending:
            return
        if local.ready is not None and not local.ready.done():
            return  # the first subscriber is still watching; it releases on failure
        if self._locals.get(channel) is local:
            del self._locals[channel]
            if local.ready is not None and local.error is None:
                self._backend.unwatch(channel)

    def _forget(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    # -- queries -----------------------------------------------------------------

    async def history(
        self, channel: str, *, since: Position | None = None, limit: int | None = None
    ) -> History:
        """Read a channel's history.

        Without ``since``: the newest ``limit`` events (all kept ones when
        ``limit`` is None). With ``since``: the events after it, oldest first, at
        most ``limit``; or a ``reset`` when ``since`` is outside the window.
        """
        validate_channel(channel)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        try:
            return await self._backend.read(
                channel, since=since, limit=limit, options=self._namespaces.options(channel)
            )
        except BackendUnavailable:
            self._stats.backend_error("history")
            raise

    async def position(self, channel: str) -> Position:
        """Return the channel's current position (offset 0 before its first event)."""
        validate_channel(channel)
        try:
            return await self._backend.position(channel, options=self._namespaces.options(channel))
        except BackendUnavailable:
            self._stats.backend_error("position")
            raise

    async def presence(self, channel: str) -> list[ClientInfo]:
        """Return the clients subscribed to ``channel``, in every process, oldest first."""
        validate_channel(channel)
        try:
            entries = await self._backend.presence(channel)
        except BackendUnavailable:
            self._stats.backend_error("presence")
            raise
        return [ClientInfo.from_payload(payload) for payload in entries.values()]

    async def presence_page(
        self,
        channel: str,
        *,
        after: str | None = None,
        limit: int = 1000,
        max_bytes: int = 1024 * 1024,
    ) -> Page[ClientInfo]:
        """One page of a channel's presence, sorted by client id.

        The clients whose id sorts after ``after``: at most ``limit``, and no
        more than ``max_bytes`` of presence documents (always one, if any is
        left). ``Page.next`` is the ``after`` of the next page, None at the end.
        Walking pages lists every client present throughout exactly once.
        """
        validate_channel(channel)
        if limit <= 0:
            raise ValueError(f"limit must be > 0, not {limit}")
        try:
            entries = await self._backend.presence(channel)
        except BackendUnavailable:
            self._stats.backend_error("presence")
            raise
        ids: Iterable[str] = entries
        if after is not None:
            ids = (client_id for client_id in ids if client_id > after)
        page = heapq.nsmallest(limit + 1, ids)
        items: list[ClientInfo] = []
        size = 0
        for client_id in page[:limit]:
            payload = entries[client_id]
            if items and size + len(payload) > max_bytes:
                break
            size += len(payload)
            items.append(ClientInfo.from_payload(payload))
        more = len(items) < len(page)
        return Page(items, items[-1].client_id if more else None)

    def subscriber_count(self, channel: str) -> int:
        """Local subscriptions that receive ``channel`` (live, or replaying its history)."""
        local = self._locals.get(channel)
        return local.count() if local is not None else 0

    def subscriber_counts(self) -> dict[str, int]:
        """Local subscriptions of each channel that has any (one pass over them)."""
        return {
            channel: count for channel, local in self._locals.items() if (count := local.count())
        }

    def positions(self) -> dict[str, Position]:
        """The position delivery has reached on each channel with local subscribers,
        read from what the backend keeps anyway (no I/O; see ``Backend.positions``).

        Two readings a second apart give the channels' publish rates without
        counting anything per event.
        """
        return self._backend.positions()

    async def channels(
        self, *, after: str | None = None, limit: int | None = None
    ) -> list[ChannelSummary]:
        """Channels with history or local subscribers, sorted by name.

        Only names greater than ``after`` (when given), at most ``limit``.
        """
        try:
            infos = await self._backend.channels(after=after, limit=limit)
        except BackendUnavailable:
            self._stats.backend_error("channels")
            raise
        summaries = {
            info.channel: ChannelSummary(
                info.channel, info.position, info.history, self.subscriber_count(info.channel)
            )
            for info in infos
        }
        local_names: Iterable[str] = (
            channel
            for channel, local in self._locals.items()
            if local.count() and channel not in summaries
        )
        if after is not None:
            local_names = (channel for channel in local_names if channel > after)
        local_page = sorted(local_names) if limit is None else heapq.nsmallest(limit, local_names)
        for channel in local_page:
            position = await self.position(channel)
            summaries[channel] = ChannelSummary(
                channel, position, 0, self.subscriber_count(channel)
            )
        names = sorted(summaries)
        return [summaries[name] for name in (names if limit is None else names[:limit])]

    async def channels_page(
        self, *, after: str | None = None, limit: int = 1000, max_bytes: int = 1024 * 1024
    ) -> Page[ChannelSummary]:
        """One page of :meth:`channels`: at most ``limit`` channels and about
        ``max_bytes`` of them (always one, if any is left); ``Page.next`` is the
        ``after`` of the next page, None at the end."""
        if limit <= 0:
            raise ValueError(f"limit must be > 0, not {limit}")
        summaries = await self.channels(after=after, limit=limit + 1)
        items: list[ChannelSummary] = []
        size = 0
        for summary in summaries[:limit]:
            cost = len(summary.channel) + len(summary.position.epoch) + SUMMARY_OVERHEAD
            if items and size + cost > max_bytes:
                break
            size += cost
            items.append(summary)
        more = len(items) < len(summaries)
        return Page(items, items[-1].channel if more else None)

    def backend_errors(self) -> dict[str, int]:
        """Operations that failed because the backend was unavailable, by operation
        (``publish``, ``subscribe``, ``history``, ``position``, ``presence``, ``channels``)."""
        return dict(self._stats.backend_errors)

    async def ping(self) -> None:
        """Check that the backend answers.

        Raises:
            BackendUnavailable: it does not.
        """
        try:
            await self._backend.ping()
        except BackendUnavailable:
            self._stats.backend_error("ping")
            raise

    def stats(self) -> HubStats:
        """Return a snapshot of the hub's state and counters."""
        counters = self._stats
        usage = self._backend.usage()
        return HubStats(
            channels=len(self._locals),
            subscriptions=len(self._subscriptions),
            subscribers=sum(local.count() for local in self._locals.values()),
            published=counters.published,
            delivered=sum(counters.delivered.values()),
            dropped=counters.dropped,
            slow_consumers=counters.slow_consumers,
            outbox_bytes=sum(subscription.pending_bytes for subscription in self._subscriptions),
            history_channels=None if usage is None else usage.channels,
            history_events=None if usage is None else usage.events,
            history_bytes=None if usage is None else usage.bytes,
            delivered_by=dict(counters.delivered),
        )


def _fits(subscription: Subscription, page: list[Event]) -> bool:
    """Whether ``page`` may be delivered now: as the one page beyond the bound when
    none waits in the outbox, else within the bound beside the one that waits."""
    if not subscription._grace or not page:
        return True
    room = subscription.max_bytes - max(0, subscription.pending_bytes - subscription._grace)
    return sum(event.size for event in page) <= room


def _next_page(subscription: Subscription, page: list[Event]) -> int:
    """Events to read in the next page of a replay: about ``_PAGE_BYTES`` (or the
    outbox bound when smaller) at the size of this page's events."""
    if not page:
        return _FIRST_PAGE
    size = sum(event.size for event in page)
    target = min(_PAGE_BYTES, subscription.max_bytes)
    return max(1, min(_MAX_PAGE, len(page) * target // max(size, 1)))


def _text_bytes(text: str | bytes) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, bytes | bytearray | memoryview):
        raw = bytes(text)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidPublication(f"text is not valid UTF-8: {exc}") from exc
        return raw
    raise TypeError(f"text must be str or bytes, not {type(text).__name__}")


def channels_of(values: Iterable[str]) -> list[str]:
    """Validate and de-duplicate channel names, keeping their order."""
    seen: dict[str, None] = {}
    for value in values:
        seen[validate_channel(value)] = None
    return list(seen)
