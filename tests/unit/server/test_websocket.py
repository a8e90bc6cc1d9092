"""server/websocket.py driven with ASGI fakes: both write paths, ops, errors, flow, closes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.env import TIMEOUT, eventually
from tests.support.namespaces import restricted_namespaces
from tests.support.ws import decode, encode, parse_frames
from tidings.hub import Hub, NamespaceOptions, Namespaces
from tidings.server.websocket import (
    WS_JSON,
    WS_JSON_FRAME,
    WS_MSGPACK_FRAME,
    WebSocketEndpoint,
)
from tidings.server.writer import FAST_WRITE, WriteListener
from tidings.wire.protocol import Format

PATHS = [pytest.param(True, id="fast"), pytest.param(False, id="asgi")]


class FakeSocket:
    """One client connection: ASGI receive/send, and the tidings.write extension when fast."""

    def __init__(
        self,
        *,
        fast: bool,
        subprotocols: tuple[str, ...] = ("tidings.v1.json",),
        query: bytes = b"",
    ) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.inbox.put_nowait({"type": "websocket.connect"})
        self.sent: list[dict[str, Any]] = []
        self.written: list[bytes] = []
        self.changed = asyncio.Event()
        self.closed_with: tuple[int, str] | None = None
        self.listener: WriteListener | None = None
        self.receiver: Callable[[str | bytes], object] | None = None
        self.reading_paused = False
        self.paused = False
        self.unblocked = asyncio.Event()
        self.unblocked.set()
        extensions: dict[str, Any] = {"websocket.http.response": {}}
        if fast:
            extensions[FAST_WRITE] = self
        self.scope = {
            "type": "websocket",
            "path": "/ws",
            "query_string": query,
            "headers": [],
            "subprotocols": list(subprotocols),
            "extensions": extensions,
        }

    # -- ASGI, as the app sees it --
    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        self._changed()
        if message["type"] == "websocket.close":
            self.closed_with = (message.get("code", 1000), message.get("reason") or "")
        await self.unblocked.wait()

    # -- the tidings.write extension --
    def attach(self, listener: WriteListener) -> Callable[[bytes], object]:
        self.listener = listener
        return self.write

    def detach(self) -> None:
        self.listener = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self._changed()

    def abort(self) -> None:
        raise AssertionError("the WebSocket transport closes with a code, it does not abort")

    def close(self, code: int, reason: str = "") -> None:
        if self.closed_with is None:
            self.closed_with = (code, reason)
            self.listener = None
            self.inbox.put_nowait({"type": "websocket.disconnect", "code": code})
            self._changed()

    def hand_off(self, receiver: Callable[[str | bytes], object]) -> None:
        """Like the protocol: queued messages first, then every message to ``receiver``."""
        self.receiver = receiver
        while not self.inbox.empty():
            message = self.inbox.get_nowait()
            if message["type"] == "websocket.receive":
                text = message.get("text")
                receiver(text if text is not None else message.get("bytes") or b"")

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    # -- the client side --
    def _changed(self) -> None:
        self.changed.set()

    def send_frame(self, data: str | bytes) -> None:
        if self.receiver is not None:
            if self.closed_with is None:
                self.receiver(data)
            return
        key = "text" if isinstance(data, str) else "bytes"
        self.inbox.put_nowait({"type": "websocket.receive", key: data})

    def send_command(self, document: Any, fmt: Format = Format.JSON) -> None:
        self.send_frame(encode(document, fmt))

    def disconnect(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1001})
        if self.listener is not None:
            self.listener.connection_lost()

    def pause(self) -> None:
        """The transport is full (fast path) or send() blocks (ASGI path)."""
        self.paused = True
        self.unblocked.clear()
        if self.listener is not None:
            self.listener.pause_writing()

    def resume(self) -> None:
        self.paused = False
        self.unblocked.set()
        if self.listener is not None:
            self.listener.resume_writing()

    def frames(self) -> list[str | bytes]:
        """Every data frame the client got, in order, from either path."""
        out: list[str | bytes] = []
        for message in self.sent:
            if message["type"] == "websocket.send":
                out.append(message["text"] if message.get("text") is not None else message["bytes"])
        for frame in parse_frames(b"".join(self.written)):
            data = bytes(frame.data)
            out.append(data if frame.opcode.name == "BINARY" else data.decode())
        return out

    def messages(self, fmt: Format = Format.JSON) -> list[dict[str, Any]]:
        return [message for frame in self.frames() for message in decode(frame, fmt)]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def reply(self, request_id: Any, fmt: Format = Format.JSON) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for message in self.messages(fmt):
                if message.get("id") == request_id and ("ok" in message or "error" in message):
                    return message
            return None

        await self.wait_for(lambda: find() is not None)
        found = find()
        assert found is not None
        return found

    def pushes(self, fmt: Format = Format.JSON) -> list[dict[str, Any]]:
        return [message for message in self.messages(fmt) if "id" not in message]


@contextlib.asynccontextmanager
async def serve(
    endpoint: WebSocketEndpoint, socket: FakeSocket
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(endpoint(socket.scope, socket.receive, socket.send))
    try:
        yield task
    finally:
        if not task.done() or socket.listener is not None:
            socket.resume()
            socket.disconnect()
        await asyncio.wait_for(task, TIMEOUT)


async def closed(socket: FakeSocket, task: asyncio.Task[None]) -> tuple[int, str]:
    await socket.wait_for(lambda: socket.closed_with is not None)
    socket.resume()
    await asyncio.wait_for(task, TIMEOUT)
    assert socket.closed_with is not None
    return socket.closed_with


# -- ops ---------------------------------------------------------------------------


@pytest.mark.parametrize("fast", PATHS)
@pytest.mark.parametrize("fmt", [Format.JSON, Format.MSGPACK])
async def test_subscribe_publish_receive(fast: bool, fmt: Format) -> None:
    async with Hub() as hub:
        socket = FakeSocket(fast=fast, subprotocols=(fmt.subprotocol,))
        async with serve(WebSocketEndpoint(hub), socket):
            await socket.wait_for(lambda: bool(socket.sent))
            accept = socket.sent[0]
            assert accept == {"type": "websocket.accept", "subprotocol": fmt.subprotocol}
            socket.send_command({"id": 1, "op": "connect", "info": {"name": "ada"}}, fmt)
            client = (await socket.reply(1, fmt))["result"]["client"]
            socket.send_command({"id": 2, "op": "subscribe", "channel": "room"}, fmt)
            subscribed = (await socket.reply(2, fmt))["result"]
            assert subscribed["offset"] == 0
            assert subscribed["recovered"] is True
            await hub.publish("room", {"n": 1}, event="note")
            socket.send_command(
                {"id": 3, "op": "publish", "channel": "room", "text": "hi ☃", "key": "k"}, fmt
            )
            published = (await socket.reply(3, fmt))["result"]
            assert (published["channel"], published["offset"]) == ("room", 2)
            await socket.wait_for(lambda: len(socket.pushes(fmt)) == 2)
            first, second = socket.pushes(fmt)
            assert first == {
                "channel": "room",
                "epoch": subscribed["epoch"],
                "offset": 1,
                "event": "note",
                "data": {"n": 1},
            }
            assert (second["data"], second["text"], second["offset"]) == ("hi ☃", True, 2)
            socket.send_command({"id": 4, "op": "presence", "channel": "room"}, fmt)
            presence = (await socket.reply(4, fmt))["result"]
            assert presence["clients"] == [
                {"client": client, "user": None, "info": {"name": "ada"}}
            ]
            socket.send_command({"id": 5, "op": "history", "channel": "room", "limit": 1}, fmt)
            history = (await socket.reply(5, fmt))["result"]
            assert [event["data"] for event in history["events"]] == ["hi ☃"]
            socket.send_command({"id": 6, "op": "unsubscribe", "channel": "room"}, fmt)
            assert (await socket.reply(6, fmt))["result"] == {"channel": "room"}
            socket.send_command({"id": 7, "op": "ping"}, fmt)
            assert (await socket.reply(7, fmt))["result"] == {}
        assert hub.stats().subscriptions == 0


@pytest.mark.parametrize("fast", PATHS)
async def test_subscribe_reply_comes_before_the_replay(fast: bool) -> None:
    async with Hub() as hub:
        for n in range(3):
            position = await hub.publish("a", n)
        socket = FakeSocket(fast=fast)
        async with serve(WebSocketEndpoint(hub), socket):
            since = {"epoch": position.epoch, "offset": 0}
            socket.send_command({"id": 1, "op": "subscribe", "channel": "a", "since": since})
            await socket.wait_for(lambda: len(socket.messages()) == 4)
            reply, *replay = socket.messages()
            assert reply["result"] == {
                "channel": "a",
                "epoch": position.epoch,
                "offset": 3,
                "recovered": True,
                "replayed": 3,
            }
            assert [push["offset"] for push in replay] == [1, 2, 3]


@pytest.mark.parametrize("fast", PATHS)
async def test_a_lost_position_is_reported_in_the_reply(fast: bool) -> None:
    async with Hub() as hub:
        position = await hub.publish("a", 1)
        socket = FakeSocket(fast=fast)
        async with serve(WebSocketEndpoint(hub), socket):
            since = {"epoch": "gone", "offset": 5}
            socket.send_command({"id": 1, "op": "subscribe", "channel": "a", "since": since})
            result = (await socket.reply(1))["result"]
            assert result["recovered"] is False
            assert result["reset"] == "epoch"
            assert (result["epoch"], result["offset"]) == tuple(position)
            await hub.publish("a", 2)
            await socket.wait_for(lambda: bool(socket.pushes()))
            assert [push["offset"] for push in socket.pushes()] == [2]  # no reset push
            # Without an id there is no reply to carry it, so a reset push says so.
            socket.send_command({"op": "subscribe", "channel": "b", "since": since})
            await socket.wait_for(lambda: len(socket.pushes()) == 2)
            assert socket.pushes()[1]["event"] == "reset"


async def test_fast_path_backlog_goes_out_as_one_batch_frame() -> None:
    async with Hub() as hub:
        socket = FakeSocket(fast=True)
        async with serve(WebSocketEndpoint(hub), socket):
            socket.send_command({"id": 1, "op": "subscribe", "channel": "a"})
            await socket.reply(1)
            await hub.publish("a", 0)
            event = socket.written[-1]
            socket.pause()
            for n in range(1, 6):
                await hub.publish("a", n)
            writes = len(socket.written)
            socket.resume()
            assert len(socket.written) == writes + 1
            (frame,) = parse_frames(socket.written[-1])
            assert [push["data"] for push in orjson.loads(frame.data)] == [1, 2, 3, 4, 5]
            # A push's frame is encoded once and shared: the event carries it.
            (stored,) = (await hub.history("a", limit=6)).events[:1]
            assert WS_JSON_FRAME(stored) is event


async def test_asgi_path_backlog_goes_out_as_one_batch_message() -> None:
    async with Hub() as hub:
        socket = FakeSocket(fast=False)
        async with serve(WebSocketEndpoint(hub), socket):
            socket.send_command({"id": 1, "op": "subscribe", "channel": "a"})
            await socket.reply(1)
            socket.pause()
            await hub.publish("a", 0)  # its send blocks
            await socket.wait_for(lambda: len(socket.pushes()) == 1)
            for n in range(1, 6):
                await hub.publish("a", n)
            socket.resume()
            await socket.wait_for(lambda: len(socket.pushes()) == 6)
            assert socket.sent[-1]["text"].startswith("[")


async def test_batches_stay_within_max_frame_bytes() -> None:
    async with Hub() as hub:
        socket = FakeSocket(fast=True)
        async with serve(WebSocketEndpoint(hub, max_frame_bytes=300), socket):
            socket.send_command({"id": 1, "op": "subscribe", "channel": "a"})
            await socket.reply(1)
            socket.pause()
            for n in range(20):
                await hub.publish("a", n)
            socket.resume()
            frames = parse_frames(socket.written[-1])
            assert len(frames) > 1
            assert all(len(frame.data) <= 300 for frame in frames)
            assert [push["data"] for push in socket.pushes()] == list(range(20))


async def test_commands_wait_while_the_transport_is_paused() -> None:
    async with Hub() as hub:
        socket = FakeSocket(fast=True)
        async with serve(WebSocketEndpoint(hub), socket):
            socket.send_command({"id": 1, "op": "ping"})
            await socket.reply(1)
            socket.pause()
            socket.send_command({"id": 2, "op": "ping"})
            for _ in range(20):
                await asyncio.sleep(0)
            assert len(socket.messages()) == 1  # not read while replies cannot go out
            socket.resume()
            await socket.reply(2)


@pytest.mark.parametrize("fast", PATHS)
async def test_join_and_leave_are_pushed_when_the_namespace_enables_them(fast: bool) -> None:
    namespaces = Namespaces(by_name={"chat": NamespaceOptions(join_leave=True)})
    async with Hub(namespaces=namespaces) as hub:
        watcher, member = FakeSocket(fast=fast), FakeSocket(fast=fast)
        endpoint = WebSocketEndpoint(hub)
        async with serve(endpoint, watcher):
            watcher.send_command({"id": 1, "op": "subscribe", "channel": "chat:a"})
            await watcher.reply(1)
            async with serve(endpoint, member):
                member.send_command({"id": 1, "op": "connect", "info": "bob"})
                client = (await member.reply(1))["result"]["client"]
                member.send_command({"id": 2, "op": "subscribe", "channel": "chat:a"})
                await member.reply(2)
                await watcher.wait_for(lambda: len(watcher.pushes()) == 2)
            await watcher.wait_for(lambda: len(watcher.pushes()) == 3)
            own_join, join, leave = watcher.pushes()
            assert own_join["event"] == "join"
            assert join == {
                "channel": "chat:a",
                "event": "join",
                "data": {"client": client, "user": None, "info": "bob"},
            }
            assert (leave["event"], leave["data"]["client"]) == ("leave", client)
            assert "offset" not in leave


# -- bad input ---------------------------------------------------------------------------

BAD_FRAMES = [
    ("{nope", None, "invalid_json"),
    (b"\x00binary", None, "bad_request"),
    ('{"id": 1}', 1, "bad_request"),
    ('{"id": 2, "op": "dance"}', 2, "unknown_op"),
    ('{"id": 3, "op": "subscribe"}', 3, "bad_request"),
    ('{"id": 4, "op": "subscribe", "channel": 7}', 4, "invalid_channel"),
    ('{"id": 5, "op": "subscribe", "channel": "a b"}', 5, "invalid_channel"),
    ('{"id": 6, "op": "publish", "channel": "ro:x", "data": 1}', 6, "permission_denied"),
    ('{"id": 7, "op": "subscribe", "channel": "hidden:x"}', 7, "permission_denied"),
    ('{"id": 8, "op": "presence", "channel": "quiet:x"}', 8, "permission_denied"),
    ('{"id": 9, "op": "unsubscribe", "channel": "never"}', 9, "not_subscribed"),
    (
        '{"id": 10, "op": "publish", "channel": "a", "data": 1, "event": "join"}',
        10,
        "invalid_publication",
    ),
    ('{"id": 11, "op": "connect"}', 11, "bad_request"),  # not the first command
    ('{"id": true, "op": "ping"}', None, "bad_request"),
    ("[1, 2]", None, "bad_request"),
]


@pytest.mark.parametrize("fast", PATHS)
async def test_bad_input_gets_a_typed_error_reply_and_changes_nothing(fast: bool) -> None:
    async with Hub(namespaces=restricted_namespaces()) as hub:
        socket = FakeSocket(fast=fast)
        async with serve(WebSocketEndpoint(hub), socket):
            socket.send_command({"id": 0, "op": "ping"})
            await socket.reply(0)
            for n, (data, request_id, code) in enumerate(BAD_FRAMES, start=1):
                socket.send_frame(data)
                await socket.wait_for(lambda n=n: len(socket.messages()) == n + 1)  # type: ignore[misc]
                error = socket.messages()[-1]
                assert error["id"] == request_id, data
                assert error["error"]["code"] == code, (data, error)
                assert error["error"]["message"]
            socket.send_command({"id": 99, "op": "subscribe", "channel": "a"})
            assert (await socket.reply(99))["ok"] is True
            assert socket.closed_with is None
        assert all(summary.position.offset == 0 for summary in await hub.channels())
        assert hub.stats().published == 0


@pytest.mark.parametrize("fast", PATHS)
async def test_an_oversized_message_closes_with_1009(fast: bool) -> None:
    async with Hub() as hub:
        socket = FakeSocket(fast=fast)
        async with serve(WebSocketEndpoint(hub, max_frame_bytes=100), socket) as task:
            socket.send_command({"id": 1, "op": "publish", "channel": "a", "text": "x" * 100})
            code, reason = await closed(socket, task)
            assert code == 1009
            assert "limit of 100 bytes" in reason
        assert hub.stats().subscriptions == 0


@pytest.mark.parametrize("fast", PATHS)
async def test_a_flood_is_refused_then_closed_with_4029(fast: bool) -> None:
    async with Hub() as hub:
        socket = FakeSocket(fast=fast)
        async with serve(WebSocketEndpoint(hub, rate_limit=5), socket) as task:
            for n in range(6):
                socket.send_command({"id": n, "op": "ping"})
            refused = await socket.reply(5)
            assert refused["error"]["code"] == "rate_limited"
            for n in range(6, 40):
                socket.send_command({"id": n, "op": "ping"})
            assert await closed(socket, task) == (4029, "rate limit exceeded")


@pytest.mark.parametrize("fast", PATHS)
async def test_slow_consumer_is_closed_with_4008(fast: bool) -> None:
    async with Hub(outbox_max_bytes=2000) as hub:
        socket = FakeSocket(fast=fast)
        async with serve(WebSocketEndpoint(hub), socket) as task:
            socket.send_command({"id": 1, "op": "subscribe", "channel": "a"})
            await socket.reply(1)
            socket.pause()
            for n in range(40):
                await hub.publish("a", n)
            assert await closed(socket, task) == (4008, "slow consumer")
        assert hub.stats().slow_consumers == 1
        assert hub.stats().subscriptions == 0


@pytest.mark.parametrize("fast", PATHS)
async def test_hub_shutdown_closes_with_4001(fast: bool) -> None:
    hub = Hub()
    await hub.start()
    socket = FakeSocket(fast=fast)
    async with serve(WebSocketEndpoint(hub), socket) as task:
        socket.send_command({"id": 1, "op": "subscribe", "channel": "a"})
        await socket.reply(1)
        await hub.aclose()
        assert await closed(socket, task) == (4001, "server shutdown")


async def test_asgi_path_treats_a_stalled_send_as_a_dead_peer() -> None:
    async with Hub() as hub:
        socket = FakeSocket(fast=False)
        endpoint = WebSocketEndpoint(hub, ping_interval=0.05, pong_timeout=0.05)
        async with serve(endpoint, socket) as task:
            socket.send_command({"id": 1, "op": "subscribe", "channel": "a"})
            await socket.reply(1)
            socket.pause()
            await hub.publish("a", 1)  # never leaves
            await socket.wait_for(lambda: socket.closed_with is not None)
            assert socket.closed_with == (4002, "heartbeat timeout")
            assert hub.stats().subscriptions == 0
            socket.resume()
            await asyncio.wait_for(task, TIMEOUT)


@pytest.mark.parametrize("fast", PATHS)
async def test_peer_leaving_releases_everything(fast: bool) -> None:
    async with Hub() as hub:
        socket = FakeSocket(fast=fast)
        async with serve(WebSocketEndpoint(hub), socket) as task:
            socket.send_command({"id": 1, "op": "subscribe", "channel": "a"})
            socket.send_command({"id": 2, "op": "presence", "channel": "a"})
            assert len((await socket.reply(2))["result"]["clients"]) == 1
            socket.disconnect()
            await asyncio.wait_for(task, TIMEOUT)
            assert socket.closed_with is None  # nothing is sent to a peer that left
        assert hub.stats().subscriptions == 0
        await eventually(lambda: released(hub, "a"))  # the presence task removes it


async def released(hub: Hub, channel: str) -> bool:
    return not await hub.presence(channel)


# -- the URL: channels, raw mode, refusals ---------------------------------------------


@pytest.mark.parametrize("fast", PATHS)
async def test_raw_mode_sends_event_data_exactly(fast: bool) -> None:
    async with Hub() as hub:
        socket = FakeSocket(fast=fast, subprotocols=(), query=b"channel=a&channel=b")
        async with serve(WebSocketEndpoint(hub), socket) as task:
            await socket.wait_for(lambda: hub.subscriber_count("b") == 1)
            assert socket.sent[0] == {"type": "websocket.accept"}
            await hub.publish("a", {"json": [1]})
            await hub.publish("b", text="plain ☃")
            await socket.wait_for(lambda: len(socket.frames()) == 2)
            assert socket.frames() == ['{"json":[1]}', "plain ☃"]
            assert await hub.presence("a") == []  # raw connections are not members
            socket.send_frame("hello?")
            assert await closed(socket, task) == (4500, "raw mode is receive-only")


@pytest.mark.parametrize("fast", PATHS)
async def test_url_channels_with_a_subprotocol_get_pushes_and_resume(fast: bool) -> None:
    async with Hub() as hub:
        for n in range(3):
            position = await hub.publish("a", n)
        query = f"channel=a&last_event_id=a:{position.epoch}:1".encode()
        socket = FakeSocket(fast=fast, subprotocols=("tidings.v1.msgpack",), query=query)
        async with serve(WebSocketEndpoint(hub), socket):
            await socket.wait_for(lambda: len(socket.pushes(Format.MSGPACK)) == 2)
            assert [push["data"] for push in socket.pushes(Format.MSGPACK)] == [1, 2]


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        (b"channel=a%20b", 400, "invalid_channel"),
        (b"channel=hidden:x", 403, "permission_denied"),
        (b"channel=a&last_event_id=nonsense", 400, "invalid_cursor"),
        (b"&".join(b"channel=c%d" % n for n in range(65)), 400, "bad_request"),
    ],
)
async def test_a_bad_url_is_refused_with_an_http_error(
    query: bytes, status: int, code: str
) -> None:
    namespaces = Namespaces(by_name={"hidden": NamespaceOptions(subscribe=False)})
    async with Hub(namespaces=namespaces) as hub:
        socket = FakeSocket(fast=False, query=query)
        await asyncio.wait_for(
            WebSocketEndpoint(hub)(socket.scope, socket.receive, socket.send), TIMEOUT
        )
        start, body = socket.sent
        assert (start["type"], start["status"]) == ("websocket.http.response.start", status)
        assert orjson.loads(body["body"])["error"]["code"] == code
        assert hub.stats().subscriptions == 0


def test_push_encodings_are_cached_per_format() -> None:
    from tidings.hub import Event

    event = Event("a", "e", 1, b"[1]")
    assert WS_JSON(event) is WS_JSON(event)
    frame = WS_MSGPACK_FRAME(event)
    assert msgpack.unpackb(parse_frames(frame)[0].data)["data"] == [1]
    assert WS_MSGPACK_FRAME(event) is frame


# -- properties: random frames at the endpoint ----------------------------------------

json_leaves = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10)
random_documents = st.dictionaries(
    st.sampled_from(["id", "op", "channel", "since", "data", "text", "limit", "info", "zz"]),
    json_leaves
    | st.sampled_from(
        ["subscribe", "unsubscribe", "publish", "history", "presence", "ping", "connect"]
    )
    | st.fixed_dictionaries({"epoch": json_leaves, "offset": json_leaves}),
    max_size=5,
)
random_frames = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    random_documents.map(lambda document: orjson.dumps(document).decode()),
)


async def fuzz(frames: list[str | bytes], fast: bool) -> None:
    async with Hub() as hub:
        socket = FakeSocket(fast=fast)
        async with serve(WebSocketEndpoint(hub, rate_limit=10_000), socket) as task:
            for n, data in enumerate(frames):
                before = len(socket.messages())
                socket.send_frame(data)
                socket.send_command({"id": f"sentinel-{n}", "op": "ping"})
                await socket.reply(f"sentinel-{n}")
                answers = [m for m in socket.messages()[before:] if m.get("id") != f"sentinel-{n}"]
                replies = [m for m in answers if "ok" in m or "error" in m]
                assert len(replies) <= 1, (data, replies)
                try:
                    document = orjson.loads(data) if isinstance(data, str) else None
                except orjson.JSONDecodeError:
                    document = None
                if not isinstance(document, dict) or not isinstance(document.get("op"), str):
                    # Not a well-formed command: never silent.
                    assert len(replies) == 1, (data, answers)
                    assert "error" in replies[0], (data, answers)
                assert socket.closed_with is None  # never a close, never a crash
                if not fast:
                    assert not task.done()  # (a handed-off fast connection has no task)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(random_frames, min_size=1, max_size=8), st.booleans())
def test_random_frames_never_crash_or_silence_the_endpoint(
    frames: list[str | bytes], fast: bool
) -> None:
    asyncio.run(fuzz(frames, fast))


def test_close_reasons_fit_a_close_frame() -> None:
    from tidings.server._ws_connection import close_reason

    assert close_reason("short") == "short"
    cut = close_reason("é" * 100)
    assert len(cut.encode()) <= 123
    assert cut.endswith("...")
