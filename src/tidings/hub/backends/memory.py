"""MemoryBackend: one process, no services; the default.

Each channel keeps its epoch, its offset counter and a ring of its newest
events, trimmed by count and by bytes on publish and by age on publish, read
and sweep. A channel's state is created when it is first touched and
forgotten when no one watches it and its last event is older than the
history TTL; a later touch starts a new epoch, so an old position gets a
``reset`` rather than a wrong resume. Everything here runs without awaiting,
so each call is atomic with respect to the event loop.

Memory accounting
-----------------

Every byte history holds is counted, exactly: an event costs its data plus
``EVENT_OVERHEAD``, an idempotency key its length plus ``KEY_OVERHEAD``, and
a channel's state its name plus ``CHANNEL_OVERHEAD``, so many tiny channels
count too. A channel's events are bounded by its namespace's
``history_max_bytes`` (oldest dropped first); the whole backend by
``history_total_bytes``: when a publish goes past it, the channel published
to least recently gives up its oldest events first, and a channel left with
nothing (no event, no watcher) is forgotten. The channels are kept in the
order of their last publish, so finding the victim costs O(1) and each
publish does amortised O(1) work. A position that falls off gets the usual
``reset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from itertools import islice

from tidings.hub.backends.base import (
    ChannelInfo,
    History,
    HistoryUsage,
    Listener,
    PresenceChange,
    PresenceListener,
    ResetListener,
    new_epoch,
)
from tidings.hub.event import EVENT_OVERHEAD, Event, Reset
from tidings.hub.names import NamespaceOptions
from tidings.types import Position

__all__ = [
    "CHANNEL_OVERHEAD",
    "DEFAULT_HISTORY_TOTAL_BYTES",
    "KEY_OVERHEAD",
    "MemoryBackend",
    "channel_cost",
    "event_cost",
    "key_cost",
]

logger = logging.getLogger(__name__)

#: Bytes counted for a channel's state on top of its name (objects, dict slots).
CHANNEL_OVERHEAD = 1024
#: Bytes counted for a remembered idempotency key on top of its length.
KEY_OVERHEAD = 128
#: Default bound of all history of one backend (256 MiB).
DEFAULT_HISTORY_TOTAL_BYTES = 256 * 1024 * 1024


def event_cost(event: Event) -> int:
    """Bytes counted for an event kept in history: its data plus ``EVENT_OVERHEAD``."""
    return len(event.raw) + EVENT_OVERHEAD


def key_cost(key: str) -> int:
    """Bytes counted for a remembered idempotency key."""
    return len(key) + KEY_OVERHEAD


def channel_cost(channel: str) -> int:
    """Bytes counted for a channel's state, before its events and keys."""
    return len(channel) + CHANNEL_OVERHEAD


class _ChannelState:
    __slots__ = (
        "base",
        "epoch",
        "event_bytes",
        "history",
        "key_bytes",
        "keys",
        "last_time",
        "max_bytes",
        "offset",
        "size",
        "ttl",
    )

    def __init__(self, epoch: str, options: NamespaceOptions, base: int) -> None:
        self.epoch = epoch
        self.offset = 0
        self.history: deque[Event] = deque()
        self.size = options.history_size
        self.max_bytes = options.history_max_bytes
        self.ttl = options.history_ttl
        self.last_time = 0.0
        self.keys: dict[str, tuple[Position, float]] = {}
        self.base = base  # the state itself: channel_cost(name)
        self.event_bytes = 0
        self.key_bytes = 0

    @property
    def bytes(self) -> int:
        """Bytes counted for this channel: its state, events and keys."""
        return self.base + self.event_bytes + self.key_bytes

    def pop_oldest(self) -> int:
        """Drop the oldest event; return the bytes it was counted."""
        cost = event_cost(self.history.popleft())
        self.event_bytes -= cost
        return cost

    def expire(self, now: float) -> int:
        """Drop events older than the TTL; return the bytes freed."""
        history = self.history
        cutoff = now - self.ttl
        freed = 0
        while history and history[0].time < cutoff:
            freed += self.pop_oldest()
        return freed

    def expire_keys(self, now: float) -> int:
        """Forget idempotency keys past their window; return the bytes freed."""
        gone = [key for key, (_, until) in self.keys.items() if until <= now]
        freed = 0
        for key in gone:
            del self.keys[key]
            freed += key_cost(key)
        self.key_bytes -= freed
        return freed


