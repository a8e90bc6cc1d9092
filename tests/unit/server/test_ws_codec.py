"""server/_ws_codec.py: the WebSocket encodings of hub items, per kind of connection."""

from __future__ import annotations

import msgpack
import orjson

from tests.support.ws import decode, parse_frames
from tidings.hub import Event, Hub, Item, Reset
from tidings.server._ws_codec import WS_JSON, WS_JSON_FRAME, WS_RAW_FRAME, Codec
from tidings.types import Position
from tidings.wire.protocol import ErrorReply, Format, Reply


async def published(count: int) -> list[Event]:
    async with Hub() as hub, hub.subscribe("c") as subscription:
        await hub.publish("c", {"n": 0})
        for n in range(1, count):
            await hub.publish("c", text=f"line {n}")
        items = subscription.take()
    assert all(isinstance(item, Event) for item in items)
    return [item for item in items if isinstance(item, Event)]


async def test_a_push_carries_its_channel_position_and_data() -> None:
    (event,) = await published(1)
    assert orjson.loads(WS_JSON(event)) == {
        "channel": "c",
        "epoch": event.epoch,
        "offset": 1,
        "event": "message",
        "data": {"n": 0},
    }
    (frame,) = parse_frames(WS_JSON_FRAME(event))
    assert frame.data == WS_JSON(event)


async def test_text_data_is_marked_and_resets_carry_their_reason() -> None:
    events = await published(2)
    assert orjson.loads(WS_JSON(events[1]))["text"] is True
    reset = Reset("c", Position("e", 7), "window")
    assert orjson.loads(WS_JSON(reset)) == {
        "channel": "c",
        "epoch": "e",
        "offset": 7,
        "event": "reset",
        "data": {"reason": "window"},
    }


async def test_raw_mode_carries_event_data_only() -> None:
    events = await published(2)
    reset = Reset("c", Position("e", 7), "window")
    codec = Codec(None, max_frame_bytes=1024)
    assert (codec.raw, codec.binary) == (True, False)
    items: list[Item] = [events[0], reset, events[1]]
    assert codec.messages(items) == [b'{"n":0}', b"line 1"]
    assert [frame.data for frame in parse_frames(codec.frames(items))] == [b'{"n":0}', b"line 1"]
    assert WS_RAW_FRAME(reset) == b""


async def test_json_batches_within_the_frame_limit() -> None:
    events = await published(20)
    codec = Codec(Format.JSON, max_frame_bytes=300)
    messages = codec.messages(list(events))
    assert 1 < len(messages) < len(events)
    assert all(len(message) <= 300 for message in messages)
    pushes = [push for message in messages for push in decode(message)]
    assert [push["offset"] for push in pushes] == list(range(1, 21))
    frames = parse_frames(codec.frames(list(events)))
    assert [frame.data for frame in frames] == messages


async def test_msgpack_connections_get_binary_pushes_and_replies() -> None:
    events = await published(1)
    codec = Codec(Format.MSGPACK, max_frame_bytes=1024)
    assert (codec.binary, codec.raw) == (True, False)
    (message,) = codec.messages(list(events))
    assert msgpack.unpackb(message)["data"] == {"n": 0}
    assert msgpack.unpackb(codec.reply(Reply(1, {"ok": 1}))) == {
        "id": 1,
        "ok": True,
        "result": {"ok": 1},
    }
    raw = Codec(None, max_frame_bytes=1024)
    assert orjson.loads(raw.reply(ErrorReply(2, "bad_request", "no"))) == {
        "id": 2,
        "error": {"code": "bad_request", "message": "no"},
    }
