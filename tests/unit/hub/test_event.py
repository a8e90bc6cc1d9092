"""hub/event.py: Event and Reset values, and Encoding's one encode per item and format."""

from __future__ import annotations

import pytest

from tidings.hub.event import EVENT_OVERHEAD, Encoding, Event, Item, Reset
from tidings.types import Position


class CountingEncoder:
    """An encode function that counts its calls."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.calls = 0

    def __call__(self, item: Item) -> bytes:
        self.calls += 1
        return self.tag + repr(item).encode()


def test_an_event_decodes_json_and_plain_text() -> None:
    event = Event("c", "e", 3, b'{"a": [1, 2]}', event="update", time=1.5)
    assert event.position == Position("e", 3)
    assert event.data == {"a": [1, 2]}
    assert event.text == '{"a": [1, 2]}'
    text = Event("c", "e", 4, "héllo".encode(), is_text=True)
    assert (text.data, text.text, text.event) == ("héllo", "héllo", "message")


def test_an_event_is_charged_its_data_plus_a_fixed_overhead() -> None:
    assert Event("c", "e", 1, b"x" * 10).size == 10 + EVENT_OVERHEAD
    assert Reset("c", Position("e", 1), "window").size == EVENT_OVERHEAD


def test_events_are_equal_by_content_not_by_time_or_cached_frames() -> None:
    first = Event("c", "e", 1, b"1", time=1.0)
    again = Event("c", "e", 1, b"1", time=2.0)
    Encoding("x", CountingEncoder(b"x"))(first)
    assert first == again
    assert hash(first) == hash(again)
    assert first != Event("c", "e", 1, b"1", event="other")
    assert first != Event("c", "e", 1, b"1", is_text=True)
    assert first != Event("c", "f", 1, b"1")
    assert first != Reset("c", Position("e", 1), "epoch")
    assert "raw=b'1'" in repr(first)
    assert repr(Event("c", "e", 1, b"y" * 100)).endswith("...)")


def test_resets_are_equal_by_channel_position_and_reason() -> None:
    reset = Reset("c", Position("e", 1), "window")
    assert reset == Reset("c", Position("e", 1), "window")
    assert hash(reset) == hash(Reset("c", Position("e", 1), "window"))
    assert reset != Reset("c", Position("e", 1), "epoch")
    assert repr(reset) == "Reset('c', Position(epoch='e', offset=1), 'window')"


def test_an_encoding_encodes_each_item_once_and_shares_the_bytes() -> None:
    encode = CountingEncoder(b"sse:")
    sse = Encoding("sse", encode)
    event = Event("c", "e", 1, b"1")
    frames = [sse(event) for _ in range(100)]  # a broadcast to 100 subscribers
    assert encode.calls == 1
    assert all(frame is frames[0] for frame in frames)
    assert frames[0] == b"sse:" + repr(event).encode()
    sse(Event("c", "e", 2, b"2"))
    assert encode.calls == 2  # another event is another encode


def test_each_format_is_cached_on_its_own() -> None:
    json_encode, msgpack_encode = CountingEncoder(b"j"), CountingEncoder(b"m")
    as_json, as_msgpack = Encoding("json", json_encode), Encoding("msgpack", msgpack_encode)
    reset = Reset("c", Position("e", 5), "overflow")
    for _ in range(3):
        assert as_json(reset).startswith(b"j")
        assert as_msgpack(reset).startswith(b"m")
    assert (json_encode.calls, msgpack_encode.calls) == (1, 1)
    assert repr(as_json) == "Encoding('json')"


def test_type_is_a_deprecated_name_of_event() -> None:
    with pytest.warns(DeprecationWarning, match=r"Event\(type=\.\.\.\) is deprecated"):
        event = Event("c", "e", 1, b"1", type="note")
    assert event.event == "note"
    with pytest.warns(DeprecationWarning, match=r"Event\.type is deprecated.*use Event\.event"):
        assert event.type == "note"
