"""tidings.client.Socket against real servers, clean and faulty."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from tests.support.backlog import MAX_BACKLOG_BYTES, publish_until
from tests.support.env import TIMEOUT
from tests.support.proxy import FaultProxy
from tests.support.server import ServerProcess
from tests.support.socket_client import RecordingBackoff, States, history, http, no_leaks, take
from tidings.client import (
    Backoff,
    ConnectionState,
    Member,
    Notice,
    Reset,
    Socket,
    SocketEvent,
)
from tidings.errors import (
    AlreadySubscribed,
    ConnectionClosed,
    ProtocolError,
    PublishRejected,
    QueueFull,
    ReconnectExhausted,
    RequestRejected,
    RequestTimeout,
    StreamRejected,
)
from tidings.hub import Hub, NamespaceOptions, Namespaces
from tidings.server import create_app
from tidings.settings import Settings
from tidings.testing import free_port, run_server
from tidings.types import Position
from tidings.wire.codes import CloseCode

FORMATS = ["json", "msgpack"]


# -- the protocol, end to end ------------------------------------------------------------------


async def test_publish_type_is_a_deprecated_name_of_event() -> None:
    settings = Settings(log_level="warning")
    async with run_server(settings=settings) as url, no_leaks(), Socket(url) as socket:
        with pytest.warns(DeprecationWarning, match=r"publish\(type=\.\.\.\) is deprecated"):
            position = await socket.publish("notes", text="old", type="note")
        page = await socket.history("notes")
    assert [(e.offset, e.event, e.data) for e in page.events] == [(position.offset, "note", "old")]


async def test_a_server_that_is_down_stops_a_socket_with_a_tidings_error() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"  # nobody listens there
    socket = Socket(url, backoff=Backoff(base=0.01, cap=0.01, max_attempts=2))
    with pytest.raises(ReconnectExhausted) as caught:
        await socket.__aenter__()
    assert (caught.value.code, caught.value.attempts) == ("reconnect_exhausted", 2)
    assert isinstance(caught.value.last_error, OSError)


@pytest.mark.parametrize("fmt", FORMATS)
async def test_every_operation_in_both_formats(fmt: Any) -> None:
    settings = Settings(
        log_level="warning",
        namespaces={"chat": {"join_leave": True}, "feed": {"publish": False}},
    )
    async with run_server(settings=settings) as url, no_leaks():
        async with Socket(url, format=fmt, info={"name": "ada"}) as socket:
            assert socket.state is ConnectionState.OPEN
            assert socket.client_id
            room = await socket.subscribe("chat:room")
            first = await socket.publish("chat:room", {"text": "hi", "n": [1, 2.5, None]})
            second = await socket.publish("chat:room", text="plain", event="note", key="k-1")
            again = await socket.publish("chat:room", text="plain", event="note", key="k-1")
            assert (first.offset, second.offset) == (1, 2)
            assert again == second, "a repeated key publishes nothing and returns the first ack"

            join, one, two = await take(room, 3)
            assert join == Notice("chat:room", "join", socket.client_id, None, {"name": "ada"})
            assert one == SocketEvent(
                "chat:room", first.epoch, 1, "message", {"text": "hi", "n": [1, 2.5, None]}
            )
            assert two == SocketEvent("chat:room", first.epoch, 2, "note", "plain", text=True)
            assert room.position == second

            page = await socket.history("chat:room")
            assert page.position == second
            assert [(e.offset, e.event, e.data) for e in page.events] == [
                (1, "message", {"text": "hi", "n": [1, 2.5, None]}),
                (2, "note", "plain"),
            ]
            assert page.reset is None
            later = await socket.history("chat:room", since=first, limit=10)
            assert [e.offset for e in later.events] == [2]
            assert await socket.presence("chat:room") == [
                Member(socket.client_id, None, {"name": "ada"})
            ]
            assert await socket.ping() >= 0

            # Refusals are typed errors with the server's code; nothing changes.
            with pytest.raises(PublishRejected) as refused:
                await socket.publish("feed:news", 1)
            assert (refused.value.code, refused.value.status) == ("permission_denied", None)
            assert "publish is not allowed" in refused.value.message
            with pytest.raises(RequestRejected) as caught:
                await socket.subscribe("bad channel")
            assert caught.value.code == "invalid_channel"
            assert "bad channel" not in socket.subscriptions
            with pytest.raises(AlreadySubscribed) as already:
                await socket.subscribe("chat:room")
            assert already.value.code == "already_subscribed"
            with pytest.raises(TypeError):
                await socket.publish("chat:room")
            with pytest.raises(TypeError):
                await socket.publish("chat:room", object())

            # A handler instead of an iterator, and a resume from a position.
            handled: list[Any] = []
            got_two = asyncio.Event()

            async def handler(item: Any) -> None:
                handled.append(item)
                if isinstance(item, SocketEvent):
                    # A handler may wait for replies: it does not hold up the reader.
                    echo = await socket.publish("chat:echo", item.data)
                    handled.append(echo)
                    got_two.set()

            await socket.subscribe("chat:other", handler=handler)
            await socket.publish("chat:other", 2)
            await asyncio.wait_for(got_two.wait(), TIMEOUT)
            assert [e.data for e in (await socket.history("chat:echo")).events] == [2]
            left = await socket.subscribe("left")
            await socket.unsubscribe("left")
            assert [item async for item in left] == [], "unsubscribing ends the iterator"

            resumed = await socket.subscribe("ticks", since=None)
            async with http(url) as client:
                response = await client.post("/api/publish", json={"channel": "ticks", "data": 1})
                assert response.status_code == 200
            (tick,) = await take(resumed, 1)
            assert (tick.data, tick.offset) == (1, 1)
            await resumed.unsubscribe()
            assert [item async for item in resumed] == []

        assert socket.state is ConnectionState.CLOSED
        with pytest.raises(ConnectionClosed):
            await socket.publish("chat:room", 1)
        assert [item async for item in room] == [], "the iterator ends with the socket"
    assert [type(item) for item in handled] == [Notice, SocketEvent, Position]


async def test_subscribing_since_a_position_replays_exactly_what_came_after() -> None:
    async with run_server() as url, Socket(url) as socket:
        positions = [await socket.publish("log", n) for n in range(5)]
        replay = await socket.subscribe("log", since=positions[1])
        items = await take(replay, 3)
        assert [item.data for item in items] == [2, 3, 4]
        old = await socket.subscribe("gone", since=("another-epoch", 7))
        (reset,) = await take(old, 1)
        assert isinstance(reset, Reset)
        assert (reset.channel, reset.position.offset, reset.reason) == ("gone", 0, "epoch")
        assert old.position == reset.position


# -- faults ---------------------------------------------------------------------------------


async def test_kill_and_restart_resets_to_the_new_epoch_then_goes_live() -> None:
    server = ServerProcess().start()
    try:
        async with (
            http(server.url) as client,
            no_leaks(),
        ):
            states = States()
            backoff = RecordingBackoff(base=0.05, cap=0.2)
            async with Socket(server.url, backoff=backoff, on_state=states) as socket:
                orders = await socket.subscribe("orders")
                before = [await socket.publish("orders", n) for n in range(3)]
                assert [item.data for item in await take(orders, 3)] == [0, 1, 2]

                server.kill()
                await states.reach(ConnectionState.RECONNECTING)
                offline = asyncio.create_task(socket.publish("orders", "while down"))
                await asyncio.sleep(0)
                assert socket.queued == 1
                await asyncio.to_thread(server.start)
                landed = await asyncio.wait_for(offline, TIMEOUT * 2)
                assert landed.epoch != before[0].epoch
                assert landed.offset == 1

                reset, event = await take(orders, 2)
                assert reset == Reset("orders", Position(landed.epoch, 0), "epoch")
                assert (event.data, event.position) == ("while down", landed)
                for n in range(3, 5):
                    await client.post("/api/publish", json={"channel": "orders", "data": n})
                live = await take(orders, 2)
                assert [(item.data, item.offset) for item in live] == [(3, 2), (4, 3)]
                assert await history(client, "orders") == ["while down", 3, 4]
    finally:
        server.close()
    assert states.seen[:3] == [
        ConnectionState.CONNECTING,
        ConnectionState.OPEN,
        ConnectionState.RECONNECTING,
    ]
    assert states.seen[-2:] == [ConnectionState.OPEN, ConnectionState.CLOSED]
    assert backoff.delays
    assert all(0 <= delay <= upper <= 0.2 for delay, upper in backoff.delays)


@pytest.mark.parametrize("fmt", FORMATS)
async def test_cut_connections_lose_and_repeat_nothing(fmt: Any) -> None:
    with ServerProcess() as server:
        async with (
            FaultProxy(server.port) as proxy,
            http(server.url) as client,
            no_leaks(),
        ):
            states = States()
            backoff = Backoff(base=0.02, cap=0.1)
            async with Socket(proxy.url, format=fmt, backoff=backoff, on_state=states) as socket:
                feed = await socket.subscribe("feed")
                received: list[int] = []

                async def collect() -> None:
                    async for item in feed:
                        assert isinstance(item, SocketEvent), item
                        received.append(item.data)
                        if len(received) == 300:
                            return

                collector = asyncio.create_task(collect())
                for n in range(300):
                    await client.post("/api/publish", json={"channel": "feed", "data": n})
                    if n % 60 == 30:
                        await proxy.cut()  # the network drops mid-stream, again and again
                await asyncio.wait_for(collector, TIMEOUT * 2)
            assert received == list(range(300)), "no gap, no duplicate, in order"
            assert proxy.accepted >= 6
            assert states.seen.count(ConnectionState.RECONNECTING) >= 5


async def test_a_flapping_network_neither_loses_nor_repeats_a_publish() -> None:
    with ServerProcess() as server:
        async with (
            FaultProxy(server.port) as proxy,
            http(server.url) as client,
            no_leaks(),
        ):
            states = States()
            backoff = Backoff(base=0.01, cap=0.05)
            async with Socket(proxy.url, backoff=backoff, on_state=states) as socket:
                log = await socket.subscribe("log")
                publishes = []
                cuts = 0
                for n in range(200):
                    publishes.append(asyncio.create_task(socket.publish("log", n)))
                    await asyncio.sleep(0)  # let it go out (or wait in the queue)
                    if n % 40 == 20:
                        await proxy.cut()  # some acked, some in flight, some queued
                        cuts += 1
                    elif n % 40 == 39:
                        await states.reach(ConnectionState.OPEN, cuts + 1)
                positions = await asyncio.wait_for(asyncio.gather(*publishes), TIMEOUT * 3)
                items = await take(log, 200)
                assert socket.queued == 0
            assert await history(client, "log") == list(range(200)), "each publish landed once"
            assert [position.offset for position in positions] == list(range(1, 201))
            assert [item.data for item in items] == list(range(200))
            assert states.seen.count(ConnectionState.RECONNECTING) == 5


async def test_a_stalled_connection_misses_the_heartbeat_deadline_and_resumes() -> None:
    with ServerProcess() as server:
        async with (
            FaultProxy(server.port) as proxy,
            http(server.url) as client,
            no_leaks(),
        ):
            states = States()
            async with Socket(
                proxy.url,
                backoff=Backoff(base=0.02, cap=0.1),
                ping_interval=0.2,
                ping_timeout=0.5,
                on_state=states,
            ) as socket:
                feed = await socket.subscribe("feed")
                await client.post("/api/publish", json={"channel": "feed", "data": 1})
                (first,) = await take(feed, 1)
                proxy.stall()  # a half-dead path: no bytes, no close
                await client.post("/api/publish", json={"channel": "feed", "data": 2})
                # No pong within ping_timeout: the client gives up on the connection.
                await states.reach(ConnectionState.RECONNECTING)
                proxy.resume()
                await states.reach(ConnectionState.OPEN, 2)
                await client.post("/api/publish", json={"channel": "feed", "data": 3})
                second, third = await take(feed, 2)
            assert [(i.data, i.offset) for i in (first, second, third)] == [(1, 1), (2, 2), (3, 3)]


async def test_requests_time_out_on_a_silent_connection_and_publishes_wait() -> None:
    with ServerProcess() as server:
        states = States()
        async with (
            FaultProxy(server.port) as proxy,
            http(server.url) as client,
            no_leaks(),
            Socket(
                proxy.url,
                request_timeout=0.3,
                ping_interval=None,
                backoff=Backoff(base=0.02, cap=0.1),
                on_state=states,
            ) as socket,
        ):
            proxy.stall()
            with pytest.raises(RequestTimeout) as caught:
                await socket.ping()
            assert isinstance(caught.value, TimeoutError)
            assert caught.value.op == "ping"
            # A publish without its ack in time: the connection is taken for dead.
            publish = asyncio.create_task(socket.publish("jobs", "once"))
            await states.reach(ConnectionState.RECONNECTING)
            assert not publish.done()
            proxy.resume()
            position = await asyncio.wait_for(publish, TIMEOUT * 2)
            assert position.offset == 1
            assert await socket.ping() >= 0
            assert await history(client, "jobs") == ["once"]


async def test_publishes_during_an_outage_are_queued_bounded_and_sent_once() -> None:
    with ServerProcess() as server:
        async with (
            FaultProxy(server.port) as proxy,
            http(server.url) as client,
            no_leaks(),
        ):
            states = States()
            async with Socket(
                proxy.url,
                backoff=Backoff(base=0.02, cap=0.1),
                open_timeout=0.5,
                queue_limit=3,
                on_state=states,
            ) as socket:
                proxy.stall()
                await proxy.cut()  # the network is gone: reconnecting hangs, then times out
                await states.reach(ConnectionState.RECONNECTING)
                queued = [asyncio.create_task(socket.publish("jobs", n)) for n in range(3)]
                await asyncio.sleep(0)
                assert socket.queued == 3
                with pytest.raises(QueueFull) as caught:
                    await socket.publish("jobs", 3)
                assert caught.value.limit == 3
                withdrawn = asyncio.create_task(socket.publish("jobs", "withdrawn"))
                await asyncio.sleep(0)
                assert socket.queued == 3, "the full queue refuses (withdrawn raised QueueFull)"
                with pytest.raises(QueueFull):
                    await withdrawn
                proxy.resume()
                positions = await asyncio.wait_for(asyncio.gather(*queued), TIMEOUT * 2)
                assert [position.offset for position in positions] == [1, 2, 3]
                assert socket.queued == 0
            assert await history(client, "jobs") == [0, 1, 2]


async def test_cancelling_a_queued_publish_withdraws_it() -> None:
    with ServerProcess() as server:
        async with (
            FaultProxy(server.port) as proxy,
            http(server.url) as client,
            no_leaks(),
        ):
            states = States()
            async with Socket(
                proxy.url, backoff=Backoff(base=0.02, cap=0.1), open_timeout=0.5, on_state=states
            ) as socket:
                proxy.stall()
                await proxy.cut()
                await states.reach(ConnectionState.RECONNECTING)
                kept = asyncio.create_task(socket.publish("jobs", "kept"))
                dropped = asyncio.create_task(socket.publish("jobs", "dropped"))
                await asyncio.sleep(0)
                dropped.cancel()
                proxy.resume()
                await asyncio.wait_for(kept, TIMEOUT * 2)
                await socket.ping()  # anything sent after the queue has been answered
            assert await history(client, "jobs") == ["kept"]


async def test_backoff_stays_within_its_bounds_and_gives_up() -> None:
    backoff = RecordingBackoff(base=0.01, cap=0.05, max_attempts=4)
    url = f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens here
    states = States()
    async with no_leaks():
        with pytest.raises(ReconnectExhausted) as caught:
            async with Socket(url, backoff=backoff, on_state=states):
                pass
    assert caught.value.attempts == 4
    assert isinstance(caught.value.last_error, OSError)
    assert [upper for _, upper in backoff.delays] == [0.01, 0.02, 0.04, 0.05]
    assert all(0 <= delay <= upper for delay, upper in backoff.delays)
    assert states.seen == [ConnectionState.CONNECTING, ConnectionState.CLOSED]


#: Events of the slow-consumer tests: 16 KiB, so an overflow needs few of them.
BIG = "x" * (16 * 1024)
#: History that keeps every event :func:`publish_until` may publish.
DEEP_HISTORY = Namespaces(
    default=NamespaceOptions(history_size=MAX_BACKLOG_BYTES // len(BIG), history_ttl=600)
)


async def test_a_consumer_that_falls_behind_loses_nothing() -> None:
    hub = Hub(outbox_max_bytes=64 * 1024, namespaces=DEEP_HISTORY)
    app = create_app(hub, Settings(log_level="warning"))
    async with hub, run_server(app) as url, no_leaks():
        states = States()
        async with Socket(
            url, buffer=5, backoff=Backoff(base=0.01, cap=0.05), on_state=states
        ) as socket:
            feed = await socket.subscribe("feed")
            # The client reads nothing yet: publish until the server's outbox
            # overflowed and it closed the connection (4008).
            count = await publish_until(
                lambda n: hub.publish("feed", {"n": n, "padding": BIG}),
                lambda: hub.stats().slow_consumers >= 1,
                event_bytes=len(BIG),
            )
            items = await take(feed, count)
            assert [item.data["n"] for item in items] == list(range(1, count + 1))
            assert socket.close_code == 4008
            assert states.seen.count(ConnectionState.RECONNECTING) >= 1


async def test_events_dropped_for_a_slow_consumer_are_announced() -> None:
    hub = Hub(outbox_max_bytes=64 * 1024, overflow="drop")
    app = create_app(hub, Settings(log_level="warning"))
    async with hub, run_server(app) as url, no_leaks(), Socket(url, buffer=5) as socket:
        feed = await socket.subscribe("feed")
        count = await publish_until(
            lambda n: hub.publish("feed", {"n": n, "padding": BIG}),
            lambda: hub.stats().dropped > 0,
            event_bytes=len(BIG),
        )
        items: list[Any] = []
        while not items or items[-1].position.offset < count:
            items.extend(await take(feed, 1))
    # Every gap comes with a reset that says where the stream goes on.
    resets = [item for item in items if isinstance(item, Reset)]
    assert resets
    assert {reset.reason for reset in resets} == {"overflow"}
    previous = 0
    for item in items:
        if isinstance(item, Reset):
            previous = item.position.offset
        else:
            assert item.offset == previous + 1, "no silent gap"
            assert item.data["n"] == item.offset
            previous = item.offset


async def test_giving_up_fails_what_waits_and_ends_the_iterators() -> None:
    server = ServerProcess().start()
    try:
        states = States()
        backoff = RecordingBackoff(base=0.01, cap=0.02, max_attempts=2)
        async with no_leaks(), Socket(server.url, backoff=backoff, on_state=states) as socket:
            feed = await socket.subscribe("feed")
            server.kill()
            await states.reach(ConnectionState.RECONNECTING)
            waiting = asyncio.create_task(socket.publish("feed", "never sent"))
            with pytest.raises(ReconnectExhausted) as caught:
                await asyncio.wait_for(socket.wait_closed(), TIMEOUT)
            assert caught.value.attempts == 2
            with pytest.raises(ReconnectExhausted):
                await waiting
            with pytest.raises(ReconnectExhausted):
                await anext(feed)
            assert socket.state is ConnectionState.CLOSED
    finally:
        server.close()
    assert len(backoff.delays) == 2
    assert states.seen[-1] is ConnectionState.CLOSED


# -- close codes ----------------------------------------------------------------------------


async def test_a_refused_handshake_stops_for_good() -> None:
    settings = Settings(log_level="warning", namespaces={"private": {"subscribe": False}})
    async with run_server(settings=settings) as url, no_leaks():
        for query, status in [("channel=private:x", 403), ("channel=bad%20name", 400)]:
            states = States()
            with pytest.raises(StreamRejected) as caught:
                async with Socket(f"{url}/ws?{query}", on_state=states):
                    pass
            assert caught.value.status == status
            assert states.seen == [ConnectionState.CONNECTING, ConnectionState.CLOSED]


async def test_a_message_too_big_is_a_final_close() -> None:
    async with run_server() as url, no_leaks(), Socket(url) as socket:
        with pytest.raises(ConnectionClosed) as caught:
            await socket.publish("big", "x" * 100_000)
        assert (caught.value.close_code, caught.value.reconnect) == (1009, False)
        with pytest.raises(ConnectionClosed):
            await socket.wait_closed()
        assert socket.state is ConnectionState.CLOSED
        with pytest.raises(ConnectionClosed):
            await socket.ping()


class Scripted:
    """What a scripted server saw: every command, and each connection's handshake headers."""

    def __init__(self) -> None:
        self.url = ""
        self.commands: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.handshakes: list[dict[str, str]] = []  # refused ones too

    async def read(self, connection: ServerConnection) -> Any:
        command = orjson.loads(await connection.recv())
        self.commands.append(command)
        return command


