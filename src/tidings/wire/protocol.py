"""The WebSocket protocol of Tidings: commands, replies and pushes, in JSON and MessagePack.

Sans-I/O: functions turn frames into :data:`Command` values and values into
frame payloads and whole server frames; nothing here awaits or touches a
socket. The two subprotocols carry the same messages: ``tidings.v1.json`` in
text frames, ``tidings.v1.msgpack`` in binary frames. Malformed input raises
a :class:`~tidings.errors.ProtocolError` (or :class:`~tidings.errors.UnknownOp`,
:class:`~tidings.errors.InvalidChannel`) whose ``code`` is the error code of
the reply; ``docs/websocket.md`` documents every message.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeAlias

import msgpack
import orjson

from tidings.errors import (
    FrameTooLarge,
    IntegerOutOfRange,
    InvalidChannel,
    InvalidCursor,
    ProtocolError,
    UnknownOp,
)
from tidings.types import Position
from tidings.wire import json as tjson
from tidings.wire.codes import ErrorCode
from tidings.wire.json import dumps_kept

__all__ = [
    "MAX_HISTORY_LIMIT",
    "MAX_PAGE_CURSOR",
    "MAX_PAGE_LIMIT",
    "SUBPROTOCOLS",
    "Command",
    "Connect",
    "ErrorReply",
    "Format",
    "History",
    "Op",
    "Ping",
    "Presence",
    "Publish",
    "Push",
    "Raw",
    "Refresh",
    "Reply",
    "RequestId",
    "Subscribe",
    "Unsubscribe",
    "batch",
    "big_integer",
    "check_size",
    "decode_command",
    "encode_command",
    "encode_message",
    "encode_push",
    "encode_reply",
    "frame",
    "frame_batch",
    "load",
    "negotiate",
    "page_cursor",
    "parse_command",
    "request_id",
]

#: Most events one ``history`` command may ask for.
MAX_HISTORY_LIMIT = 10000
#: Largest ``limit`` of a presence or channel listing page (also the default).
MAX_PAGE_LIMIT = 1000
#: Longest listing ``cursor``: a channel name or a client id.
MAX_PAGE_CURSOR = 255
_PAGE_CURSOR = re.compile(r"[\x21-\x7e]+\Z")
#: Longest string accepted as a request id.
MAX_ID_LENGTH = 64
#: Largest integer request id (fits a JavaScript number exactly).
MAX_ID = 2**53 - 1


class Format(StrEnum):
    """A wire format of the protocol; ``subprotocol`` is its WebSocket subprotocol name."""

    JSON = "json"
    MSGPACK = "msgpack"

    @property
    def subprotocol(self) -> str:
        return f"tidings.v1.{self.value}"

    @property
    def binary(self) -> bool:
        """Whether the format travels in binary frames (text frames otherwise)."""
        return self is Format.MSGPACK


#: Subprotocol name -> format, in the server's order of preference.
SUBPROTOCOLS = {fmt.subprotocol: fmt for fmt in (Format.JSON, Format.MSGPACK)}


def negotiate(offered: Iterable[str]) -> Format | None:
    """Pick the format for the subprotocols a client offered, in the client's order.

    Returns None when the client offered none of Tidings' subprotocols; the
    caller decides what that means (JSON, or the raw mode of ``docs/websocket.md``).
    """
    for name in offered:
        fmt = SUBPROTOCOLS.get(name.strip())
        if fmt is not None:
            return fmt
    return None


class Op(StrEnum):
    """The operations a client can ask for; the value is the ``op`` field."""

    CONNECT = "connect"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    PUBLISH = "publish"
    HISTORY = "history"
    PRESENCE = "presence"
    PING = "ping"
    REFRESH = "refresh"


#: A request id: an integer or a short string; None when the client gave none.
RequestId: TypeAlias = int | str | None


@dataclass(frozen=True, slots=True)
class Connect:
    """Introduce the connection; ``info`` is shown to others in presence."""

    id: RequestId
    info: Any = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Receive ``channel``; with ``since``, first what came after that position."""

    id: RequestId
    channel: str
    since: Position | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: RequestId
    channel: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish JSON ``data`` or plain ``text`` (exactly one of the two is given)."""

    id: RequestId
    channel: str
    data: Any = None
    text: str | None = None
    event: str = "message"
    key: str | None = None


@dataclass(frozen=True, slots=True)
class History:
    id: RequestId
    channel: str
    since: Position | None = None
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Presence:
    """One page of a channel's presence: clients after ``cursor``, at most ``limit``."""

    id: RequestId
    channel: str
    cursor: str | None = None
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: RequestId


