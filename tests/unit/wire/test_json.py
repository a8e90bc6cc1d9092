"""wire/json.py and the codecs: integers beyond 64 bits are refused, never changed."""

from __future__ import annotations

import json as stdlib_json
import re
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import IntegerOutOfRange, ProtocolError
from tidings.wire import protocol
from tidings.wire.json import INT_MAX, INT_MIN, has_digit_run, loads
from tidings.wire.protocol import Format

in_range = st.integers(INT_MIN, INT_MAX)
too_big = st.one_of(st.integers(INT_MAX + 1), st.integers(max_value=INT_MIN - 1))
scalars = st.one_of(
    st.none(), st.booleans(), in_range, st.floats(allow_nan=False, allow_infinity=False), st.text()
)


def documents(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=5), children, max_size=4),
        ),
        max_leaves=12,
    )


def with_one(value: Any, big: int, path: list[int]) -> Any:
    """``value`` with ``big`` put somewhere inside (or wrapping it)."""
    return [value, {"n": big}] if path and path[0] % 2 else {"a": value, "b": [big]}


def test_the_range_edges() -> None:
    assert loads(b"18446744073709551615") == INT_MAX
    assert loads(b"-9223372036854775808") == INT_MIN
    for text in (b"18446744073709551616", b"-9223372036854775809", b"1" + b"0" * 30):
        with pytest.raises(IntegerOutOfRange) as refused:
            loads(text)
        assert refused.value.code == "invalid_json"
        assert "2**64" in str(refused.value)


def test_long_digit_runs_that_are_not_big_integers_pass() -> None:
    document = '{"f": 0.12345678901234567890123, "s": "123456789012345678901234567890"}'
    assert loads(document) == orjson.loads(document)
    assert loads(b"1000000000000000000") == 10**18


def test_huge_integers_are_refused_either_way() -> None:
    with pytest.raises(IntegerOutOfRange):
        loads(b"[" + b"9" * 300 + b"]")
    with pytest.raises(ProtocolError) as refused:  # orjson: infinite as a double
        protocol.load("[" + "9" * 5000 + "]", Format.JSON)
    assert refused.value.code == "invalid_json"


@given(documents(scalars))
def test_documents_in_range_load_unchanged(document: Any) -> None:
    encoded = orjson.dumps(document)
    assert loads(encoded) == orjson.loads(encoded)
    assert loads(encoded.decode()) == orjson.loads(encoded)
    assert protocol.load(encoded.decode(), Format.JSON) == orjson.loads(encoded)
    assert protocol.load(msgpack.packb(document), Format.MSGPACK) == msgpack.unpackb(
        msgpack.packb(document)
    )


@given(documents(scalars), too_big, st.lists(st.integers(0, 3), max_size=2))
def test_a_big_integer_anywhere_is_refused_by_every_codec(
    document: Any, big: int, path: list[int]
) -> None:
    value = with_one(document, big, path)
    text = stdlib_json.dumps(value)
    with pytest.raises(IntegerOutOfRange):
        loads(text)
    with pytest.raises(IntegerOutOfRange):
        protocol.load(text, Format.JSON)
    for fmt in Format:
        with pytest.raises(IntegerOutOfRange) as refused:
            protocol.encode_message(value, fmt)
        assert isinstance(refused.value, ProtocolError)
    with pytest.raises(IntegerOutOfRange):
        protocol.encode_command(protocol.Publish(1, "c", value, None, "message", None), Format.JSON)


def test_the_msgpack_codec_refuses_with_its_own_code() -> None:
    with pytest.raises(IntegerOutOfRange) as refused:
        protocol.encode_message({"n": 2**64}, Format.MSGPACK)
    assert refused.value.code == "invalid_msgpack"


def test_other_unencodable_values_still_raise_type_error() -> None:
    with pytest.raises(TypeError):
        protocol.encode_message({"x": object()}, Format.JSON)


def test_a_deep_document_with_a_long_number_is_refused_cleanly() -> None:
    depth = 1000
    text = "[" * depth + "1" * 19 + "]" * depth
    # orjson's own depth limit, or the check's: either way a clean refusal.
    with pytest.raises((ProtocolError, orjson.JSONDecodeError)) as refused:
        loads(text)
    assert not isinstance(refused.value, ProtocolError) or refused.value.code == "invalid_json"


@given(st.text(alphabet="0123456789 .,-éx", max_size=60))
def test_the_digit_run_check_agrees_with_a_regular_expression(text: str) -> None:
    expected = re.search("[0-9]{19}", text) is not None
    assert has_digit_run(text) is expected
    assert has_digit_run(text.encode()) is expected
