"""Event, the unit the hub moves, and Encoding, its cached wire frames.

An Event is immutable once published and shared by every subscriber and by
history. A transport turns it into bytes through an :class:`Encoding`, which
encodes each event at most once and keeps the bytes on the event, so a
broadcast to N subscribers costs one encode, not N.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from tidings.types import Position, deprecated_name
from tidings.wire.reset import Reset

__all__ = ["Encoding", "Event", "Item", "Reset"]

#: Bytes charged to an outbox for an event on top of its data: the share of
#: the event object and the outbox entry, so that tiny events still count.
EVENT_OVERHEAD = 128


class Event:
    """One published event.

    Attributes:
        channel: The channel it was published to.
        epoch: The channel's epoch when it was published.
        offset: Its offset in that epoch (1, 2, 3 ...).
        event: The event type (``"message"`` unless the publisher chose one).
        raw: The data as published: JSON bytes, or UTF-8 text when ``is_text``.
        is_text: Whether the publisher sent plain text rather than JSON.
        time: When it was published (seconds since the epoch).

    The hub also makes presence notices of this class: event ``join`` or
    ``leave``, offset 0, an empty epoch, and the client's presence document
    as data. They are not part of the channel's stream (no position, no
    history) and reach only subscriptions that carry a client.
    """

    __slots__ = ("_frames", "channel", "epoch", "event", "is_text", "offset", "raw", "time")

    def __init__(
        self,
        channel: str,
        epoch: str,
        offset: int,
        raw: bytes,
        *,
        event: str = "message",
        is_text: bool = False,
        time: float = 0.0,
        type: str | None = None,
    ) -> None:
        if type is not None:
            deprecated_name("Event(type=...)", "Event(event=...)")
            event = type
        self.channel = channel
        self.epoch = epoch
        self.offset = offset
        self.event = event
        self.raw = raw
        self.is_text = is_text
        self.time = time
        self._frames: dict[Encoding, bytes] | None = None

    @property
    def position(self) -> Position:
        """The position of this event in its channel."""
        return Position(self.epoch, self.offset)

    @property
    def type(self) -> str:
        """Deprecated name of :attr:`event`."""
        deprecated_name("Event.type", "Event.event")
        return self.event

    @property
    def data(self) -> Any:
        """The data decoded: a JSON value, or ``str`` for plain text."""
        return self.raw.decode("utf-8") if self.is_text else orjson.loads(self.raw)

    @property
    def text(self) -> str:
        """The data as text: the JSON document or the plain text as published."""
        return self.raw.decode("utf-8")

    @property
    def size(self) -> int:
        """Bytes an outbox is charged for holding this event."""
        return len(self.raw) + EVENT_OVERHEAD

    def __repr__(self) -> str:
        return (
            f"Event({self.channel!r}, {self.epoch!r}, {self.offset}, event={self.event!r}, "
            f"raw={self.raw[:60]!r}{'...' if len(self.raw) > 60 else ''})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (
            self.channel == other.channel
            and self.epoch == other.epoch
            and self.offset == other.offset
            and self.event == other.event
            and self.raw == other.raw
            and self.is_text == other.is_text
        )

    def __hash__(self) -> int:
        return hash((self.channel, self.epoch, self.offset))


#: What a subscription yields.
Item = Event | Reset


class Encoding:
    """A wire format for items, cached on each event (and reset).

    ``encoding(item)`` returns the bytes, calling ``encode`` only the first
    time for a given item; every later subscriber gets the same bytes object.
    Transports define their encodings once, at import time.
    """

    __slots__ = ("_encode", "name")

    def __init__(self, name: str, encode: Callable[[Item], bytes]) -> None:
        self.name = name
        self._encode = encode

    def __call__(self, event: Item) -> bytes:
        frames = event._frames
        if frames is None:
            frames = event._frames = {}
        else:
            frame = frames.get(self)
            if frame is not None:
                return frame
        frame = frames[self] = self._encode(event)
        return frame

    def __repr__(self) -> str:
        return f"Encoding({self.name!r})"