@dataclass(frozen=True, slots=True)
class Refresh:
    """Swap the connection's token for a fresh one (same subject) before it expires."""

    id: RequestId
    token: str

    def __repr__(self) -> str:
        # A token is a credential: never in a log line.
        return f"Refresh(id={self.id!r}, token=<hidden>)"


Command: TypeAlias = (
    Connect | Subscribe | Unsubscribe | Publish | History | Presence | Ping | Refresh
)


@dataclass(frozen=True, slots=True)
class Raw:
    """Event data as published: JSON bytes, or UTF-8 text when ``is_text``.

    Put it anywhere in a reply or push; each format embeds it without a
    decode-and-encode round trip where it can (JSON).
    """

    raw: bytes
    is_text: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer: ``{"id": …, "ok": true, "result": …}``."""

    id: RequestId
    result: Any = None


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A refusal: ``{"id": …, "error": {"code": …, "message": …}}``.

    ``retry_after`` (seconds) is in the error object when the refusal is
    temporary and says when to try again (``rate_limited``, ``unavailable``).
    """

    id: RequestId
    code: str
    message: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Push:
    """A message the server sends without being asked.

    Events of a channel's stream carry ``epoch`` and ``offset``; ``join`` and
    ``leave`` notices carry neither. ``data`` is a :class:`Raw` for events as
    published, or a plain value (a reset's ``{"reason": …}``).
    """

    channel: str
    event: str
    data: Any
    epoch: str | None = None
    offset: int | None = None


# -- encoding ---------------------------------------------------------------


def _json_default(value: object) -> object:
    if isinstance(value, Raw):
        return value.raw.decode("utf-8") if value.is_text else orjson.Fragment(value.raw)
    raise TypeError(f"cannot encode {type(value).__name__}")


def _msgpack_default(value: object) -> object:
    if isinstance(value, Raw):
        return value.raw.decode("utf-8") if value.is_text else orjson.loads(value.raw)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_message(document: Any, fmt: Format) -> bytes:
    """Encode a message (a dict, list or value that may hold :class:`Raw` data).

    Raises:
        IntegerOutOfRange: an integer outside [-2**63, 2**64-1], which
            neither JSON as Tidings reads it nor MessagePack keeps.
        TypeError: a value that cannot be encoded.
    """
    try:
        if fmt is Format.JSON:
            return orjson.dumps(
                document, default=_json_default, option=orjson.OPT_PASSTHROUGH_DATACLASS
            )
        packed: bytes = msgpack.packb(document, default=_msgpack_default, use_bin_type=True)
        return packed
    except (TypeError, OverflowError) as exc:
        big = big_integer(document)
        if big is None:
            raise
        code = ErrorCode.INVALID_JSON if fmt is Format.JSON else ErrorCode.INVALID_MSGPACK
        raise IntegerOutOfRange(str(big), code=code) from exc


def big_integer(value: Any, depth: int = 0) -> int | None:
    """The first integer outside [-2**63, 2**64-1] in a value (dicts, lists, tuples), or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None if tjson.in_range(value) else value
    if depth > 1024:
        return None
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, list | tuple):
        return None
    for item in value:
        found = big_integer(item, depth + 1)
        if found is not None:
            return found
    return None


def encode_reply(reply: Reply | ErrorReply, fmt: Format) -> bytes:
    """Encode a reply's payload (not yet framed)."""
    if isinstance(reply, ErrorReply):
        error: dict[str, Any] = {"code": reply.code, "message": reply.message}
        if reply.retry_after is not None:
            error["retry_after"] = reply.retry_after
        document: dict[str, Any] = {"id": reply.id, "error": error}
    else:
        document = {"id": reply.id, "ok": True, "result": reply.result}
    return encode_message(document, fmt)