Script = Callable[[Scripted, ServerConnection, int], Awaitable[None]]


@asynccontextmanager
async def scripted_server(
    script: Script, subprotocols: list[str] | None = None, refuse: Sequence[int | None] = ()
) -> AsyncIterator[Scripted]:
    """A WebSocket server that plays ``script(scripted, connection, n)`` on its
    n-th connection, speaking tidings.v1.json unless told otherwise. The n-th
    handshake is answered with the HTTP status ``refuse[n - 1]`` when that is
    not None."""
    scripted = Scripted()
    connections = 0

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        scripted.handshakes.append(dict(request.headers.raw_items()))
        n = len(scripted.handshakes)
        status = refuse[n - 1] if n <= len(refuse) else None
        if status is None:
            return None
        code = "unauthorized" if status == 401 else "permission_denied"
        body = orjson.dumps({"error": {"code": code, "message": "refused"}}).decode()
        return connection.respond(status, body)

    async def handler(connection: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        assert connection.request is not None
        scripted.headers.append(dict(connection.request.headers.raw_items()))
        await script(scripted, connection, connections)

    offered = ["tidings.v1.json"] if subprotocols is None else subprotocols
    async with serve(
        handler,
        "127.0.0.1",
        0,
        subprotocols=offered or None,
        process_request=process_request,
    ) as server:
        scripted.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        yield scripted


async def reply(connection: ServerConnection, command: Any, result: Any) -> None:
    await connection.send(
        orjson.dumps({"id": command["id"], "ok": True, "result": result}).decode()
    )


async def reply_subscribed(connection: ServerConnection, command: Any, offset: int) -> None:
    result = {"channel": command["channel"], "epoch": "e", "offset": offset, "recovered": True}
    await reply(connection, command, result)


def push(offset: int) -> str:
    message = {"channel": "c", "epoch": "e", "offset": offset, "event": "message", "data": offset}
    return orjson.dumps(message).decode()


@pytest.mark.parametrize(("code", "reason"), [(4501, "unauthorized"), (4503, "forbidden")])
async def test_terminal_close_codes_stop_for_good(code: int, reason: str) -> None:
    async def script(server: Scripted, connection: ServerConnection, n: int) -> None:
        await server.read(connection)
        await connection.close(code, reason)

    async with scripted_server(script) as server, no_leaks():
        states = States()
        async with Socket(server.url, backoff=Backoff(base=0.01), on_state=states) as socket:
            with pytest.raises(ConnectionClosed) as caught:
                await socket.subscribe("c")
            error = caught.value
            assert (error.close_code, error.reason, error.reconnect) == (code, reason, False)
            with pytest.raises(ConnectionClosed):
                await socket.publish("c", 1)
            with pytest.raises(ConnectionClosed):
                await socket.wait_closed()
        assert len(server.commands) == 1, "no reconnection"
        assert states.seen == [
            ConnectionState.CONNECTING,
            ConnectionState.OPEN,
            ConnectionState.CLOSED,
        ]


async def test_a_retryable_close_reconnects_and_resubscribes_from_the_last_event() -> None:
    async def script(server: Scripted, connection: ServerConnection, n: int) -> None:
        connect = await server.read(connection)
        await reply(connection, connect, {"client": f"client-{n}"})
        command = await server.read(connection)
        if n == 1:
            await reply_subscribed(connection, command, 0)
            await connection.send(f"[{push(1)},{push(2)}]")  # a batch
            await connection.close(4008, "slow consumer")
        else:
            await reply_subscribed(connection, command, 2)
            await connection.send(push(2))  # repeated by the server: the client drops it
            await connection.send(push(3))
            await connection.wait_closed()

    async with scripted_server(script) as server, no_leaks():
        states = States()
        async with Socket(
            server.url,
            info={"name": "ada"},
            headers={"authorization": "Bearer t0ken"},
            backoff=Backoff(base=0.01),
            on_state=states,
        ) as socket:
            channel = await socket.subscribe("c")
            items = await take(channel, 3)
            assert socket.close_code == 4008
            assert socket.client_id == "client-2"
    assert [item.offset for item in items] == [1, 2, 3]
    connect_1, first, connect_2, second = server.commands
    for connect in (connect_1, connect_2):  # info goes with every connection
        assert connect == {"id": connect["id"], "op": "connect", "info": {"name": "ada"}}
    assert first == {"id": first["id"], "op": "subscribe", "channel": "c"}
    assert second["since"] == {"epoch": "e", "offset": 2}
    assert [headers["authorization"] for headers in server.headers] == ["Bearer t0ken"] * 2
    assert states.seen.count(ConnectionState.RECONNECTING) == 1


async def test_a_server_that_refuses_the_subprotocol_stops_the_socket() -> None:
    async def script(server: Scripted, connection: ServerConnection, n: int) -> None:
        await connection.wait_closed()

    async with scripted_server(script, subprotocols=[]) as server, no_leaks():
        with pytest.raises(ProtocolError, match=r"did not accept tidings\.v1\.msgpack"):
            async with Socket(server.url, format="msgpack"):
                pass
        assert len(server.headers) == 1, "no reconnection"


# -- tokens ------------------------------------------------------------------------------------


class Tokens:
    """A get_token callback handing out t1, t2, … (or what ``make(n)`` makes)."""

    def __init__(self, make: Callable[[int], str] = lambda n: f"t{n}") -> None:
        self.issued: list[str] = []
        self.make = make

    async def __call__(self) -> str:
        self.issued.append(self.make(len(self.issued) + 1))
        return self.issued[-1]


def bearers(headers: list[dict[str, str]]) -> list[str | None]:
    return [h.get("authorization") for h in headers]


def unsigned_jwt(exp: float) -> str:
    """A token whose ``exp`` the client can read (the scripted server checks nothing)."""
    payload = base64.urlsafe_b64encode(orjson.dumps({"sub": "ada", "exp": exp}))
    return f"eyJhbGciOiJIUzI1NiJ9.{payload.rstrip(b'=').decode()}.c2ln"


async def test_an_expired_token_gets_a_new_one_and_resubscribes_from_the_last_event() -> None:
    async def script(server: Scripted, connection: ServerConnection, n: int) -> None:
        command = await server.read(connection)
        if n == 1:
            await reply_subscribed(connection, command, 0)
            await connection.send(push(1))
            await connection.send(push(2))
            await connection.close(CloseCode.TOKEN_EXPIRED, "token expired")
        else:
            await reply_subscribed(connection, command, 2)
            await connection.send(push(3))
            await connection.wait_closed()

    tokens = Tokens()
    backoff = RecordingBackoff(base=TIMEOUT)  # a backoff delay would time the test out
    async with (
        scripted_server(script) as server,
        no_leaks(),
        Socket(server.url, get_token=tokens, backoff=backoff) as socket,
    ):
        channel = await socket.subscribe("c")
        items = await take(channel, 3)
        assert socket.close_code == CloseCode.TOKEN_EXPIRED
    assert [item.offset for item in items] == [1, 2, 3]
    assert bearers(server.headers) == ["Bearer t1", "Bearer t2"]
    assert server.commands[1]["since"] == {"epoch": "e", "offset": 2}
    assert backoff.delays == []


async def test_a_401_handshake_gets_a_new_token_once_and_a_second_401_is_final() -> None:
    async def script(server: Scripted, connection: ServerConnection, n: int) -> None:
        command = await server.read(connection)
        await reply_subscribed(connection, command, 0)
        await connection.send(push(1))
        await connection.close(CloseCode.TOKEN_EXPIRED, "token expired")

    tokens = Tokens()
    async with (
        scripted_server(script, refuse=[401, None, 401]) as server,
        no_leaks(),
        Socket(server.url, token="old", get_token=tokens) as socket,
    ):
        channel = await socket.subscribe("c")
        assert [item.offset for item in await take(channel, 1)] == [1]
        with pytest.raises(StreamRejected) as caught:
            async with asyncio.timeout(TIMEOUT):
                await socket.wait_closed()
        assert caught.value.status == 401
        assert "unauthorized" in caught.value.body
    # old -> 401 -> t1 opens; 4401 -> t2 -> 401 to a fresh token: final.
    assert bearers(server.handshakes) == ["Bearer old", "Bearer t1", "Bearer t2"]
    assert tokens.issued == ["t1", "t2"]


async def test_a_403_handshake_is_final_without_asking_for_a_token() -> None:
    async def script(server: Scripted, connection: ServerConnection, n: int) -> None:
        raise AssertionError("no connection expected")

    tokens = Tokens()
    async with scripted_server(script, refuse=[403]) as server, no_leaks():
        with pytest.raises(StreamRejected) as caught:
            async with Socket(server.url, token="t0", get_token=tokens):
                pass
    assert caught.value.status == 403
    assert (tokens.issued, bearers(server.handshakes)) == ([], ["Bearer t0"])


async def test_the_socket_refreshes_its_token_before_exp_and_reconnects_with_the_new_one() -> None:
    async def script(server: Scripted, connection: ServerConnection, n: int) -> None:
        command = await server.read(connection)
        await reply_subscribed(connection, command, n - 1)
        if n == 1:
            refresh = await server.read(connection)
            assert refresh["op"] == "refresh"
            await reply(connection, refresh, {"expires": unsigned_exp})
            await connection.send(push(1))
            await connection.close(CloseCode.SERVICE_RESTART, "restart")
        else:
            await connection.send(push(2))
            await connection.wait_closed()

    unsigned_exp = time.time() + 3600
    short = time.time() + 1.5  # refreshed a third of its life before exp: at about 1 s
    tokens = Tokens(lambda n: unsigned_jwt(short if n == 1 else unsigned_exp))
    async with (
        scripted_server(script) as server,
        no_leaks(),
        Socket(server.url, get_token=tokens, backoff=Backoff(base=0.01)) as socket,
    ):
        channel = await socket.subscribe("c")
        assert [item.offset for item in await take(channel, 2)] == [1, 2]
    first, second = tokens.issued
    assert server.commands[1] == {"id": server.commands[1]["id"], "op": "refresh", "token": second}
    # The refreshed token is the one the next connection sends; get_token is not asked again.
    assert bearers(server.headers) == [f"Bearer {first}", f"Bearer {second}"]
