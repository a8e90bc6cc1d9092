"""GET /ws against a real ``tidings serve`` with the ``websockets`` client, on both write paths."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.env import TIMEOUT, eventually
from tests.support.proxy import FaultProxy
from tests.support.server import ServerProcess
from tests.support.ws import Peer
from tidings.wire.protocol import Format

ROOT = Path(__file__).parents[2]
#: Ping interval and pong deadline of the heartbeat test's server (scaled: a healthy
#: client on a loaded machine must still answer in time).
HEARTBEAT = TIMEOUT / 10
CONFIG = """
[namespaces.chat]
join_leave = true

[namespaces.feed]
publish = false
"""


@pytest.fixture(scope="module", params=["fast", "asgi"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    env = {
        "TIDINGS_FAST_WRITE": "1" if request.param == "fast" else "0",
        "TIDINGS_WS_RATE_LIMIT": "50",
        # Room for a reader that falls 8 MB behind (the batching test).
        "TIDINGS_OUTBOX_MAX_BYTES": str(16 * 1024 * 1024),
    }
    with ServerProcess(env=env, config=CONFIG) as process:
        yield process


def ws_url(server: ServerProcess | FaultProxy, query: str = "") -> str:
    return server.url.replace("http://", "ws://") + "/ws" + (f"?{query}" if query else "")


@contextlib.asynccontextmanager
async def peer(url: str, fmt: Format = Format.JSON, **options: Any) -> AsyncIterator[Peer]:
    async with connect(url, subprotocols=[fmt.subprotocol], **options) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == fmt.subprotocol
        yield Peer(ws, fmt)


async def publish(client: httpx.AsyncClient, channel: str, data: Any) -> dict[str, Any]:
    response = await client.post("/api/publish", json={"channel": channel, "data": data})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def presence(client: httpx.AsyncClient, channel: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/presence/{channel}")
    assert response.status_code == 200, response.text
    clients: list[dict[str, Any]] = response.json()["clients"]
    return clients


# -- both subprotocols and the raw mode ----------------------------------------------


@pytest.mark.parametrize("fmt", [Format.JSON, Format.MSGPACK])
async def test_both_subprotocols(
    server: ServerProcess, client: httpx.AsyncClient, channel: str, fmt: Format
) -> None:
    async with peer(ws_url(server), fmt) as alice, peer(ws_url(server), fmt) as bob:
        subscribed = await alice.result("subscribe", channel=channel)
        assert (subscribed["channel"], subscribed["offset"], subscribed["recovered"]) == (
            channel,
            0,
            True,
        )
        published = await bob.result("publish", channel=channel, data={"text": "hi", "n": [1]})
        await publish(client, channel, "from http")
        await bob.result("publish", channel=channel, text="plain ☃", event="note")
        pushes = await alice.pushes_of(3)
        assert [push["offset"] for push in pushes] == [1, 2, 3]
        assert pushes[0] == {
            "channel": channel,
            "epoch": published["epoch"],
            "offset": 1,
            "event": "message",
            "data": {"text": "hi", "n": [1]},
        }
        assert pushes[1]["data"] == "from http"
        assert (pushes[2]["data"], pushes[2]["text"], pushes[2]["event"]) == (
            "plain ☃",
            True,
            "note",
        )
        history = await bob.result("history", channel=channel, limit=2)
        assert [event["offset"] for event in history["events"]] == [2, 3]
        assert await bob.result("ping") == {}
    stats = (await client.get("/api/stats")).json()
    assert "ws" in stats["transports"]


async def test_no_subprotocol_speaks_json(server: ServerProcess, channel: str) -> None:
    async with connect(ws_url(server)) as ws:
        assert ws.subprotocol is None
        client = Peer(ws)
        assert (await client.result("subscribe", channel=channel))["channel"] == channel


async def test_raw_mode_sends_each_event_as_its_data(
    server: ServerProcess, client: httpx.AsyncClient, channel: str
) -> None:
    async with connect(ws_url(server, f"channel={channel}")) as ws:
        assert ws.subprotocol is None
        await eventually(lambda: subscribed(client, channel, 1))
        await publish(client, channel, {"a": 1})
        response = await client.post(
            "/api/publish", json={"channel": channel, "text": "plain body ☃"}
        )
        assert response.status_code == 200
        async with asyncio.timeout(TIMEOUT):
            assert await ws.recv() == '{"a":1}'
            assert await ws.recv() == "plain body ☃"
        await ws.send("hello?")
        with pytest.raises(ConnectionClosed) as caught:
            async with asyncio.timeout(TIMEOUT):
                await ws.recv()
        assert caught.value.rcvd is not None
        assert caught.value.rcvd.code == 4500


async def subscribed(client: httpx.AsyncClient, channel: str, count: int) -> bool:
    response = await client.get("/api/channels")
    for entry in response.json()["channels"]:
        if entry["channel"] == channel:
            return bool(entry["subscribers"] == count)
    return count == 0


async def test_a_bad_url_is_refused_before_the_upgrade(server: ServerProcess) -> None:
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with connect(ws_url(server, "channel=a%20b")):
            pass
    assert caught.value.response.status_code == 400
    assert b"invalid_channel" in caught.value.response.body


# -- chat: three clients, two rooms ------------------------------------------------------


async def test_chat_three_clients_two_rooms(
    server: ServerProcess, client: httpx.AsyncClient, channel: str
) -> None:
    lobby, garden = f"chat:{channel}-lobby", f"chat:{channel}-garden"
    url = ws_url(server)
    async with peer(url) as ada, peer(url) as bob, peer(url) as cy:
        ids = {}
        for name, member in (("ada", ada), ("bob", bob), ("cy", cy)):
            ids[name] = (await member.result("connect", info={"name": name}))["client"]
        names = {client_id: name for name, client_id in ids.items()}
        for member, rooms in ((ada, [lobby, garden]), (bob, [lobby]), (cy, [garden])):
            for room in rooms:
                await member.result("subscribe", channel=room)

        async def notices(member: Peer, expected: dict[str, list[tuple[str, str]]]) -> None:
            """Read ``member``'s pushes until each room's join/leave notices are ``expected``."""
            seen: dict[str, list[tuple[str, str]]] = {room: [] for room in expected}
            while seen != expected:
                push = await member.push()
                seen[push["channel"]].append((push["event"], names[push["data"]["client"]]))

        await notices(
            ada,
            {lobby: [("join", "ada"), ("join", "bob")], garden: [("join", "ada"), ("join", "cy")]},
        )
        await notices(bob, {lobby: [("join", "bob")]})
        await notices(cy, {garden: [("join", "cy")]})

        await bob.result("publish", channel=lobby, data={"from": "bob", "text": "hi lobby"})
        await cy.result("publish", channel=garden, data={"from": "cy", "text": "hi garden"})
        ada_pushes = await ada.pushes_of(2)
        assert sorted((p["channel"], p["data"]["from"]) for p in ada_pushes) == sorted(
            [(lobby, "bob"), (garden, "cy")]
        )
        assert (await bob.push())["data"]["from"] == "bob"  # bob hears his own message
        assert (await cy.push())["data"]["from"] == "cy"
        assert not bob.pushes
        assert not cy.pushes

        lobby_members = await ada.result("presence", channel=lobby)
        assert sorted(names[c["client"]] for c in lobby_members["clients"]) == ["ada", "bob"]
        assert {c["info"]["name"] for c in await presence(client, garden)} == {"ada", "cy"}

        await bob.ws.close()  # bob leaves: the lobby hears it, the garden does not
        leave = await ada.push()
        assert (leave["channel"], leave["event"], names[leave["data"]["client"]]) == (
            lobby,
            "leave",
            "bob",
        )
        assert [names[c["client"]] for c in await presence(client, lobby)] == ["ada"]
        await cy.result("ping")
        assert not cy.pushes


# -- recovery -------------------------------------------------------------------------


async def test_recovery_after_a_forced_disconnect_is_exact(
    server: ServerProcess, client: httpx.AsyncClient, channel: str
) -> None:
    async with FaultProxy(server.port) as proxy:
        async with peer(ws_url(proxy)) as first:
            subscribed_at = await first.result("subscribe", channel=channel)
            for n in range(5):
                await publish(client, channel, n)
            received = await first.pushes_of(5)
            last = received[-1]
            await proxy.cut()  # RST both ways, no close handshake
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(TIMEOUT):
                    await first.ws.recv()
        for n in range(5, 25):
            await publish(client, channel, n)
        async with peer(ws_url(proxy)) as again:
            since = {"epoch": last["epoch"], "offset": last["offset"]}
            result = await again.result("subscribe", channel=channel, since=since)
            assert result["recovered"] is True
            assert result["replayed"] == 20
            assert result["epoch"] == subscribed_at["epoch"]
            await publish(client, channel, 25)
            pushes = await again.pushes_of(21)
            assert [push["data"] for push in pushes] == list(range(5, 26))
            assert [push["offset"] for push in pushes] == list(range(6, 27))
            await again.result("ping")
            assert not again.pushes  # no duplicate


async def test_a_position_from_another_epoch_is_a_reset(
    server: ServerProcess, channel: str
) -> None:
    async with peer(ws_url(server)) as member:
        await member.result("publish", channel=channel, data=1)
        result = await member.result(
            "subscribe", channel=channel, since={"epoch": "gone", "offset": 3}
        )
        assert (result["recovered"], result["reset"], result["offset"]) == (False, "epoch", 1)


# -- dead peers -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def client_process(
    server: ServerProcess, channel: str, name: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.ws_client",
        ws_url(server),
        channel,
        name,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(TIMEOUT * 2):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("ready "), line
        yield process, line.split()[1]
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.kill()
        await process.wait()


async def test_a_killed_client_leaves_at_once(
    server: ServerProcess, client: httpx.AsyncClient, channel: str
) -> None:
    room = f"chat:{channel}"
    async with peer(ws_url(server)) as watcher:
        await watcher.result("subscribe", channel=room)
        async with client_process(server, room, "doomed") as (process, client_id):
            assert client_id in {c["client"] for c in await presence(client, room)}
            process.kill()
            await process.wait()
            async with asyncio.timeout(TIMEOUT):
                while True:
                    push = await watcher.push()
                    if push["event"] == "leave" and push["data"]["client"] == client_id:
                        break
        assert client_id not in {c["client"] for c in await presence(client, room)}


@pytest.fixture(params=["fast", "asgi"])
def heartbeat_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    env = {
        "TIDINGS_FAST_WRITE": "1" if request.param == "fast" else "0",
        "TIDINGS_WS_PING_INTERVAL": str(HEARTBEAT),
        "TIDINGS_WS_PONG_TIMEOUT": str(HEARTBEAT),
    }
    with ServerProcess(env=env) as process:
        yield process


async def test_a_stopped_client_is_dropped_within_the_heartbeat(
    heartbeat_server: ServerProcess, channel: str
) -> None:
    """A half-open peer: the process is stopped, its socket stays open."""
    server = heartbeat_server
    client = httpx.AsyncClient(base_url=server.url, timeout=10)
    async with client, client_process(server, channel, "frozen") as (process, client_id):
        assert await subscribed(client, channel, 1)
        process.send_signal(signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        await eventually(lambda: subscribed(client, channel, 0), timeout=HEARTBEAT * 4 + TIMEOUT)
        assert loop.time() - stopped_at < HEARTBEAT * 2 + TIMEOUT
        assert client_id not in {c["client"] for c in await presence(client, channel)}


# -- load: batches, slow readers ---------------------------------------------------------


def small_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


@pytest.mark.parametrize("fmt", [Format.JSON, Format.MSGPACK])
async def test_a_connection_that_falls_behind_gets_batches_and_loses_nothing(
    server: ServerProcess, client: httpx.AsyncClient, channel: str, fmt: Format
) -> None:
    sock = small_socket(server.port)
    async with connect(
        ws_url(server),
        subprotocols=[fmt.subprotocol],  # type: ignore[list-item]
        sock=sock,
        max_queue=1,
    ) as ws:
        member = Peer(ws, fmt)
        await member.result("subscribe", channel=channel)
        # Not reading now: the socket buffers fill (the sender's grows to
        # 4 MB on Linux), the server's transport pauses and queues for us.
        body = "x" * 20_000
        limits = httpx.Limits(max_connections=8)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=10) as burst:
            for start in range(0, 400, 50):
                await asyncio.gather(
                    *(
                        burst.post("/api/publish", json={"channel": channel, "data": [n, body]})
                        for n in range(start, start + 50)
                    )
                )
        pushes = await member.pushes_of(400)
        assert sorted(push["data"][0] for push in pushes) == list(range(400))
        assert [push["offset"] for push in pushes] == list(range(1, 401))
        assert member.batched > 0, "a connection behind should get batch frames"
        assert member.frames < 400


# -- bad input over a real socket ----------------------------------------------------------


async def test_bad_frames_get_error_replies(server: ServerProcess) -> None:
    async with peer(ws_url(server)) as member:
        await member.ws.send("{not json")
        error = await member.reply(None)
        assert error["error"]["code"] == "invalid_json"
        await member.ws.send(b"\x01\x02")
        assert (await member.reply(None))["error"]["code"] == "bad_request"
        reply = await member.request("levitate")
        assert reply["error"]["code"] == "unknown_op"
        reply = await member.request("publish", channel="feed:news", data=1)
        assert reply["error"]["code"] == "permission_denied"
        reply = await member.request("subscribe", channel="bad name")
        assert reply["error"]["code"] == "invalid_channel"
        assert await member.result("ping") == {}


async def test_an_oversized_frame_closes_with_1009(server: ServerProcess) -> None:
    async with connect(ws_url(server), max_size=None) as ws:
        await ws.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as caught:
            async with asyncio.timeout(TIMEOUT):
                await ws.recv()
        assert caught.value.rcvd is not None
        assert caught.value.rcvd.code == 1009


async def test_a_flood_is_closed_with_4029(server: ServerProcess) -> None:
    async with connect(ws_url(server)) as ws:
        with pytest.raises(ConnectionClosed) as caught:
            async with asyncio.timeout(TIMEOUT):
                for n in range(10_000):
                    await ws.send(f'{{"id": {n}, "op": "ping"}}')
                while True:
                    await ws.recv()
        assert caught.value.rcvd is not None
        assert caught.value.rcvd.code == 4029


async def test_msgpack_garbage_gets_an_error_reply(server: ServerProcess) -> None:
    async with peer(ws_url(server), Format.MSGPACK) as member:
        await member.ws.send(b"\xc1\xc1")
        assert (await member.reply(None))["error"]["code"] == "invalid_msgpack"
        await member.ws.send(
            msgpack.packb({"id": 1, "op": "publish", "channel": "a", "data": b"x"})
        )
        assert (await member.reply(1))["error"]["code"] == "bad_request"