def encode_push(push: Push, fmt: Format) -> bytes:
    """Encode a push's payload (not yet framed).

    Text data gets ``"text": true`` so that a client can tell the text
    ``"1"`` from the JSON number ``1``.
    """
    document: dict[str, Any] = {"channel": push.channel}
    if push.epoch is not None:
        document["epoch"] = push.epoch
        document["offset"] = push.offset
    document["event"] = push.event
    data = push.data
    if isinstance(data, Raw):
        if data.is_text:
            document["data"] = data.raw.decode("utf-8")
            document["text"] = True
        elif fmt is Format.JSON:
            document["data"] = orjson.Fragment(data.raw)
        else:
            document["data"] = orjson.loads(data.raw)
    else:
        document["data"] = data
    if fmt is Format.JSON:
        return dumps_kept(document)  # kept with its event in history
    return encode_message(document, fmt)


def encode_command(command: Command, fmt: Format) -> bytes:
    """Encode a command as a client sends it (fields left at their default are omitted)."""
    document: dict[str, Any] = {}
    if command.id is not None:
        document["id"] = command.id
    document["op"] = _OPS[type(command)].value
    for field in _REQUIRED[_OPS[type(command)]] + _OPTIONAL[_OPS[type(command)]]:
        value = getattr(command, field)
        if field == "since" and value is not None:
            value = {"epoch": value.epoch, "offset": value.offset}
        if field == "event" and value == "message":
            continue
        if value is not None or (field == "data" and getattr(command, "text", None) is None):
            document[field] = value
    return encode_message(document, fmt)


def frame(payload: bytes, *, binary: bool = False) -> bytes:
    """Return a whole, unfragmented server frame (RFC 6455 5.2: servers never mask)."""
    length = len(payload)
    first = 0x82 if binary else 0x81
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", first, 126, length) + payload
    return struct.pack("!BBQ", first, 127, length) + payload


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 65536:
        return struct.pack("!BH", 0xDC, count)
    return struct.pack("!BI", 0xDD, count)


def batch(payloads: Sequence[bytes], fmt: Format, *, max_frame_bytes: int) -> list[bytes]:
    """Group encoded messages into as few messages as ``max_frame_bytes`` allows.

    Consecutive messages share one message holding a JSON array (or a
    MessagePack array) while its size stays within ``max_frame_bytes``; a
    group of one stays a plain message, so a message too large to share goes
    alone. Clients read a frame as either one message or an array of them.
    """
    messages: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for payload in payloads:
        # JSON adds a comma per message and two brackets; a MessagePack
        # array header takes at most 5 bytes.
        if group and size + len(payload) + 6 > max_frame_bytes:
            messages.append(_join(group, fmt))
            group, size = [], 0
        group.append(payload)
        size += len(payload) + 1
    if group:
        messages.append(_join(group, fmt))
    return messages


def frame_batch(payloads: Sequence[bytes], fmt: Format, *, max_frame_bytes: int) -> bytes:
    """:func:`batch`, each message framed, all concatenated for one write."""
    binary = fmt.binary
    return b"".join(
        [
            frame(message, binary=binary)
            for message in batch(payloads, fmt, max_frame_bytes=max_frame_bytes)
        ]
    )


def _join(group: list[bytes], fmt: Format) -> bytes:
    if len(group) == 1:
        return group[0]
    if fmt is Format.JSON:
        return b"[" + b",".join(group) + b"]"
    return _array_header(len(group)) + b"".join(group)


# -- decoding -----------------------------------------------------------------


def check_size(data: str | bytes, limit: int) -> None:
    """Refuse a message larger than ``limit`` bytes (text counts as UTF-8).

    Raises:
        FrameTooLarge: with the size and the limit.
    """
    size = len(data)
    if isinstance(data, str) and size * 4 > limit:
        size = len(data.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise FrameTooLarge(size, limit)


def load(data: str | bytes, fmt: Format) -> Any:
    """Parse one message in ``fmt``.

    Raises:
        ProtocolError: the frame type does not match the format
            (``bad_request``) or the payload is not valid JSON
            (``invalid_json``) or MessagePack (``invalid_msgpack``).
        IntegerOutOfRange: a JSON integer outside [-2**63, 2**64-1]
            (MessagePack cannot carry one).
    """
    if fmt is Format.JSON:
        if not isinstance(data, str):
            raise ProtocolError(f"{fmt.subprotocol} messages are text frames, not binary")
        try:
            return tjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"not valid JSON: {exc}", code=ErrorCode.INVALID_JSON) from exc
    if not isinstance(data, bytes | bytearray):
        raise ProtocolError(f"{fmt.subprotocol} messages are binary frames, not text")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types for bad input; all mean the same
        raise ProtocolError(
            f"not valid MessagePack: {exc}", code=ErrorCode.INVALID_MSGPACK
        ) from exc


