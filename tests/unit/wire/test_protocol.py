"""wire/protocol.py: commands, replies, pushes, batches and frames, in JSON and MessagePack."""

from __future__ import annotations

import math
import struct
import tracemalloc
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from tidings.errors import FrameTooLarge, InvalidChannel, ProtocolError, TidingsError, UnknownOp
from tidings.types import Position
from tidings.wire import protocol
from tidings.wire.protocol import Format

FORMATS = [Format.JSON, Format.MSGPACK]


def dumps(document: Any, fmt: Format) -> str | bytes:
    """A frame's data as the ASGI server hands it over: text for JSON, bytes for MessagePack."""
    if fmt is Format.JSON:
        return orjson.dumps(document).decode()
    packed: bytes = msgpack.packb(document)
    return packed


def loads(payload: bytes, fmt: Format) -> Any:
    return orjson.loads(payload) if fmt is Format.JSON else msgpack.unpackb(payload)


def parse_frames(data: bytes) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:  # pragma: no cover - the whole frame is in the buffer
            raise AssertionError("incomplete frame")
    return frames


# -- negotiation and frames ------------------------------------------------------


def test_negotiate_takes_the_clients_first_known_subprotocol() -> None:
    assert protocol.negotiate(["tidings.v1.msgpack", "tidings.v1.json"]) is Format.MSGPACK
    assert protocol.negotiate(["chat", "tidings.v1.json"]) is Format.JSON
    assert protocol.negotiate(["chat"]) is None
    assert protocol.negotiate([]) is None
    assert Format.JSON.subprotocol == "tidings.v1.json"
    assert Format.MSGPACK.binary
    assert not Format.JSON.binary


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("binary", [False, True])
def test_frames_are_unmasked_whole_frames_with_the_shortest_length(
    length: int, binary: bool
) -> None:
    payload = b"x" * length
    data = protocol.frame(payload, binary=binary)
    header = 2 if length < 126 else 4 if length < 65536 else 10
    assert len(data) == header + length
    (parsed,) = parse_frames(data)
    assert parsed.opcode is (Opcode.BINARY if binary else Opcode.TEXT)
    assert parsed.fin
    assert parsed.data == payload


