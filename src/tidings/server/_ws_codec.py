"""How the WebSocket transport puts hub items on the wire: one encoding per format.

Each event is encoded once per format and the bytes are shared by every
connection of that format (``hub/event.py``, ``Encoding``): a push as a JSON
document or a MessagePack map, each also already in its frame, and, for raw
mode, the event's data alone in a text frame. :class:`Codec` picks the
encodings of one kind of connection and batches what is behind.
"""

from __future__ import annotations

from tidings.hub import Encoding, Event, Item, Reset
from tidings.wire import protocol
from tidings.wire.protocol import Format

__all__ = ["WS_JSON", "WS_JSON_FRAME", "WS_MSGPACK", "WS_MSGPACK_FRAME", "WS_RAW_FRAME", "Codec"]


def _push(item: Item) -> protocol.Push:
    if isinstance(item, Reset):
        epoch, offset = item.position
        return protocol.Push(item.channel, "reset", {"reason": item.reason}, epoch, offset)
    if not item.offset:  # a join or leave notice: not part of the stream
        return protocol.Push(item.channel, item.event, protocol.Raw(item.raw))
    return protocol.Push(
        item.channel, item.event, protocol.Raw(item.raw, item.is_text), item.epoch, item.offset
    )


def _raw_frame(item: Item) -> bytes:
    if isinstance(item, Event) and item.offset:
        return protocol.frame(item.raw)
    return b""  # raw mode carries event data only: no resets, no notices


#: A push as a JSON document, and the same in a text frame.
WS_JSON = Encoding("ws-json", lambda item: protocol.encode_push(_push(item), Format.JSON))
WS_JSON_FRAME = Encoding("ws-json-frame", lambda item: protocol.frame(WS_JSON(item)))
#: A push as a MessagePack map, and the same in a binary frame.
WS_MSGPACK = Encoding("ws-msgpack", lambda item: protocol.encode_push(_push(item), Format.MSGPACK))
WS_MSGPACK_FRAME = Encoding(
    "ws-msgpack-frame", lambda item: protocol.frame(WS_MSGPACK(item), binary=True)
)
#: Raw mode: the event's data alone, in a text frame.
WS_RAW_FRAME = Encoding("ws-raw-frame", _raw_frame)


class Codec:
    """How one kind of connection (JSON, MessagePack or raw) puts items on the wire."""

    __slots__ = ("fmt", "frame_encoding", "max_frame_bytes", "payload_encoding")

    def __init__(self, fmt: Format | None, *, max_frame_bytes: int) -> None:
        self.fmt = fmt
        self.max_frame_bytes = max_frame_bytes
        self.payload_encoding: Encoding | None
        if fmt is Format.JSON:
            self.payload_encoding, self.frame_encoding = WS_JSON, WS_JSON_FRAME
        elif fmt is Format.MSGPACK:
            self.payload_encoding, self.frame_encoding = WS_MSGPACK, WS_MSGPACK_FRAME
        else:
            self.payload_encoding, self.frame_encoding = None, WS_RAW_FRAME

    @property
    def raw(self) -> bool:
        return self.fmt is None

    @property
    def binary(self) -> bool:
        return self.fmt is Format.MSGPACK

    def messages(self, items: list[Item]) -> list[bytes]:
        """The payloads of the messages that carry ``items`` (ASGI path)."""
        encode = self.payload_encoding
        if encode is None:
            return [item.raw for item in items if isinstance(item, Event) and item.offset]
        if len(items) == 1:
            return [encode(items[0])]
        assert self.fmt is not None
        return protocol.batch(
            [encode(item) for item in items], self.fmt, max_frame_bytes=self.max_frame_bytes
        )

    def frames(self, items: list[Item]) -> bytes:
        """The frames that carry ``items``, for one write (fast path)."""
        encode = self.payload_encoding
        if encode is None:
            return b"".join([WS_RAW_FRAME(item) for item in items])
        assert self.fmt is not None
        return protocol.frame_batch(
            [encode(item) for item in items], self.fmt, max_frame_bytes=self.max_frame_bytes
        )

    def reply(self, reply: protocol.Reply | protocol.ErrorReply) -> bytes:
        return protocol.encode_reply(reply, self.fmt or Format.JSON)