def request_id(document: Any) -> RequestId:
    """The request id of a parsed message, or None when it has no valid one."""
    if isinstance(document, dict):
        value = document.get("id")
        if _valid_id(value):
            return value
    return None


def _valid_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value <= MAX_ID
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


def decode_command(data: str | bytes, fmt: Format) -> Command:
    """Parse and validate one command (``load`` then ``parse_command``)."""
    return parse_command(load(data, fmt))


# Fields each op may carry besides "id" and "op"; the required ones come first.
_REQUIRED = {
    Op.CONNECT: (),
    Op.SUBSCRIBE: ("channel",),
    Op.UNSUBSCRIBE: ("channel",),
    Op.PUBLISH: ("channel",),
    Op.HISTORY: ("channel",),
    Op.PRESENCE: ("channel",),
    Op.PING: (),
    Op.REFRESH: ("token",),
}
_OPTIONAL = {
    Op.CONNECT: ("info",),
    Op.SUBSCRIBE: ("since",),
    Op.UNSUBSCRIBE: (),
    Op.PUBLISH: ("data", "text", "event", "key"),
    Op.HISTORY: ("since", "limit"),
    Op.PRESENCE: ("cursor", "limit"),
    Op.PING: (),
    Op.REFRESH: (),
}
_ALLOWED = {op: frozenset(("id", "op", *_REQUIRED[op], *_OPTIONAL[op])) for op in Op}


def parse_command(document: Any) -> Command:
    """Validate a parsed message as a command.

    Raises:
        ProtocolError: not an object, a missing field, a field of the wrong
            type or an unknown field (``bad_request``).
        UnknownOp: ``op`` names no operation.
        InvalidChannel: ``channel`` is not a string. (Whether the string is
            a valid name is the hub's to say.)
    """
    if not isinstance(document, dict):
        raise ProtocolError(f"a command must be an object, not {_kind(document)}")
    if "id" in document and not _valid_id(document["id"]):
        raise ProtocolError(
            f"field 'id' must be an integer from 0 to 2**53-1 or a string of 1-{MAX_ID_LENGTH} "
            f"characters, not {_show(document['id'])}"
        )
    request = document.get("id")
    if "op" not in document:
        raise ProtocolError("field 'op' is required")
    name = document["op"]
    if not isinstance(name, str) or name not in _ALLOWED:
        raise UnknownOp(name if isinstance(name, str) else _show(name))
    op = Op(name)
    unknown = set(document) - _ALLOWED[op]
    if unknown:
        fields = ", ".join(sorted(str(field) for field in unknown))
        raise ProtocolError(f"unknown field(s) for {op.value}: {fields}")
    for field in _REQUIRED[op]:
        if field not in document:
            raise ProtocolError(f"field '{field}' is required for {op.value}")
    return _PARSERS[op](request, document)


def _channel(document: dict[str, Any]) -> str:
    channel = document["channel"]
    if not isinstance(channel, str):
        raise InvalidChannel(channel, f"must be a string, not {_kind(channel)}")
    return channel


def _since(document: dict[str, Any]) -> Position | None:
    since = document.get("since")
    if since is None:
        return None
    if not isinstance(since, dict) or set(since) != {"epoch", "offset"}:
        raise ProtocolError('field \'since\' must be {"epoch": string, "offset": integer}')
    epoch, offset = since["epoch"], since["offset"]
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_ID_LENGTH:
        raise ProtocolError(f"since.epoch must be a string of 1-{MAX_ID_LENGTH} characters")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_ID:
        raise ProtocolError("since.offset must be an integer >= 0")
    return Position(epoch, offset)