# -- replies and pushes ------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_replies(fmt: Format) -> None:
    ok = protocol.encode_reply(protocol.Reply(7, {"channel": "a", "offset": 3}), fmt)
    assert loads(ok, fmt) == {"id": 7, "ok": True, "result": {"channel": "a", "offset": 3}}
    error = protocol.encode_reply(protocol.ErrorReply("x", "bad_request", "nope"), fmt)
    assert loads(error, fmt) == {"id": "x", "error": {"code": "bad_request", "message": "nope"}}
    anonymous = protocol.encode_reply(protocol.ErrorReply(None, "invalid_json", "?"), fmt)
    assert loads(anonymous, fmt)["id"] is None
    limited = protocol.encode_reply(protocol.ErrorReply(2, "rate_limited", "slow", 0.25), fmt)
    assert loads(limited, fmt)["error"] == {
        "code": "rate_limited",
        "message": "slow",
        "retry_after": 0.25,
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_pushes(fmt: Format) -> None:
    event = protocol.Push("a", "message", protocol.Raw(b'{"x":[1,2.5]}'), "e1", 4)
    assert loads(protocol.encode_push(event, fmt), fmt) == {
        "channel": "a",
        "epoch": "e1",
        "offset": 4,
        "event": "message",
        "data": {"x": [1, 2.5]},
    }
    text = protocol.Push("a", "note", protocol.Raw("☃ 1".encode(), is_text=True), "e1", 5)
    decoded = loads(protocol.encode_push(text, fmt), fmt)
    assert (decoded["data"], decoded["text"]) == ("☃ 1", True)
    notice = protocol.Push("a", "join", protocol.Raw(b'{"client":"c1"}'))
    assert loads(protocol.encode_push(notice, fmt), fmt) == {
        "channel": "a",
        "event": "join",
        "data": {"client": "c1"},
    }
    reset = protocol.Push("a", "reset", {"reason": "epoch"}, "e2", 0)
    assert loads(protocol.encode_push(reset, fmt), fmt)["data"] == {"reason": "epoch"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_raw_data_nested_in_a_reply(fmt: Format) -> None:
    result = {"events": [{"data": protocol.Raw(b"[1]")}, {"data": protocol.Raw(b"t", True)}]}
    decoded = loads(protocol.encode_reply(protocol.Reply(1, result), fmt), fmt)
    assert decoded["result"]["events"] == [{"data": [1]}, {"data": "t"}]


# -- batches -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_batch_groups_messages_into_arrays_within_the_limit(fmt: Format) -> None:
    payloads = [protocol.encode_message({"n": n, "pad": "x" * 20}, fmt) for n in range(50)]
    messages = protocol.batch(payloads, fmt, max_frame_bytes=300)
    assert 1 < len(messages) < 50
    assert all(len(message) <= 300 for message in messages)
    flattened = []
    for message in messages:
        value = loads(message, fmt)
        flattened.extend(value if isinstance(value, list) else [value])
    assert [value["n"] for value in flattened] == list(range(50))


@pytest.mark.parametrize("fmt", FORMATS)
def test_batch_of_one_and_oversized_messages_stay_plain(fmt: Format) -> None:
    small = protocol.encode_message({"n": 1}, fmt)
    big = protocol.encode_message({"n": 2, "pad": "x" * 500}, fmt)
    assert protocol.batch([small], fmt, max_frame_bytes=100) == [small]
    messages = protocol.batch([small, big, small], fmt, max_frame_bytes=100)
    assert messages == [small, big, small]


@pytest.mark.parametrize("count", [2, 15, 16, 300, 70000])
def test_msgpack_array_headers(count: int) -> None:
    payloads = [msgpack.packb(n) for n in range(count)]
    (message,) = protocol.batch(payloads, Format.MSGPACK, max_frame_bytes=10**7)
    assert msgpack.unpackb(message) == list(range(count))


@pytest.mark.parametrize("fmt", FORMATS)
def test_frame_batch_frames_each_message(fmt: Format) -> None:
    payloads = [protocol.encode_message(n, fmt) for n in range(10)]
    frames = parse_frames(protocol.frame_batch(payloads, fmt, max_frame_bytes=12))
    assert len(frames) > 1
    assert all(f.opcode is (Opcode.BINARY if fmt.binary else Opcode.TEXT) for f in frames)
    values: list[Any] = []
    for f in frames:
        value = loads(bytes(f.data), fmt)
        values.extend(value if isinstance(value, list) else [value])
    assert values == list(range(10))


# -- decoding ---------------------------------------------------------------------------


def test_check_size_counts_utf8_bytes() -> None:
    protocol.check_size("é" * 50, 100)
    with pytest.raises(FrameTooLarge) as caught:
        protocol.check_size("é" * 51, 100)
    assert (caught.value.size, caught.value.limit) == (102, 100)
    with pytest.raises(FrameTooLarge):
        protocol.check_size(b"x" * 101, 100)


def test_load_refuses_the_wrong_frame_type_and_bad_payloads() -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.load(b"{}", Format.JSON)
    assert caught.value.code == "bad_request"
    with pytest.raises(ProtocolError) as caught:
        protocol.load("{}", Format.MSGPACK)
    assert caught.value.code == "bad_request"
    with pytest.raises(ProtocolError) as caught:
        protocol.load("{nope", Format.JSON)
    assert caught.value.code == "invalid_json"
    with pytest.raises(ProtocolError) as caught:
        protocol.load(b"\xc1", Format.MSGPACK)
    assert caught.value.code == "invalid_msgpack"
    with pytest.raises(ProtocolError) as caught:
        protocol.load(msgpack.packb(1) + b"\x01", Format.MSGPACK)  # trailing bytes
    assert caught.value.code == "invalid_msgpack"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"op": "ping"}, protocol.Ping(None)),
        ({"id": 1, "op": "connect", "info": {"name": "ada"}}, protocol.Connect(1, {"name": "ada"})),
        ({"id": "a", "op": "subscribe", "channel": "c"}, protocol.Subscribe("a", "c")),
        (
            {"id": 2, "op": "subscribe", "channel": "c", "since": {"epoch": "e", "offset": 9}},
            protocol.Subscribe(2, "c", Position("e", 9)),
        ),
        ({"id": 3, "op": "unsubscribe", "channel": "c"}, protocol.Unsubscribe(3, "c")),
        (
            {"id": 4, "op": "publish", "channel": "c", "data": [1], "event": "e", "key": "k"},
            protocol.Publish(4, "c", [1], None, "e", "k"),
        ),
        ({"op": "publish", "channel": "c", "data": None}, protocol.Publish(None, "c")),
        ({"op": "publish", "channel": "c", "text": "hi"}, protocol.Publish(None, "c", text="hi")),
        (
            {"id": 5, "op": "history", "channel": "c", "limit": 10},
            protocol.History(5, "c", limit=10),
        ),
        ({"id": 6, "op": "presence", "channel": "c"}, protocol.Presence(6, "c")),
    ],
)
def test_commands(fmt: Format, document: dict[str, Any], expected: protocol.Command) -> None:
    assert protocol.decode_command(dumps(document, fmt), fmt) == expected
    assert (
        protocol.decode_command(
            protocol.encode_command(expected, fmt).decode()
            if fmt is Format.JSON
            else protocol.encode_command(expected, fmt),
            fmt,
        )
        == expected
    )


