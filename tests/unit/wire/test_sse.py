"""wire/sse.py: the encoder and the WHATWG "Interpreting an event stream" rules.

Every decoder case runs three ways: fed whole, byte by byte, and at every
split point in two pieces; the results must be identical.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.sse_vectors import VECTORS, Vector
from tidings.errors import FrameTooLarge
from tidings.wire.sse import (
    PING,
    SSEDecoder,
    SSEEvent,
    encode_comment,
    encode_data,
    encode_event,
    encode_id,
)


def decode_whole(data: bytes) -> tuple[list[SSEEvent], SSEDecoder]:
    decoder = SSEDecoder()
    events = decoder.feed(data) + decoder.feed_eof()
    return events, decoder


def decode_bytewise(data: bytes) -> tuple[list[SSEEvent], SSEDecoder]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for index in range(len(data)):
        events += decoder.feed(data[index : index + 1])
    events += decoder.feed_eof()
    return events, decoder


def decode_all_ways(data: bytes) -> list[SSEEvent]:
    """Decode whole, byte by byte and at every two-piece split; insist they agree."""
    whole, decoder = decode_whole(data)
    bytewise, decoder2 = decode_bytewise(data)
    assert bytewise == whole
    assert decoder2.last_event_id == decoder.last_event_id
    assert decoder2.retry == decoder.retry
    for cut in range(1, len(data)):
        split = SSEDecoder()
        events = split.feed(data[:cut]) + split.feed(data[cut:]) + split.feed_eof()
        assert events == whole, f"split at {cut}"
    return whole


# -- decoder: the WHATWG rules -------------------------------------------------


def test_simple_event() -> None:
    assert decode_all_ways(b"data: hello\n\n") == [SSEEvent("hello")]


def test_multiline_data_is_joined_with_lf() -> None:
    assert decode_all_ways(b"data: a\ndata: b\ndata:\n\n") == [SSEEvent("a\nb\n")]


@pytest.mark.parametrize("ending", [b"\n", b"\r", b"\r\n"])
def test_all_three_line_endings(ending: bytes) -> None:
    data = b"event: e" + ending + b"data: x" + ending + b"data: y" + ending + ending
    assert decode_all_ways(data) == [SSEEvent("x\ny", event="e")]


def test_mixed_line_endings() -> None:
    assert decode_all_ways(b"data: 1\rdata: 2\r\ndata: 3\n\r\n") == [SSEEvent("1\n2\n3")]


def test_cr_at_chunk_end_followed_by_lf_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    # "\r\n" split across chunks must not become two line endings (an empty
    # line would dispatch early).
    assert decoder.feed(b"\n\r\n") == [SSEEvent("a\nb")]


def test_cr_then_cr_is_two_line_endings() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [SSEEvent("a")]


def test_bom_at_start_is_stripped() -> None:
    assert decode_all_ways(b"\xef\xbb\xbfdata: x\n\n") == [SSEEvent("x")]


def test_bom_split_across_chunks_is_stripped() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef") == []
    assert decoder.feed(b"\xbb") == []
    assert decoder.feed(b"\xbfdata: x\n\n") == [SSEEvent("x")]


def test_second_bom_is_not_stripped() -> None:
    # Only one leading BOM is removed; a second one makes the field name
    # "\ufeffdata", an unknown field that is ignored.
    assert decode_all_ways(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []


def test_bom_later_in_stream_is_data() -> None:
    assert decode_all_ways(b"data: \xef\xbb\xbfx\n\n") == [SSEEvent("\ufeffx")]


def test_only_one_leading_space_is_stripped() -> None:
    assert decode_all_ways(b"data:  two spaces\n\n") == [SSEEvent(" two spaces")]
    assert decode_all_ways(b"data:no space\n\n") == [SSEEvent("no space")]
    assert decode_all_ways(b"data:\ttab\n\n") == [SSEEvent("\ttab")]


def test_comments_are_ignored() -> None:
    assert decode_all_ways(b": ping\n:\ndata: x\n: more\n\n") == [SSEEvent("x")]


def test_comment_only_blocks_dispatch_nothing() -> None:
    assert decode_all_ways(b": ping\n\n: ping\n\n") == []


def test_unknown_fields_are_ignored() -> None:
    assert decode_all_ways(b"foo: bar\nDATA: no\ndata: yes\n\n") == [SSEEvent("yes")]


def test_field_without_colon_has_empty_value() -> None:
    # "data" alone appends an empty line to the data buffer.
    assert decode_all_ways(b"data\ndata\n\n") == [SSEEvent("\n")]
    # "event" alone sets an empty type, which dispatches as "message".
    assert decode_all_ways(b"event\ndata: x\n\n") == [SSEEvent("x", event="message")]


def test_value_may_contain_colons() -> None:
    assert decode_all_ways(b"data: a: b:c\n\n") == [SSEEvent("a: b:c")]


def test_retry_only_when_all_ascii_digits() -> None:
    _, decoder = decode_whole(b"retry: 1500\n\n")
    assert decoder.retry == 1500
    for bad in (
        b"retry: 15s\n\n",
        b"retry: -1\n\n",
        b"retry: 1.5\n\n",
        b"retry: \n\n",
        b"retry:  15\n\n",
        "retry: \u0661\u0662\n\n".encode(),
    ):
        _, decoder = decode_whole(bad)
        assert decoder.retry is None, bad
    # A later bad value leaves a good one in place.
    _, decoder = decode_whole(b"retry: 100\n\nretry: x\n\n")
    assert decoder.retry == 100


def test_id_with_nul_is_ignored() -> None:
    events = decode_all_ways(b"id: good\ndata: 1\n\nid: b\x00ad\ndata: 2\n\n")
    assert [event.id for event in events] == ["good", "good"]


def test_last_event_id_persists_across_events() -> None:
    events = decode_all_ways(b"id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\n")
    assert [event.id for event in events] == ["7", "7", ""]


def test_id_only_block_sets_last_event_id_without_dispatch() -> None:
    events, decoder = decode_whole(b"retry: 3000\nid: cursor-1\n\n")
    assert events == []
    assert decoder.last_event_id == "cursor-1"
    assert decoder.retry == 3000


def test_empty_data_buffer_does_not_dispatch() -> None:
    assert decode_all_ways(b"event: x\n\nid: 1\n\n") == []
    # The event type does not leak into the next event.
    assert decode_all_ways(b"event: x\n\ndata: y\n\n") == [SSEEvent("y")]


def test_event_type_resets_after_dispatch() -> None:
    events = decode_all_ways(b"event: a\ndata: 1\n\ndata: 2\n\n")
    assert [event.event for event in events] == ["a", "message"]


def test_trailing_event_without_blank_line_is_not_dispatched() -> None:
    assert decode_all_ways(b"data: done\n\ndata: pending\n") == [SSEEvent("done")]
    assert decode_all_ways(b"data: pending") == []


def test_feed_eof_discards_the_incomplete_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed_eof() == []
    assert decoder.feed(b"\n") == []  # the old data buffer is gone


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert decode_all_ways(b"data: \xff\xfe ok\n\n") == [SSEEvent("\ufffd\ufffd ok")]


def test_multibyte_characters_split_across_chunks() -> None:
    assert decode_all_ways("data: h\u00e9llo \u2603 \U0001f600\n\n".encode()) == [
        SSEEvent("h\u00e9llo \u2603 \U0001f600")
    ]


def test_max_event_bytes_refuses_runaway_lines() -> None:
    decoder = SSEDecoder(max_event_bytes=16)
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"data: " + b"x" * 32)
    decoder = SSEDecoder(max_event_bytes=16)
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"data: 0123456789\ndata: 0123456789\n")


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: one\n\n", b"data: two\n\n"],  # whole events: the one-line fast path
        [b"id: 7\n\n", b"data: after an id\n\n"],  # keeps the last event id
        [b"event: x\n", b"data: typed\n\n"],  # a pending type is not lost
        [b"data: a\n", b"data: b\n\n"],  # nor pending data
        [b"data: a\r", b"\ndata: b\n\n"],  # nor a pending CR
        [b"data: a\r\n\n", b"data:no space\n\n", b"data: two\ndata: lines\n\n"],
        [b"\xef\xbb\xbfdata: after a BOM\n\n"],
    ],
)
def test_whole_data_events_decode_as_bytewise(chunks: list[bytes]) -> None:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    expected, bytewise = decode_bytewise(b"".join(chunks))
    assert events == expected
    assert decoder.last_event_id == bytewise.last_event_id


def test_max_event_bytes_holds_for_a_whole_data_event() -> None:
    SSEDecoder(max_event_bytes=16).feed(b"data: 0123456789\n\n")  # a 16-character line
    with pytest.raises(FrameTooLarge):
        SSEDecoder(max_event_bytes=16).feed(b"data: 01234567890\n\n")


# -- encoder ----------------------------------------------------------------


def test_encode_fields_in_order() -> None:
    frame = encode_event("hi", event="greeting", id="c:e:1", retry=2500, comment="note")
    assert frame == b": note\nretry: 2500\nid: c:e:1\nevent: greeting\ndata: hi\n\n"


def test_encode_message_type_is_implicit() -> None:
    assert encode_event("x", event="message") == b"data: x\n\n"


def test_encode_splits_every_kind_of_line_break() -> None:
    assert encode_event("a\nb\r\nc\rd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"


def test_encode_empty_data_dispatches_empty_string() -> None:
    assert decode_all_ways(encode_event("")) == [SSEEvent("")]


def test_encode_without_data_only_sets_fields() -> None:
    frame = encode_event(id="abc", retry=10)
    assert frame == b"retry: 10\nid: abc\n\n"
    events, decoder = decode_whole(frame)
    assert events == []
    assert decoder.last_event_id == "abc"


def test_encode_comment() -> None:
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert decode_all_ways(encode_comment("x")) == []


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b"])
def test_encode_refuses_bad_id(bad: str) -> None:
    with pytest.raises(ValueError, match="id"):
        encode_event("x", id=bad)


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b"])
def test_encode_refuses_bad_event_type(bad: str) -> None:
    with pytest.raises(ValueError, match="event"):
        encode_event("x", event=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_encode_refuses_bad_retry(bad: object) -> None:
    with pytest.raises(ValueError, match="retry"):
        encode_event("x", retry=bad)  # type: ignore[arg-type]


def test_encode_accepts_bytes_data() -> None:
    assert encode_event(b"caf\xc3\xa9") == "data: café\n\n".encode()


# -- bytes-level helpers ----------------------------------------------------


def test_encode_data_writes_the_fields_in_the_encode_event_order() -> None:
    assert encode_data(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_data(b"x", event="note") == b"event: note\ndata: x\n\n"
    assert encode_data(b"x", id=b"c:e:1") == b"id: c:e:1\ndata: x\n\n"
    assert encode_data(b"x", event="note", id=b"c:e:1") == b"id: c:e:1\nevent: note\ndata: x\n\n"


def test_encode_data_splits_every_kind_of_line_break() -> None:
    assert encode_data(b"a\nb\r\nc\rd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"
    assert decode_all_ways(encode_data(b"a\r\n\nb")) == [SSEEvent("a\n\nb")]


def test_encode_data_empty_dispatches_empty_string() -> None:
    assert decode_all_ways(encode_data(b"")) == [SSEEvent("")]


def test_encode_id_goes_in_front_of_a_block() -> None:
    frame = encode_id(b"c:e:7") + encode_data(b"x", event="note")
    assert frame == encode_data(b"x", event="note", id=b"c:e:7")
    assert decode_all_ways(frame) == [SSEEvent("x", event="note", id="c:e:7")]


def test_ping_is_the_ping_comment() -> None:
    assert encode_comment("ping") == PING
    events, decoder = decode_whole(PING)
    assert events == []
    assert decoder.last_event_id == ""


# -- properties -------------------------------------------------------------

field_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)),
    max_size=20,
)
data_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


@given(
    events=st.lists(
        st.tuples(data_text, st.one_of(st.none(), field_text.filter(bool)), field_text),
        max_size=5,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
def test_round_trip_at_any_split(
    events: list[tuple[str, str | None, str]], cuts: list[int]
) -> None:
    stream = b"".join(encode_event(data, event=kind, id=ident) for data, kind, ident in events)
    decoder = SSEDecoder()
    decoded: list[SSEEvent] = []
    start = 0
    for cut in sorted(set(cuts)):
        decoded += decoder.feed(stream[start:cut])
        start = max(start, cut)
    decoded += decoder.feed(stream[start:]) + decoder.feed_eof()
    expected = [
        SSEEvent(
            data.replace("\r\n", "\n").replace("\r", "\n"),
            event=(kind or "message"),
            id=ident,
        )
        for data, kind, ident in events
    ]
    assert decoded == expected


@given(data=data_text, kind=field_text, ident=st.one_of(st.none(), field_text))
def test_encode_data_is_encode_event_in_bytes(data: str, kind: str, ident: str | None) -> None:
    event_id = None if ident is None else ident.encode()
    frame = encode_data(data.encode(), event=kind or "message", id=event_id)
    assert frame == encode_event(data, event=kind or None, id=ident)
    assert decode_all_ways(frame) == [
        SSEEvent(
            data.replace("\r\n", "\n").replace("\r", "\n"),
            event=kind or "message",
            id=ident or "",
        )
    ]


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=300))
def test_decoder_never_crashes_on_arbitrary_bytes(data: bytes, cut: int) -> None:
    whole = SSEDecoder()
    split = SSEDecoder()
    expected = whole.feed(data) + whole.feed_eof()
    got = split.feed(data[:cut]) + split.feed(data[cut:]) + split.feed_eof()
    assert got == expected


# -- the shared corpus (also run end to end through the client) ---------------


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_spec_vectors(vector: Vector) -> None:
    events = decode_all_ways(vector.stream)
    assert [(e.event, e.data, e.id) for e in events] == vector.events
    _, decoder = decode_whole(vector.stream)
    assert decoder.retry == vector.retry


def test_a_decoder_resuming_from_an_id_keeps_it_until_the_stream_sends_one() -> None:
    decoder = SSEDecoder(last_event_id="a:e:5")
    assert decoder.feed(b"retry: 10\n\ndata: x\n\n")[0].id == "a:e:5"
    assert decoder.last_event_id == "a:e:5"
    assert decoder.feed(b"id: a:e:6\ndata: y\n\n")[0].id == "a:e:6"
    assert decoder.feed(b"id\ndata: z\n\n")[0].id == ""  # an empty id resets it


def test_sse_event_type_is_a_deprecated_name_of_event() -> None:
    (decoded,) = SSEDecoder().feed(b"event: note\ndata: x\n\n")
    with pytest.warns(DeprecationWarning, match=r"SSEEvent\.type is deprecated"):
        assert decoded.type == decoded.event == "note"