def _optional_str(document: dict[str, Any], field: str) -> str | None:
    value = document.get(field)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"field '{field}' must be a string, not {_kind(value)}")
    return value


def _parse_connect(request: RequestId, document: dict[str, Any]) -> Command:
    info = document.get("info")
    _check_json_value(info, "info")
    return Connect(request, info)


def _parse_subscribe(request: RequestId, document: dict[str, Any]) -> Command:
    return Subscribe(request, _channel(document), _since(document))


def _parse_unsubscribe(request: RequestId, document: dict[str, Any]) -> Command:
    return Unsubscribe(request, _channel(document))


def _parse_publish(request: RequestId, document: dict[str, Any]) -> Command:
    channel = _channel(document)
    if ("data" in document) == ("text" in document):
        raise ProtocolError("give exactly one of 'data' (JSON) and 'text' (plain text)")
    text = _optional_str(document, "text")
    data = document.get("data")
    _check_json_value(data, "data")
    event = document.get("event", "message")
    if not isinstance(event, str):
        raise ProtocolError(f"field 'event' must be a string, not {_kind(event)}")
    key = _optional_str(document, "key")
    return Publish(request, channel, data, text, event, key)


def _parse_history(request: RequestId, document: dict[str, Any]) -> Command:
    channel = _channel(document)
    limit = document.get("limit")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_HISTORY_LIMIT
    ):
        raise ProtocolError(f"field 'limit' must be an integer from 0 to {MAX_HISTORY_LIMIT}")
    return History(request, channel, _since(document), limit)


def _parse_presence(request: RequestId, document: dict[str, Any]) -> Command:
    limit = document.get("limit")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_LIMIT
    ):
        raise ProtocolError(f"field 'limit' must be an integer from 1 to {MAX_PAGE_LIMIT}")
    cursor = _optional_str(document, "cursor")
    return Presence(request, _channel(document), page_cursor(cursor), limit)


def page_cursor(value: str | None) -> str | None:
    """Check a listing's ``cursor`` (the ``next`` of the page before); "" means none.

    Raises:
        InvalidCursor: longer than ``MAX_PAGE_CURSOR`` characters or not printable ASCII.
    """
    if not value:
        return None
    if len(value) > MAX_PAGE_CURSOR or not _PAGE_CURSOR.match(value):
        raise InvalidCursor(value, "not a cursor from a 'next' field")
    return value


def _parse_ping(request: RequestId, document: dict[str, Any]) -> Command:
    return Ping(request)


def _parse_refresh(request: RequestId, document: dict[str, Any]) -> Command:
    token = document["token"]
    if not isinstance(token, str):
        raise ProtocolError(f"field 'token' must be a string, not {_kind(token)}")
    if not token:
        raise ProtocolError("field 'token' must not be empty")
    return Refresh(request, token)


_OPS: dict[type, Op] = {
    Connect: Op.CONNECT,
    Subscribe: Op.SUBSCRIBE,
    Unsubscribe: Op.UNSUBSCRIBE,
    Publish: Op.PUBLISH,
    History: Op.HISTORY,
    Presence: Op.PRESENCE,
    Ping: Op.PING,
    Refresh: Op.REFRESH,
}

_PARSERS = {
    Op.CONNECT: _parse_connect,
    Op.SUBSCRIBE: _parse_subscribe,
    Op.UNSUBSCRIBE: _parse_unsubscribe,
    Op.PUBLISH: _parse_publish,
    Op.HISTORY: _parse_history,
    Op.PRESENCE: _parse_presence,
    Op.PING: _parse_ping,
    Op.REFRESH: _parse_refresh,
}


def _check_json_value(value: Any, field: str) -> None:
    """Refuse what JSON cannot carry (MessagePack can): bytes, extension types,
    non-string keys, NaN and infinities. JSON input never holds them."""
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, str | bool | int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ProtocolError(f"field '{field}' holds {item}, which JSON cannot represent")
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    raise ProtocolError(f"field '{field}' holds a map with a non-string key")
            stack.extend(item.values())
        else:
            raise ProtocolError(f"field '{field}' holds {_kind(item)}, which JSON cannot represent")


def _kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    for cls, name in names.items():
        if isinstance(value, cls):
            return name
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