BAD_COMMANDS = [
    ([1, 2], ProtocolError, "must be an object"),
    ({"id": 1}, ProtocolError, "'op' is required"),
    ({"op": "fly"}, UnknownOp, "unknown op 'fly'"),
    ({"op": 3}, UnknownOp, "unknown op"),
    ({"op": "ping", "id": True}, ProtocolError, "field 'id'"),
    ({"op": "ping", "id": -1}, ProtocolError, "field 'id'"),
    ({"op": "ping", "id": 2**53}, ProtocolError, "field 'id'"),
    ({"op": "ping", "id": ""}, ProtocolError, "field 'id'"),
    ({"op": "ping", "id": "x" * 65}, ProtocolError, "field 'id'"),
    ({"op": "ping", "id": [1]}, ProtocolError, "field 'id'"),
    ({"op": "ping", "extra": 1}, ProtocolError, "unknown field(s) for ping: extra"),
    ({"op": "subscribe"}, ProtocolError, "'channel' is required"),
    ({"op": "subscribe", "channel": 5}, InvalidChannel, "must be a string"),
    ({"op": "subscribe", "channel": "c", "since": 5}, ProtocolError, "'since'"),
    ({"op": "subscribe", "channel": "c", "since": {"epoch": "e"}}, ProtocolError, "'since'"),
    (
        {"op": "subscribe", "channel": "c", "since": {"epoch": 1, "offset": 1}},
        ProtocolError,
        "since.epoch",
    ),
    (
        {"op": "subscribe", "channel": "c", "since": {"epoch": "e", "offset": -1}},
        ProtocolError,
        "since.offset",
    ),
    (
        {"op": "subscribe", "channel": "c", "since": {"epoch": "e", "offset": True}},
        ProtocolError,
        "since.offset",
    ),
    ({"op": "publish", "channel": "c"}, ProtocolError, "exactly one of 'data'"),
    ({"op": "publish", "channel": "c", "data": 1, "text": "t"}, ProtocolError, "exactly one"),
    ({"op": "publish", "channel": "c", "text": 1}, ProtocolError, "'text' must be a string"),
    ({"op": "publish", "channel": "c", "data": 1, "event": 2}, ProtocolError, "'event'"),
    ({"op": "publish", "channel": "c", "data": 1, "key": 2}, ProtocolError, "'key'"),
    ({"op": "history", "channel": "c", "limit": 10001}, ProtocolError, "'limit'"),
    ({"op": "history", "channel": "c", "limit": "5"}, ProtocolError, "'limit'"),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("document", "error", "message"), BAD_COMMANDS)
def test_bad_commands_are_refused_with_a_typed_error(
    fmt: Format, document: Any, error: type[TidingsError], message: str
) -> None:
    with pytest.raises(error) as caught:
        protocol.decode_command(dumps(document, fmt), fmt)
    assert message in str(caught.value)
    assert caught.value.code in {"bad_request", "unknown_op", "invalid_channel"}


def test_request_id_survives_a_bad_command() -> None:
    assert protocol.request_id({"id": 4, "op": "fly"}) == 4
    assert protocol.request_id({"id": "r1"}) == "r1"
    assert protocol.request_id({"id": True}) is None
    assert protocol.request_id([1]) is None


@pytest.mark.parametrize(
    "data",
    [b"raw", [b"raw"], {"k": msgpack.ExtType(5, b"x")}, math.nan, [math.inf], {1: "int key"}],
)
def test_msgpack_values_json_cannot_carry_are_refused(data: Any) -> None:
    document = {"op": "publish", "channel": "c", "data": data}
    packed = msgpack.packb(document, strict_types=False, use_bin_type=True)
    with pytest.raises(ProtocolError):
        protocol.decode_command(packed, Format.MSGPACK)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    with pytest.raises(ProtocolError):
        protocol.load("[" * 100_000 + "]" * 100_000, Format.JSON)
    with pytest.raises(ProtocolError):
        protocol.load(b"\x91" * 100_000 + b"\xc0", Format.MSGPACK)


