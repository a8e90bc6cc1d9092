"""JSON for Tidings: encoding for bytes that are kept, and decoding that keeps numbers exact.

orjson returns its output in an over-allocated buffer (4 KiB for a 100-byte
document). That is fine for bytes written and dropped, but an event kept in
history for minutes would hold the whole buffer, so what is kept goes
through :func:`dumps_kept`, which keeps a copy of exactly the output's size.

orjson reads an integer outside [-2**63, 2**64-1] as a float, silently
changing its value, and refuses to encode one; MessagePack cannot carry one
either. :func:`loads` refuses such integers instead. Every such integer has
at least 19 digits, so only a document with a run of 19 digits is read a
second time (by the standard library, with each integer range-checked):
ordinary documents pay one pass of ``bytes.translate`` and one ``find``
(a regular expression costs several times more).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from tidings.errors import IntegerOutOfRange, ProtocolError
from tidings.wire.codes import ErrorCode

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "check_integers",
    "dumps_kept",
    "has_digit_run",
    "in_range",
    "loads",
]

#: The integers JSON and MessagePack data keep exactly (orjson and msgpack both).
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
#: The shortest integer outside the range has 19 digits (-9223372036854775809).
_RUN = b"0" * 19
#: Every digit to "0", every other byte to a space.
_DIGITS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))


def dumps_kept(value: Any) -> bytes:
    """``orjson.dumps(value)`` in a right-sized buffer; raises what orjson raises."""
    return bytes(memoryview(orjson.dumps(value)))


def loads(data: str | bytes) -> Any:
    """``orjson.loads(data)``, refusing integers outside [-2**63, 2**64-1].

    Raises:
        orjson.JSONDecodeError: not valid JSON.
        IntegerOutOfRange: an integer orjson would have read as a float.
    """
    document = orjson.loads(data)
    if has_digit_run(data):
        check_integers(data)
    return document


def has_digit_run(data: str | bytes) -> bool:
    """Whether ``data`` holds 19 digits in a row (where a too-big integer could be)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return raw.translate(_DIGITS).find(_RUN) >= 0


def check_integers(data: str | bytes) -> None:
    """Read valid JSON ``data`` again, checking that every integer is in range.

    Raises:
        IntegerOutOfRange: one is not.
        ProtocolError: the document nests too deeply to be checked.
    """
    try:
        json.loads(data, parse_int=_parse_int)
    except RecursionError:
        raise ProtocolError("the document nests too deeply", code=ErrorCode.INVALID_JSON) from None


def in_range(value: int) -> bool:
    """Whether ``value`` is an integer JSON and MessagePack data keep exactly."""
    return INT_MIN <= value <= INT_MAX


def _parse_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # more digits than int() converts: out of range anyway
        raise IntegerOutOfRange(text) from None
    if not INT_MIN <= value <= INT_MAX:
        raise IntegerOutOfRange(text)
    return value
