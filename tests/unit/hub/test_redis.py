"""hub/backends/redis/ without a Redis: wire formats, scripts, options (see also tests/redis)."""

from __future__ import annotations

import pytest

from tidings.hub.backends.base import PresenceChange
from tidings.hub.backends.redis import RedisBackend
from tidings.hub.backends.redis.codec import (
    decode_message,
    decode_position,
    decode_presence,
    entry_event,
    message_event,
    message_presence,
)
from tidings.hub.backends.redis.pipeline import pack
from tidings.hub.backends.redis.scripts import SCRIPTS, load_script
from tidings.hub.event import Event
from tidings.types import Position


def test_commands_are_packed_as_resp_arrays_of_bulk_strings() -> None:
    packed = pack("a" * 40, [2, "key1", "κ", b"\x00\r\n"])
    assert packed == (
        b"*6\r\n$7\r\nEVALSHA\r\n$40\r\n" + b"a" * 40 + b"\r\n"
        b"$1\r\n2\r\n$4\r\nkey1\r\n$2\r\n\xce\xba\r\n$3\r\n\x00\r\n\r\n"
    )


def test_pubsub_messages_decode_to_events() -> None:
    event = message_event("c:1", b'Eabcdefgh 17 1700000000123 update 0\n{"a":\n1}')
    assert event.position == Position("abcdefgh", 17)
    assert (event.event, event.is_text, event.time) == ("update", False, 1700000000.123)
    assert event.raw == b'{"a":\n1}'  # everything after the header, line breaks included
    text = message_event("c:1", b"Ee 1 5 message 1\nplain")
    assert (text.is_text, text.data) == (True, "plain")


def test_pubsub_messages_decode_to_presence_changes() -> None:
    join = message_presence("c", b'J4 ab c{"client":"ab c"}')
    assert (join.kind, join.client_id, join.payload) == ("join", "ab c", b'{"client":"ab c"}')
    leave = message_presence("c", b"L2 x1{}")
    assert (leave.kind, leave.client_id, leave.payload) == ("leave", "x1", b"{}")


def test_pubsub_messages_are_told_apart_by_their_first_byte() -> None:
    assert isinstance(decode_message("c", b"Ee 1 5 message 1\nplain"), Event)
    assert isinstance(decode_message("c", b"J1 a{}"), PresenceChange)
    assert isinstance(decode_message("c", b"L1 a{}"), PresenceChange)
    assert decode_message("c", b"Xsomething else") is None
    with pytest.raises(ValueError, match="not enough values to unpack"):
        decode_message("c", b"Enot an event")


def test_positions_and_presence_hashes_decode() -> None:
    assert decode_position(b"abc 12") == Position("abc", 12)
    flat = [
        b"#",
        b"3",
        b"cb",
        b"000000000002{}",
        b"ca",
        b'000000000003{"x":1}',
        b"cz",
        b"000000000001",
    ]
    # Oldest join first; the sequence counter "#" is not an entry.
    assert decode_presence(flat) == {"z": b"", "b": b"{}", "a": b'{"x":1}'}
    assert list(decode_presence(flat)) == ["z", "b", "a"]


def test_stream_entries_decode_to_events() -> None:
    entry = [b"42-0", [b"t", b"1500", b"y", b"message", b"x", b"1", b"d", b"hi"]]
    event = entry_event("c", "epoch", entry)
    assert (event.position, event.data, event.time) == (Position("epoch", 42), "hi", 1.5)


def test_every_script_is_the_shared_prelude_and_its_body() -> None:
    for name in SCRIPTS:
        script = load_script(name)
        assert script.source.startswith("-- Shared by every Tidings script")
        assert "local function channel_meta" in script.source
        assert len(script.sha) == 40
        assert load_script(name) is script  # read from its file once per process


def test_options_are_checked_and_nothing_connects_before_start() -> None:
    backend = RedisBackend("redis://example.invalid:6379/0", prefix="p:")
    assert backend.pubsub_name("chat:1") == "p:{chat:1}"
    assert backend.pubsub_client_name.startswith("tidings-pubsub-")
    with pytest.raises(ValueError, match="timeout must be > 0 seconds"):
        RedisBackend(timeout=0)
    with pytest.raises(ValueError, match="refresh_interval must be > 0 seconds"):
        RedisBackend(refresh_interval=-1)