# -- properties --------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
request_ids = st.none() | st.integers(0, 2**53 - 1) | st.text(min_size=1, max_size=64)
channels = st.text(alphabet="abc:-_", min_size=1, max_size=10)
positions = st.builds(Position, st.text(min_size=1, max_size=64), st.integers(0, 2**53 - 1))
commands = st.one_of(
    st.builds(protocol.Ping, request_ids),
    st.builds(protocol.Connect, request_ids, json_values),
    st.builds(protocol.Subscribe, request_ids, channels, st.none() | positions),
    st.builds(protocol.Unsubscribe, request_ids, channels),
    st.builds(
        protocol.Publish,
        request_ids,
        channels,
        json_values,
        st.none(),
        st.text(min_size=1, max_size=10),
        st.none() | st.text(min_size=1, max_size=10),
    ),
    st.builds(protocol.Publish, request_ids, channels, st.none(), st.text(max_size=30)),
    st.builds(
        protocol.History,
        request_ids,
        channels,
        st.none() | positions,
        st.none() | st.integers(0, 10000),
    ),
    st.builds(protocol.Presence, request_ids, channels),
)


@settings(max_examples=300)
@given(commands, st.sampled_from(FORMATS))
def test_every_command_round_trips(command: protocol.Command, fmt: Format) -> None:
    encoded = protocol.encode_command(command, fmt)
    data = encoded.decode() if fmt is Format.JSON else encoded
    assert protocol.decode_command(data, fmt) == command


def check_decoder(data: str | bytes, fmt: Format) -> None:
    """The decoder's whole contract for garbage: a command, or a TidingsError."""
    codes = {"bad_request", "invalid_json", "invalid_msgpack", "unknown_op", "invalid_channel"}
    error: TidingsError | None = None
    try:
        command = protocol.decode_command(data, fmt)
    except TidingsError as exc:
        error = exc
    if error is not None:
        assert error.code in codes
    else:
        assert command.id is None or protocol.request_id({"id": command.id}) == command.id


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_msgpack_decoder(data: bytes) -> None:
    check_decoder(data, Format.MSGPACK)


@settings(max_examples=500)
@given(st.text(max_size=200))
def test_random_text_never_crashes_the_json_decoder(data: str) -> None:
    check_decoder(data, Format.JSON)


documents = st.dictionaries(
    st.sampled_from(
        ["id", "op", "channel", "since", "data", "text", "event", "key", "limit", "info", "x"]
    ),
    json_values
    | st.sampled_from(["subscribe", "publish", "history", "ping", "connect", "presence"])
    | st.fixed_dictionaries({"epoch": json_values, "offset": json_values}),
    max_size=6,
)


@settings(max_examples=500)
@given(documents, st.sampled_from(FORMATS))
def test_random_documents_never_crash_the_decoder(document: dict[str, Any], fmt: Format) -> None:
    check_decoder(dumps(document, fmt), fmt)


@given(st.integers(0, 2**16), st.booleans())
def test_frame_header_matches_rfc6455(length: int, binary: bool) -> None:
    data = protocol.frame(b"\0" * length, binary=binary)
    assert data[0] == (0x82 if binary else 0x81)
    if length < 126:
        assert data[1] == length
    elif length < 65536:
        assert data[1] == 126
        assert struct.unpack("!H", data[2:4])[0] == length
    else:
        assert data[1] == 127
        assert struct.unpack("!Q", data[2:10])[0] == length


def test_json_pushes_are_right_sized() -> None:
    # orjson returns its output in a 4 KiB buffer; a push's encoding is kept
    # with its event in history, so it must cost about its length.
    push = protocol.Push("room", "message", protocol.Raw(b'{"n": 1}', False), "e", 1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [protocol.encode_push(push, Format.JSON) for _ in range(1000)]
        per_push = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_push < 200


def test_refresh_round_trips_and_hides_its_token() -> None:
    for fmt in protocol.Format:
        data: str | bytes = protocol.encode_command(protocol.Refresh(3, "a.b.c"), fmt)
        if fmt is Format.JSON:
            data = data.decode()
        command = protocol.decode_command(data, fmt)
        assert command == protocol.Refresh(3, "a.b.c")
    assert "a.b.c" not in repr(command)
    for bad in ({"op": "refresh"}, {"op": "refresh", "token": ""}, {"op": "refresh", "token": 1}):
        with pytest.raises(ProtocolError):
            protocol.parse_command(bad)
