"""bench.py: the counting and decoding behind `tidings bench`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.bench import BenchConfig, _ChunkedDecoder, _Tally


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload), payload)


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=10), st.lists(st.integers(0, 600)))
def test_chunked_decoding_at_any_split(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(chunk(part) for part in parts) + b"0\r\n\r\n"
    decoder = _ChunkedDecoder()
    out = b""
    start = 0
    for cut in sorted(set(cuts)):
        out += decoder.feed(stream[start:cut])
        start = max(start, cut)
    out += decoder.feed(stream[start:])
    assert out == b"".join(parts)
    assert decoder.state == "done"


def test_chunk_extensions_are_ignored() -> None:
    assert _ChunkedDecoder().feed(b"3;name=value\r\nabc\r\n") == b"abc"


def test_tally_counts_missing_duplicates_and_order() -> None:
    tally = _Tally(10, sampled=False)
    for sequence, offset in [(0, 1), (1, 2), (1, 2), (3, 4), (2, 3)]:
        tally.record(sequence, offset)
    assert tally.unique == 4
    assert tally.duplicates == 1
    assert tally.out_of_order == 1
    tally.record(99, None)  # not a sequence number of this run
    assert tally.unique == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"transport": "mqtt"}, "transport"),
        ({"subscribers": 0}, "subscribers"),
        ({"messages": 0}, "messages"),
        ({"rate": 0}, "rate"),
        ({"publishers": 0}, "publishers"),
        ({"time_limit": 0}, "time_limit"),
        ({"url": "ftp://x"}, "url"),
    ],
)
def test_config_is_bounded(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BenchConfig(**options)  # type: ignore[arg-type]
