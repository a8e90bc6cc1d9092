"""How Tidings keeps events and presence in Redis, read back into values.

The Lua scripts (``lua/common.lua`` lists every key) write three shapes:
stream entries ``<offset>-0`` with the fields ``t`` (time, ms), ``y`` (type),
``x`` (``1`` for plain text) and ``d`` (data); Pub/Sub messages, either an
event ``E<epoch> <offset> <ms> <type> <x>\\n<data>`` or a presence change
``J``/``L`` (join/leave) ``<length> <client id><payload>``; and presence
hashes whose fields ``c<client id>`` hold a 12-digit join sequence followed
by the payload. This module decodes them, and never does any I/O.
"""

from __future__ import annotations

import math
from typing import Any

from tidings.hub.backends.base import PresenceChange
from tidings.hub.event import Event
from tidings.types import Position

__all__ = [
    "decode_message",
    "decode_position",
    "decode_presence",
    "entry_event",
    "message_event",
    "message_presence",
    "ms",
]

#: Digits of the join sequence that prefixes each presence payload.
JOIN_SEQUENCE_DIGITS = 12


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds, rounded up and at least 1 (Redis expiries)."""
    return max(1, math.ceil(seconds * 1000))


def decode_position(reply: bytes) -> Position:
    """Read ``b"<epoch> <offset>"``, the position a publish returns."""
    epoch, _, offset = reply.partition(b" ")
    return Position(epoch.decode(), int(offset))


def entry_event(channel: str, epoch: str, entry: list[Any]) -> Event:
    """Read a stream entry ``[b"<offset>-0", [field, value, ...]]`` as an event."""
    entry_id, fields = entry
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    return Event(
        channel,
        epoch,
        int(entry_id.partition(b"-")[0]),
        values[b"d"],
        event=values[b"y"].decode(),
        is_text=values[b"x"] == b"1",
        time=int(values[b"t"]) / 1000,
    )


def decode_message(channel: str, message: bytes) -> Event | PresenceChange | None:
    """Read a Pub/Sub message of ``channel``; None when it is of no known kind.

    Raises:
        ValueError, IndexError, UnicodeDecodeError: the message is malformed.
    """
    kind = message[:1]
    if kind == b"E":
        return message_event(channel, message)
    if kind in (b"J", b"L"):
        return message_presence(channel, message)
    return None


def message_event(channel: str, message: bytes) -> Event:
    """Read an event message: ``E<epoch> <offset> <ms> <type> <x>\\n<data>``."""
    header, _, raw = message.partition(b"\n")
    epoch, offset, time_ms, type, is_text = header[1:].split(b" ")
    return Event(
        channel,
        epoch.decode(),
        int(offset),
        raw,
        event=type.decode(),
        is_text=is_text == b"1",
        time=int(time_ms) / 1000,
    )


def message_presence(channel: str, message: bytes) -> PresenceChange:
    """Read a presence message: ``J`` or ``L``, then ``<length> <client id><payload>``."""
    length, _, rest = message[1:].partition(b" ")
    size = int(length)
    kind = "join" if message[:1] == b"J" else "leave"
    return PresenceChange(channel, kind, rest[:size].decode(), rest[size:])


def decode_presence(flat: list[bytes]) -> dict[str, bytes]:
    """Read a presence hash (``HGETALL``, flat) as client id -> payload, oldest join first."""
    digits = JOIN_SEQUENCE_DIGITS
    entries = sorted(
        (value[:digits], field[1:].decode(), value[digits:])
        for field, value in zip(flat[::2], flat[1::2], strict=True)
        if field.startswith(b"c")
    )
    return {client_id: payload for _, client_id, payload in entries}
