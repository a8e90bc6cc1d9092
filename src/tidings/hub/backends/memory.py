"""MemoryBackend: one process, no services; the default.

Each channel keeps its epoch, its offset counter and a ring of its newest
events, trimmed by count on publish and by age on publish, read and sweep. A
channel's state is created when it is first touched and forgotten when no one
watches it and its last event is older than the history TTL; a later touch
starts a new epoch, so an old position gets a ``reset`` rather than a wrong
resume. Everything here runs without awaiting, so each call is atomic with
respect to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from tidings.hub.backends.base import (
    ChannelInfo,
    History,
    Listener,
    PresenceChange,
    PresenceListener,
    ResetListener,
    new_epoch,
)
from tidings.hub.event import Event, Reset
from tidings.hub.names import NamespaceOptions
from tidings.types import Position

__all__ = ["MemoryBackend"]

logger = logging.getLogger(__name__)


class _ChannelState:
    __slots__ = ("epoch", "history", "keys", "last_time", "offset", "ttl")

    def __init__(self, epoch: str, options: NamespaceOptions) -> None:
        self.epoch = epoch
        self.offset = 0
        self.history: deque[Event] = deque(maxlen=options.history_size)
        self.ttl = options.history_ttl
        self.last_time = 0.0
        self.keys: dict[str, tuple[Position, float]] = {}

    def expire(self, now: float) -> None:
        history = self.history
        cutoff = now - self.ttl
        while history and history[0].time < cutoff:
            history.popleft()


class MemoryBackend:
    """In-process backend: history rings per channel, fan-out by direct call.

    Args:
        idempotency_window: Seconds a publish ``key`` is remembered.
        sweep_interval: Seconds between sweeps that forget idle channels.
        clock: Returns the time in seconds (tests pass a fake).
    """

    name = "memory"

    def __init__(
        self,
        *,
        idempotency_window: float = 300.0,
        sweep_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._states: dict[str, _ChannelState] = {}
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

    def _state(self, channel: str, options: NamespaceOptions) -> _ChannelState:
        state = self._states.get(channel)
        if state is None:
            state = self._states[channel] = _ChannelState(new_epoch(), options)
        return state

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
        event = Event(channel, state.epoch, state.offset, raw, type=type, is_text=is_text, time=now)
        state.last_time = now
        if state.history.maxlen:
            state.history.append(event)
            state.expire(now)
        position = Position(state.epoch, state.offset)
        if key is not None:
            state.keys[key] = (position, now + self._window)
        self._listener(event)
        return position

    async def read(
        self,
        channel: str,
        *,
        since: Position | None,
        limit: int | None,
        options: NamespaceOptions,
    ) -> History:
        state = self._state(channel, options)
        state.expire(self._clock())
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
        # ``since`` sits at a computed index.
        start = len(history) - (state.offset - since.offset)
        events = list(history)[start:] if start < len(history) else []
        if limit is not None:
            events = events[:limit]
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

    async def channels(self) -> list[ChannelInfo]:
        now = self._clock()
        infos = []
        for channel, state in self._states.items():
            state.expire(now)
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
            state.expire(now)
            if state.keys:
                state.keys = {k: v for k, v in state.keys.items() if v[1] > now}
            if (
                channel not in self._watched
                and not state.history
                and not state.keys
                and now - state.last_time > state.ttl
            ):
                idle.append(channel)
        for channel in idle:
            del self._states[channel]
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
