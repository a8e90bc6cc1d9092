"""wire/cursor.py: cursor strings round-trip and bad ones are refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import InvalidCursor
from tidings.types import Position
from tidings.wire.cursor import (
    MAX_CURSOR_LENGTH,
    decode_cursor,
    encode_cursor,
    encode_cursor_bytes,
    encode_entry,
)


def test_round_trip_keeps_order() -> None:
    positions = {
        "b": Position("e1", 3),
        "chat:room/1": Position("x-y_z", 0),
        "a": Position("q", 17),
    }
    text = encode_cursor(positions)
    assert text == "b:e1:3,chat:room/1:x-y_z:0,a:q:17"
    assert list(decode_cursor(text).items()) == list(positions.items())


def test_bytes_forms_are_the_same_cursor() -> None:
    positions = {"b": Position("e1", 3), "chat:room/1": Position("x-y_z", 0)}
    assert encode_cursor_bytes(positions) == encode_cursor(positions).encode()
    assert encode_entry("chat:room/1", "x-y_z", 0) == b"chat:room/1:x-y_z:0"
    assert decode_cursor(encode_entry("a", "q", 17).decode()) == {"a": Position("q", 17)}
    assert encode_cursor_bytes({}) == b""


def test_empty_cursor() -> None:
    assert encode_cursor({}) == ""
    assert decode_cursor("") == {}
    assert decode_cursor("  ") == {}


@pytest.mark.parametrize(
    "bad",
    [
        "a",
        "a:1",
        "a:e:",
        "a:e:x",
        "a:e:-1",
        "a:e:01",
        ":e:1",
        "a:e!:1",
        "a:e:1,,b:e:2",
        "a:e:1,a:e:2",
        "a:e:12345678901234567890",
    ],
)
def test_bad_cursors_are_refused(bad: str) -> None:
    with pytest.raises(InvalidCursor) as caught:
        decode_cursor(bad)
    assert caught.value.code == "invalid_cursor"
    assert isinstance(caught.value, ValueError)


def test_overlong_cursor_is_refused() -> None:
    with pytest.raises(InvalidCursor, match="longer"):
        decode_cursor("a:e:1," * (MAX_CURSOR_LENGTH // 4))


channel_names = st.from_regex(r"[A-Za-z0-9_:.@/-]{1,40}", fullmatch=True)
epochs = st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True)


@given(st.dictionaries(channel_names, st.tuples(epochs, st.integers(0, 2**62)), max_size=6))
def test_round_trip_property(raw: dict[str, tuple[str, int]]) -> None:
    positions = {channel: Position(*value) for channel, value in raw.items()}
    assert decode_cursor(encode_cursor(positions)) == positions


@given(channel_names, epochs, st.integers(0, 2**62))
def test_an_entry_is_the_one_channel_cursor(channel: str, epoch: str, offset: int) -> None:
    cursor = encode_cursor({channel: Position(epoch, offset)})
    assert encode_entry(channel, epoch, offset) == cursor.encode()
    assert decode_cursor(encode_entry(channel, epoch, offset).decode()) == {
        channel: Position(epoch, offset)
    }
