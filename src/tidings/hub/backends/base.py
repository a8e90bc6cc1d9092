"""The Backend interface: where offsets, history and cross-process fan-out live.

The hub owns local subscribers; a backend owns everything that must be shared
between processes. The contract, which ``tests/unit/hub/backend_contract.py``
checks for every implementation:

- ``publish`` assigns the channel's next offset atomically (no two publishes
  of a channel ever get the same offset, from any process) and returns the
  new position. With a ``key`` seen in the idempotency window it publishes
  nothing and returns the original position.
- Every event of a watched channel reaches the listener given to
  ``set_listener``, exactly once per process and in offset order per
  channel, whichever process published it. ``watch`` returns only once
  events published after it returns are certain to arrive. When a watched
  channel's stream has a gap the backend cannot fill (its epoch changed, or
  events were lost and are no longer in history), the backend calls the
  reset listener with a ``Reset`` instead, then goes on from its position.
- ``read`` returns history after ``since`` when it is within the window, or a
  ``Reset`` with the current position when it is not (another epoch, older
  than history, or ahead of the channel). For a watched channel, ``read``
  and ``position`` return only once every event up to the position they
  report has reached the listener, so that a subscriber going live after
  its replay never receives an event of the replay again.
- The epoch of a channel changes whenever its history or offset counter is
  lost, so a position from before the loss is never resumed as if exact.
- Presence: ``presence_add`` stores an entry ``(channel, client_id) ->
  payload`` that lives ``ttl`` seconds unless added again (which refreshes it
  and notifies no one); ``presence_remove`` deletes it; ``presence`` lists the
  live entries of a channel, from every process. A new entry is announced to
  the presence listener as ``"join"``, a removed one as ``"leave"`` (with its
  payload), exactly once in every process that watches the channel. An entry
  that expires is no longer listed; announcing its leave is optional.
- Memory: a channel keeps at most its namespace's ``history_size`` events and
  ``history_max_bytes`` bytes of them, dropping the oldest first; a position
  that fell off gets a ``Reset`` like any other outside the window.
  ``usage`` reports what this process holds for history, or None when the
  history lives elsewhere (Redis: its own ``maxmemory`` bounds it).
- ``positions`` tells, for each watched channel, the position delivery to
  the listener has reached, without I/O: what the admin page reads for
  publish rates per channel.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from typing import NamedTuple, Protocol

from tidings.hub.event import Event, Reset
from tidings.hub.names import NamespaceOptions
from tidings.types import Position

__all__ = [
    "Backend",
    "ChannelInfo",
    "History",
    "HistoryUsage",
    "Listener",
    "PresenceChange",
    "PresenceListener",
    "ResetListener",
    "new_epoch",
]


def new_epoch() -> str:
    """Return a fresh random epoch: 8 characters of ``[a-z2-7]`` (40 bits)."""
    return base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()


#: Called by the backend with every event of a watched channel.
Listener = Callable[[Event], None]
#: Called by the backend when a watched channel's stream has a gap it cannot fill.
ResetListener = Callable[[Reset], None]


class PresenceChange(NamedTuple):
    """A client joined or left a channel.

    Attributes:
        channel: The channel.
        kind: ``"join"`` or ``"leave"``.
        client_id: The client.
        payload: The entry's payload (JSON: client, user and info).
    """

    channel: str
    kind: str
    client_id: str
    payload: bytes


#: Called by the backend with every presence change, from any process.
PresenceListener = Callable[[PresenceChange], None]


class History(NamedTuple):
    """What a read returns.

    Attributes:
        position: The channel's current position.
        events: The events read, oldest first.
        reset: Set when ``since`` could not be honoured; ``events`` is then empty.
    """

    position: Position
    events: list[Event]
    reset: Reset | None = None


class ChannelInfo(NamedTuple):
    """A channel the backend knows: its position and how many events it keeps."""

    channel: str
    position: Position
    history: int


class HistoryUsage(NamedTuple):
    """What a backend's history holds in this process.

    Attributes:
        channels: Channel states kept.
        events: Events kept.
        bytes: Bytes counted for them (see ``memory.py`` for the costs).
    """

    channels: int
    events: int
    bytes: int


class Backend(Protocol):
    """Storage and fan-out for a hub; see the module docstring for the contract."""

    name: str

    def set_listener(self, listener: Listener) -> None:
        """Set the callable that receives events of watched channels."""

    def set_reset_listener(self, listener: ResetListener) -> None:
        """Set the callable told when a watched channel's stream cannot continue exactly."""

    async def start(self) -> None:
        """Connect and start background work."""

    async def aclose(self) -> None:
        """Stop background work and release connections."""

    async def ping(self) -> None:
        """Return once the backend answers a trivial request; raise
        ``BackendUnavailable`` when it cannot (callers bound the wait)."""

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
        """Append an event and return its position."""

    async def read(
        self,
        channel: str,
        *,
        since: Position | None,
        limit: int | None,
        options: NamespaceOptions,
    ) -> History:
        """Return events after ``since`` (or the newest ``limit`` when ``since`` is None)."""

    async def position(self, channel: str, *, options: NamespaceOptions) -> Position:
        """Return the channel's current position."""

    async def watch(self, channel: str) -> None:
        """Start delivering the channel's events to the listener."""

    def unwatch(self, channel: str) -> None:
        """Stop delivering the channel's events (may complete in the background).

        Calls to ``watch`` and ``unwatch`` for one channel take effect in call order.
        """

    async def channels(
        self, *, after: str | None = None, limit: int | None = None
    ) -> list[ChannelInfo]:
        """Return the channels the backend keeps state for, sorted by name.

        Only names greater than ``after`` (when given), at most ``limit``.
        """

    def usage(self) -> HistoryUsage | None:
        """Return what history holds in this process (None: it lives elsewhere)."""

    def positions(self) -> dict[str, Position]:
        """Return the position each watched channel's delivery has reached, from
        state the backend keeps anyway (no I/O); a channel whose position is not
        known yet is left out."""

    def set_presence_listener(self, listener: PresenceListener) -> None:
        """Set the callable that receives join and leave changes."""

    async def presence_add(
        self, channel: str, client_id: str, payload: bytes, *, ttl: float
    ) -> None:
        """Add or refresh an entry that lives ``ttl`` seconds; announce it if it is new."""

    async def presence_remove(self, channel: str, client_id: str) -> None:
        """Remove an entry and announce its leave; nothing happens if there is none."""

    async def presence(self, channel: str) -> dict[str, bytes]:
        """Return the live entries of ``channel``: client id -> payload, oldest first."""