class MemoryBackend:
    """In-process backend: history rings per channel, fan-out by direct call.

    Args:
        idempotency_window: Seconds a publish ``key`` is remembered.
        sweep_interval: Seconds between sweeps that forget idle channels.
        clock: Returns the time in seconds (tests pass a fake).
        history_total_bytes: Bound of everything history holds, channel
            states and idempotency keys included (see the module docstring).
    """

    name = "memory"

    def __init__(
        self,
        *,
        idempotency_window: float = 300.0,
        sweep_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        history_total_bytes: int = DEFAULT_HISTORY_TOTAL_BYTES,
    ) -> None:
        if history_total_bytes <= 0:
            raise ValueError(f"history_total_bytes must be > 0, not {history_total_bytes}")
        #: Channel states, least recently published first.
        self._states: OrderedDict[str, _ChannelState] = OrderedDict()
        self._total_max = history_total_bytes
        self._bytes = 0
        self._events = 0
        self._watched: dict[str, int] = {}
        self._listener: Listener = _no_listener
        self._presence_listener: PresenceListener = _no_listener
        # channel -> client id -> (payload, expiry time)
        self._presence: dict[str, dict[str, tuple[bytes, float]]] = {}
        self._window = idempotency_window
        self._sweep_interval = sweep_interval
        self._clock = clock
        self._sweeper: asyncio.Task[None] | None = None

    def set_listener(self, listener: Listener) -> None:
        self._listener = listener

    def set_presence_listener(self, listener: PresenceListener) -> None:
        self._presence_listener = listener

    def set_reset_listener(self, listener: ResetListener) -> None:
        pass  # a watched channel is never forgotten here, so its stream has no gaps

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_forever(), name="tidings-memory-sweeper"
            )

    async def aclose(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def ping(self) -> None:
        """In this process: always answers."""

    def _state(self, channel: str, options: NamespaceOptions) -> _ChannelState:
        state = self._states.get(channel)
        if state is None:
            state = _ChannelState(new_epoch(), options, channel_cost(channel))
            self._bytes += state.bytes
            self._evict()  # make room among the others first
            self._states[channel] = state
            self._states.move_to_end(channel, last=False)  # never published: evicted first
        return state

    def _expire(self, state: _ChannelState, now: float) -> None:
        before = len(state.history)
        self._bytes -= state.expire(now)
        self._events -= before - len(state.history)

    def _forget(self, channel: str) -> None:
        state = self._states.pop(channel)
        self._bytes -= state.bytes
        self._events -= len(state.history)

    def _evict(self) -> None:
        """Free history, least recently published channel first, until under the bound."""
        states = self._states
        skipped = 0
        while self._bytes > self._total_max and skipped < len(states):
            channel, state = next(iter(states.items()))
            if state.history:
                self._bytes -= state.pop_oldest()
                self._events -= 1
                continue
            if channel in self._watched:
                # A watched channel keeps its epoch and offset (its subscribers
                # are live); it is looked at again after every other channel.
                states.move_to_end(channel)
                skipped += 1
                continue
            self._forget(channel)

    def usage(self) -> HistoryUsage:
        """What history holds now: channels, events and bytes counted."""
        return HistoryUsage(len(self._states), self._events, self._bytes)

    def positions(self) -> dict[str, Position]:
        """The position of each watched channel (delivery is synchronous here)."""
        states = self._states
        return {
            channel: Position(state.epoch, state.offset)
            for channel in self._watched
            if (state := states.get(channel)) is not None
        }

    async def publish(
        self,
        channel: str,
        raw: bytes,
        *,
        type: str,
        is_text: bool,
        options: NamespaceOptions,
        key: str | None = None,
    ) -> Position:
        state = self._state(channel, options)
        now = self._clock()
        if key is not None:
            seen = state.keys.get(key)
            if seen is not None and seen[1] > now:
                return seen[0]
        state.offset += 1
        event = Event(
            channel, state.epoch, state.offset, raw, event=type, is_text=is_text, time=now
        )
        state.last_time = now
        self._states.move_to_end(channel)
        self._keep(state, event, now)
        position = Position(state.epoch, state.offset)
        if key is not None:
            if key not in state.keys:
                state.key_bytes += key_cost(key)
                self._bytes += key_cost(key)
            state.keys[key] = (position, now + self._window)
        self._evict()
        self._listener(event)
        return position

    def _keep(self, state: _ChannelState, event: Event, now: float) -> None:
        """Append ``event`` to history, then trim it by count, bytes and age."""
        if not state.size:
            return
        history = state.history
        history.append(event)
        cost = event_cost(event)
        state.event_bytes += cost
        self._bytes += cost
        self._events += 1
        while history and (len(history) > state.size or state.event_bytes > state.max_bytes):
            self._bytes -= state.pop_oldest()
            self._events -= 1
        self._expire(state, now)

    async def read(
        self,
        channel: str,
        *,
        since: Position | None,
        limit: int | None,
        options: NamespaceOptions,
    ) -> History:
        state = self._state(channel, options)
        self._expire(state, self._clock())
        position = Position(state.epoch, state.offset)
        history = state.history
        if since is None:
            events = list(history)
            if limit is not None:
                events = events[-limit:] if limit else []
            return History(position, events)
        reason = _unreachable(state, since)
        if reason is not None:
            return History(position, [], Reset(channel, position, reason))
        # Offsets in history are consecutive, so the first event after
        # ``since`` sits at a computed index. A replay reads page after page:
        # walk from the nearer end rather than copy the whole history.
        size = len(history)
        start = size - (state.offset - since.offset)
        stop = size if limit is None else min(size, start + limit)
        if start >= stop:
            events = []
        elif start < size - stop:
            events = list(islice(history, start, stop))
        else:
            events = list(islice(reversed(history), size - stop, size - start))
            events.reverse()
        return History(position, events)

    async def position(self, channel: str, *, options: NamespaceOptions) -> Position:
        state = self._state(channel, options)
        return Position(state.epoch, state.offset)

    async def watch(self, channel: str) -> None:
        self._watched[channel] = self._watched.get(channel, 0) + 1

    def unwatch(self, channel: str) -> None:
        count = self._watched.get(channel, 0) - 1
        if count > 0:
            self._watched[channel] = count
        else:
            self._watched.pop(channel, None)

    async def channels(
        self, *, after: str | None = None, limit: int | None = None
    ) -> list[ChannelInfo]:
        now = self._clock()
        names: Iterable[str] = self._states
        if after is not None:
            names = (name for name in names if name > after)
        # A page costs O(channels · log limit), never a sorted copy of them all.
        page = sorted(names) if limit is None else heapq.nsmallest(limit, names)
        infos = []
        for channel in page:
            state = self._states[channel]
            self._expire(state, now)
            infos.append(
                ChannelInfo(channel, Position(state.epoch, state.offset), len(state.history))
            )
        return infos

    async def presence_add(
        self, channel: str, client_id: str, payload: bytes, *, ttl: float
    ) -> None:
        now = self._clock()
        entries = self._live_presence(channel, now)
        new = client_id not in entries
        entries[client_id] = (payload, now + ttl)
        if new:
            self._presence_listener(PresenceChange(channel, "join", client_id, payload))

    async def presence_remove(self, channel: str, client_id: str) -> None:
        entries = self._live_presence(channel, self._clock())
        entry = entries.pop(client_id, None)
        if not entries:
            self._presence.pop(channel, None)
        if entry is not None:
            self._presence_listener(PresenceChange(channel, "leave", client_id, entry[0]))

    async def presence(self, channel: str) -> dict[str, bytes]:
        entries = self._live_presence(channel, self._clock())
        if not entries:
            self._presence.pop(channel, None)
        return {client_id: payload for client_id, (payload, _) in entries.items()}

    def _live_presence(self, channel: str, now: float) -> dict[str, tuple[bytes, float]]:
        """The channel's entries after dropping (and announcing) the expired ones."""
        entries = self._presence.setdefault(channel, {})
        expired = [client_id for client_id, (_, expiry) in entries.items() if expiry <= now]
        for client_id in expired:
            payload, _ = entries.pop(client_id)
            self._presence_listener(PresenceChange(channel, "leave", client_id, payload))
        return entries

    def sweep(self) -> int:
        """Forget idle channels and expired keys now; return how many channels went."""
        now = self._clock()
        idle = []
        for channel, state in self._states.items():
            self._expire(state, now)
            if state.keys:
                self._bytes -= state.expire_keys(now)
            if (
                channel not in self._watched
                and not state.history
                and not state.keys
                and now - state.last_time > state.ttl
            ):
                idle.append(channel)
        for channel in idle:
            self._forget(channel)
        for channel in list(self._presence):
            if not self._live_presence(channel, now):
                del self._presence[channel]
        return len(idle)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                self.sweep()
            except Exception:  # never let the sweeper die
                logger.exception("memory backend sweep failed")


def _unreachable(state: _ChannelState, since: Position) -> str | None:
    """Why ``since`` cannot be resumed exactly from ``state``, or None if it can."""
    if since.epoch != state.epoch:
        return "epoch"
    if since.offset > state.offset:
        return "window"  # ahead of the channel: not a position we gave out
    if since.offset == state.offset:
        return None
    history = state.history
    if not history or history[0].offset > since.offset + 1:
        return "window"
    return None


def _no_listener(item: Event | PresenceChange) -> None:
    pass
