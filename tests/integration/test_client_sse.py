"""tidings.client.listen against real servers, clean and faulty."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from tests.support.env import TIMEOUT, eventually
from tests.support.proxy import FaultProxy
from tests.support.server import ServerProcess
from tests.support.socket_client import RecordingBackoff
from tests.support.sse_vectors import VECTORS, Vector
from tidings.client import (
    Backoff,
    ConnectionState,
    Message,
    Reset,
    apublish,
    listen,
    listen_sync,
    publish,
)
from tidings.errors import ReconnectExhausted, ServerUnavailable, StreamRejected, TidingsError
from tidings.hub import Hub, NamespaceOptions, Namespaces
from tidings.server import create_app
from tidings.settings import Settings
from tidings.testing import free_port, run_server


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@asynccontextmanager
async def vector_server(stream: bytes, seed: int) -> AsyncIterator[str]:
    """A raw HTTP server that sends ``stream`` as an event stream in random pieces."""
    rng = random.Random(seed)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        position = 0
        while position < len(stream):
            size = rng.randint(1, 7)
            writer.write(stream[position : position + size])
            position += size
            await writer.drain()
            await asyncio.sleep(0.0005)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/sse"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
async def test_spec_vectors_end_to_end_at_random_chunk_boundaries(vector: Vector) -> None:
    dropped = asyncio.Event()

    def on_state(state: ConnectionState) -> None:
        if state is ConnectionState.RECONNECTING:
            dropped.set()  # the stream ended: everything it held has been parsed

    received: list[Message] = []
    async with vector_server(vector.stream, seed=len(vector.stream)) as url:
        listener = listen(url, backoff=Backoff(base=5.0), on_state=on_state)
        async with listener as events:

            async def collect() -> None:
                async for item in events:
                    assert isinstance(item, Message)
                    received.append(item)

            collector = asyncio.create_task(collect())
            await asyncio.wait_for(dropped.wait(), TIMEOUT)
            collector.cancel()
            with pytest.raises(asyncio.CancelledError):
                await collector
    assert [(m.event, m.data, m.id) for m in received] == vector.events
    if vector.retry is not None:
        assert listener.backoff.upper(0) == vector.retry / 1000


async def test_leaving_the_block_closes_the_connection_at_once() -> None:
    hub = Hub()
    app = create_app(hub, Settings(log_level="warning", sse_keepalive=TIMEOUT * 100))
    async with hub, run_server(app) as url:
        fds = open_fds()
        async with listen(url, ["a"]) as events:
            first_item = asyncio.create_task(anext(events))  # the listener connects lazily
            await eventually(lambda: hub.stats().subscriptions == 1)
            await hub.publish("a", 1)
            first = await asyncio.wait_for(first_item, TIMEOUT)
            assert isinstance(first, Message)
        # The server sees the client leave by itself, before any keepalive could tell it.
        await eventually(lambda: hub.stats().subscriptions == 0, interval=0.01)
        assert open_fds() <= fds


async def test_terminal_statuses_stop_for_good() -> None:
    namespaces = Namespaces(by_name={"private": NamespaceOptions(subscribe=False)})
    hub = Hub(namespaces=namespaces)
    async with hub, run_server(create_app(hub, Settings(log_level="warning"))) as url:
        for target, channels, status in [
            (url, ["private:x"], 403),
            (url, ["bad channel"], 400),
            (url + "/nothing-here", ["a"], 404),
        ]:
            states: list[ConnectionState] = []
            with pytest.raises(StreamRejected) as caught:
                async with listen(target, channels, on_state=states.append) as events:
                    await asyncio.wait_for(anext(events), TIMEOUT)
            assert caught.value.status == status
            assert states == [ConnectionState.CONNECTING, ConnectionState.CLOSED]


async def test_reconnect_gives_up_after_max_attempts() -> None:
    backoff = RecordingBackoff(base=0.01, cap=0.05, max_attempts=3)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    with pytest.raises(ReconnectExhausted) as caught:
        async with listen(url, ["a"], backoff=backoff) as events:
            await asyncio.wait_for(anext(events), TIMEOUT)
    assert caught.value.attempts == 3
    assert isinstance(caught.value.last_error, httpx.ConnectError)
    assert len(backoff.delays) == 3
    assert all(0 <= delay <= upper for delay, upper in backoff.delays)
    assert [upper for _, upper in backoff.delays] == [0.01, 0.02, 0.04]


async def test_kill_and_restart_mid_stream_gives_a_reset_and_nothing_else_lost() -> None:
    """Memory backend: the restart loses history, so the client must hear a reset."""
    server = ServerProcess(env={"TIDINGS_SSE_RETRY": "0.05"}).start()
    backoff = RecordingBackoff(base=0.05, cap=0.2)
    states: list[ConnectionState] = []
    fds = open_fds()
    try:
        async with (
            httpx.AsyncClient(base_url=server.url) as client,
            listen(server.url, ["orders"], backoff=backoff, on_state=states.append) as events,
        ):
            received: list[Message | Reset] = []

            async def collect() -> None:
                async for item in events:  # a consumer keeps reading; the client reconnects
                    received.append(item)
                    if len(received) == 9:
                        return

            collector = asyncio.create_task(collect())
            for n in range(5):
                await client.post("/api/publish", json={"channel": "orders", "data": n})
            await eventually(lambda: len(received) == 5)
            server.kill()
            server.start()
            await eventually(lambda: states.count(ConnectionState.OPEN) == 2, timeout=TIMEOUT * 2)
            for n in range(5, 8):
                await client.post("/api/publish", json={"channel": "orders", "data": n})
            await asyncio.wait_for(collector, TIMEOUT)
            before, after = received[:5], received[5:]
    finally:
        server.close()
    assert [m.json() for m in before] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
    reset, *rest = after
    assert isinstance(reset, Reset)
    assert reset.reason == "epoch"
    assert reset.position.offset == 0
    assert [m.json() for m in rest] == [5, 6, 7]  # type: ignore[union-attr]
    assert [m.offset for m in rest] == [1, 2, 3]  # type: ignore[union-attr]
    assert states[:3] == [
        ConnectionState.CONNECTING,
        ConnectionState.OPEN,
        ConnectionState.RECONNECTING,
    ]
    assert states[-1] is ConnectionState.CLOSED
    assert backoff.delays
    # Full jitter within the bounds; the server's retry: (50 ms) is the base.
    assert all(0 <= delay <= upper <= 0.2 for delay, upper in backoff.delays)
    assert open_fds() <= fds


async def test_cut_connections_lose_and_repeat_nothing() -> None:
    with ServerProcess(env={"TIDINGS_SSE_RETRY": "0.02"}) as server:
        async with (
            FaultProxy(server.port) as proxy,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            fds = open_fds()
            states: list[ConnectionState] = []
            backoff = Backoff(base=0.02, cap=0.1)
            received: list[int] = []
            async with listen(
                proxy.url, ["feed"], backoff=backoff, on_state=states.append
            ) as events:
                await eventually(lambda: ConnectionState.OPEN in states)

                async def collect() -> None:
                    async for item in events:
                        assert isinstance(item, Message), item
                        received.append(item.json())
                        if len(received) == 300:
                            return

                collector = asyncio.create_task(collect())
                for n in range(300):
                    await client.post("/api/publish", json={"channel": "feed", "data": n})
                    if n % 60 == 30:
                        await proxy.cut()  # the network drops mid-stream, again and again
                await asyncio.wait_for(collector, TIMEOUT * 2)
            assert received == list(range(300)), "no gap, no duplicate, in order"
            assert proxy.accepted >= 5
            assert states.count(ConnectionState.RECONNECTING) >= 4
        assert open_fds() <= fds


async def test_stalled_server_times_out_and_resumes() -> None:
    env = {"TIDINGS_SSE_KEEPALIVE": "0.1", "TIDINGS_SSE_RETRY": "0.02"}
    with ServerProcess(env=env) as server:
        async with (
            FaultProxy(server.port) as proxy,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            states: list[ConnectionState] = []
            async with listen(
                proxy.url,
                ["feed"],
                backoff=Backoff(base=0.02, cap=0.1),
                read_timeout=0.5,
                on_state=states.append,
            ) as events:
                received: list[Message | Reset] = []

                async def collect() -> None:
                    async for item in events:
                        received.append(item)
                        if len(received) == 2:
                            return

                collector = asyncio.create_task(collect())
                await client.post("/api/publish", json={"channel": "feed", "data": 1})
                await eventually(lambda: len(received) == 1)
                proxy.stall()  # a half-dead path: no bytes, no close
                await client.post("/api/publish", json={"channel": "feed", "data": 2})
                # No ping arrives within read_timeout: the client gives up on the connection.
                await eventually(lambda: ConnectionState.RECONNECTING in states)
                proxy.resume()
                await asyncio.wait_for(collector, TIMEOUT * 2)
            first, second = received
            assert isinstance(first, Message)
            assert isinstance(second, Message)
            assert (first.json(), second.json()) == (1, 2)
            assert second.offset == 2


async def test_sync_facade_publishes_and_listens() -> None:
    with ServerProcess() as server:
        position = await asyncio.to_thread(publish, server.url, "jobs", {"step": 1})
        assert position.offset == 1
        text = await asyncio.to_thread(publish, server.url, "jobs", text="plain", key="k")
        again = await asyncio.to_thread(publish, server.url, "jobs", text="plain", key="k")
        assert text == again
        with pytest.raises(TidingsError) as caught:
            await asyncio.to_thread(publish, server.url, "bad channel", 1)
        assert caught.value.code == "invalid_channel"
        with pytest.raises(TypeError):
            publish(server.url, "jobs")

        def read_two() -> list[Message | Reset]:
            cursor = f"jobs:{position.epoch}:0"
            with listen_sync(server.url, ["jobs"], last_event_id=cursor) as events:
                iterator = iter(events)
                return [next(iterator), next(iterator)]

        first, second = await asyncio.wait_for(asyncio.to_thread(read_two), TIMEOUT)
        assert isinstance(first, Message)
        assert first.json() == {"step": 1}
        assert isinstance(second, Message)
        assert second.data == "plain"


async def test_a_server_that_is_down_gives_tidings_errors_never_httpx_ones() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    with pytest.raises(ServerUnavailable) as caught:
        await asyncio.to_thread(publish, url, "jobs", {"step": 1})
    assert (caught.value.code, caught.value.url) == ("unreachable", f"{url}/api/publish")
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    with pytest.raises(ServerUnavailable) as again:
        await apublish(url, "jobs", text="plain", timeout=TIMEOUT)
    assert again.value.code == "unreachable"
    backoff = Backoff(base=0.01, cap=0.01, max_attempts=2)
    with pytest.raises(ReconnectExhausted) as exhausted:
        async with listen(url, ["jobs"], backoff=backoff):
            pass
    assert (exhausted.value.code, exhausted.value.attempts) == ("reconnect_exhausted", 2)
    assert isinstance(exhausted.value.last_error, httpx.ConnectError)


async def test_a_refused_stream_carries_the_servers_code_and_message() -> None:
    with ServerProcess() as server:
        with pytest.raises(StreamRejected) as caught:
            async with listen(server.url, ["bad channel"]):
                pass
        assert (caught.value.status, caught.value.code) == (400, "invalid_channel")
        assert "bad channel" in caught.value.message
