"""The resume cursor: ``{channel: Position}`` as one opaque string.

A cursor is what an SSE ``id:`` field carries and what a reconnecting client
sends back in ``Last-Event-ID``. It names a position for every channel of the
connection, so one value resumes them all. The text form is a comma-separated
list of ``channel:epoch:offset`` entries; channel names may contain ``:``
themselves, so an entry is split from the right. Clients should treat the
value as opaque.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tidings.errors import InvalidCursor
from tidings.types import Position

__all__ = [
    "MAX_CURSOR_LENGTH",
    "decode_cursor",
    "encode_cursor",
    "encode_cursor_bytes",
    "encode_entry",
]

MAX_CURSOR_LENGTH = 16384
_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_OFFSET = re.compile(r"(?:0|[1-9][0-9]{0,18})\Z")


def encode_cursor(positions: Mapping[str, Position]) -> str:
    """Encode ``positions`` (in their iteration order) as a cursor string."""
    return ",".join(
        [f"{channel}:{epoch}:{offset}" for channel, (epoch, offset) in positions.items()]
    )


def encode_cursor_bytes(positions: Mapping[str, Position]) -> bytes:
    """:func:`encode_cursor` as UTF-8 bytes, ready for an SSE ``id:`` line."""
    # One str join and one encode: cheaper than encoding every entry.
    return encode_cursor(positions).encode("utf-8")


def encode_entry(channel: str, epoch: str, offset: int) -> bytes:
    """One channel's entry of a cursor, as bytes: alone, it is that channel's cursor.

    The same ``channel:epoch:offset`` as :func:`encode_cursor` writes, in one
    bytes formatting step for the frame every one-channel stream shares.
    """
    return b"%b:%b:%d" % (channel.encode("utf-8"), epoch.encode("utf-8"), offset)


def decode_cursor(text: str) -> dict[str, Position]:
    """Decode a cursor string; the empty string is the empty cursor.

    Raises:
        InvalidCursor: ``text`` is not a cursor this module wrote (too long, an
            entry without three parts, a bad epoch or offset, a channel twice).
    """
    text = text.strip()
    if not text:
        return {}
    if len(text) > MAX_CURSOR_LENGTH:
        raise InvalidCursor(text, f"longer than {MAX_CURSOR_LENGTH} characters")
    positions: dict[str, Position] = {}
    for entry in text.split(","):
        channel, _, rest = entry.rpartition(":")
        channel, _, epoch = channel.rpartition(":")
        offset = rest
        if not channel or not _EPOCH.match(epoch) or not _OFFSET.match(offset):
            raise InvalidCursor(text, f"entry {entry[:80]!r} is not channel:epoch:offset")
        if channel in positions:
            raise InvalidCursor(text, f"channel {channel[:80]!r} appears twice")
        positions[channel] = Position(epoch, int(offset))
    return positions
