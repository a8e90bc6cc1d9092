"""Reset: a gap in a channel's stream that cannot be filled, and where it goes on.

The same value on every side: the hub queues it to a subscription, the SSE
and WebSocket transports encode it as an ``event: reset`` / a ``reset`` push,
and the Python clients decode it back into this class. So ``tidings.Reset``,
``tidings.hub.Reset`` and ``tidings.client.Reset`` are one class, and a
consumer written against the hub also works against a client.
"""

from __future__ import annotations

from typing import Any

from tidings.types import Position

__all__ = ["RESET_SIZE", "Reset"]

#: Bytes a bounded queue is charged for holding a reset: small and fixed.
RESET_SIZE = 128


class Reset:
    """The stream of ``channel`` has a gap it cannot fill.

    Sent instead of silently missing events: when a resume position is from
    another epoch or older than history, or when a slow subscriber's outbox
    dropped events (``drop`` policy). The stream continues after
    ``position``; what came before it and after the subscriber's last event
    may be lost.

    Attributes:
        channel: The channel with the gap.
        position: Where the stream continues from.
        reason: ``"epoch"`` (history was lost), ``"window"`` (the position is
            older than history or not in it) or ``"overflow"`` (events were
            dropped for a slow subscriber).
    """

    # ``_frames`` caches the reset's encoded frames (see tidings.hub.Encoding),
    # so a reset sent to many subscribers is encoded once; it is not part of the value.
    __slots__ = ("_frames", "channel", "position", "reason")
    __match_args__ = ("channel", "position", "reason")

    def __init__(self, channel: str, position: Position, reason: str) -> None:
        self.channel = channel
        self.position = position
        self.reason = reason
        self._frames: dict[Any, bytes] | None = None

    @property
    def size(self) -> int:
        """Bytes a bounded queue is charged for holding this reset."""
        return RESET_SIZE

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reset):
            return NotImplemented
        return (self.channel, self.position, self.reason) == (
            other.channel,
            other.position,
            other.reason,
        )

    def __hash__(self) -> int:
        return hash((self.channel, self.position, self.reason))

    def __repr__(self) -> str:
        return f"Reset({self.channel!r}, {self.position!r}, {self.reason!r})"
