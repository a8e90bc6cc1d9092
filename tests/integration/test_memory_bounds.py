"""Memory has a ceiling: history in bytes, every answer paged, presence info bounded.

Each test replays an attack on a real server: clients that ask for big
answers and never read them, a channel fed more bytes than it may keep, many
channels, a presence ``info`` too large, and listings walked page by page.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from tests.support.env import TIMEOUT, eventually
from tests.support.server import ServerProcess
from tests.support.ws import Peer
from tidings.client import Socket

TOTAL = 4 * 1024 * 1024  # history_total_bytes of the server under test
SMALL = 200_000  # history_max_bytes of the "small" namespace
REPLY = 1024 * 1024  # the default max_reply_bytes
OUTBOX = 1024 * 1024  # the default outbox_max_bytes
SLACK = 8 * 1024 * 1024  # allocator and interpreter noise
EVENT = "x" * (60 * 1024)
CONFIG = f"[namespaces.small]\nhistory_max_bytes = {SMALL}\n"


@pytest.fixture(scope="module", params=["fast", "asgi"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    env = {
        "TIDINGS_FAST_WRITE": "1" if request.param == "fast" else "0",
        "TIDINGS_HISTORY_TOTAL_BYTES": str(TOTAL),
    }
    with ServerProcess(env=env, config=CONFIG) as process:
        yield process


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as client:
        yield client


def name(prefix: str = "m") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def publish(client: httpx.AsyncClient, channel: str, count: int, text: str = EVENT) -> Any:
    last: Any = None
    for _ in range(count):
        response = await client.post("/api/publish", json={"channel": channel, "text": text})
        assert response.status_code == 200, response.text
        last = response.json()
    return last


def stalled(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer, never read by the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def has_data(sock: socket.socket) -> bool:
    """Whether the server has started answering (bytes wait in the socket, unread)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


def ws_handshake(sock: socket.socket) -> None:
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: tidings.v1.json\r\n\r\n"
    )
    sock.settimeout(TIMEOUT)
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)
        assert chunk, "the server closed during the handshake"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response


def ws_command(document: dict[str, Any]) -> bytes:
    frame = Frame(Opcode.TEXT, orjson.dumps(document))
    return frame.serialize(mask=True, extensions=[])


async def test_history_readers_that_never_read_stay_bounded(
    server: ServerProcess, client: httpx.AsyncClient
) -> None:
    channel = name()
    last = await publish(client, channel, 60)  # 3.6 MB of history
    since = f"{last['epoch']}:0"
    baseline = server.rss_kib()
    sockets: list[socket.socket] = []
    try:
        for _ in range(10):
            sock = stalled(server.port)
            sock.sendall(
                f"GET /api/history/{channel}?since={since}&limit=10000 HTTP/1.1\r\n"
                "Host: test\r\n\r\n".encode()
            )
            sockets.append(sock)
        for number in range(10):
            sock = stalled(server.port)
            ws_handshake(sock)
            for request in range(20):
                sock.sendall(
                    ws_command(
                        {
                            "id": request,
                            "op": "history",
                            "channel": channel,
                            "since": {"epoch": last["epoch"], "offset": number},
                            "limit": 10000,
                        }
                    )
                )
            sockets.append(sock)
        await eventually(lambda: all(map(has_data, sockets)), timeout=TIMEOUT * 2)
        # Another client is served, and its answer is one bounded page.
        response = await client.get(f"/api/history/{channel}", params={"since": since})
        assert response.status_code == 200
        assert len(response.content) <= REPLY + 64 * 1024
        body = response.json()
        assert body["more"] is True
        assert body["events"]
        peak = server.rss_kib()
        stats = (await client.get("/api/stats")).json()
        assert stats["outbox_bytes"] <= 20 * OUTBOX
        growth = (peak - baseline) * 1024
        # Each stalled connection holds at most two answers (one handed to the
        # transport, one waiting) and its outbox; before the bound, 65 MB each.
        assert growth <= 20 * (2 * REPLY + OUTBOX) + SLACK, f"RSS grew {growth} bytes"
    finally:
        for sock in sockets:
            sock.close()


async def test_a_channel_keeps_its_bytes_and_an_old_cursor_gets_a_reset(
    server: ServerProcess, client: httpx.AsyncClient
) -> None:
    channel = f"small:{name()}"
    last = await publish(client, channel, 10)  # 600 KiB into a 200 kB channel
    body = (await client.get(f"/api/history/{channel}", params={"limit": 100})).json()
    offsets = [event["offset"] for event in body["events"]]
    assert offsets == list(range(offsets[0], 11))
    assert offsets[0] > 1
    assert sum(len(event["data"]) for event in body["events"]) <= SMALL
    fell_off = (
        await client.get(f"/api/history/{channel}", params={"since": f"{last['epoch']}:0"})
    ).json()
    assert fell_off["reset"]["reason"] == "window"
    # The same signal on a subscribe: reset first, then live.
    url = server.url.replace("http", "ws", 1) + "/ws"
    async with websockets.connect(url, subprotocols=["tidings.v1.json"]) as ws:  # type: ignore[list-item]
        peer = Peer(ws)
        result = await peer.result(
            "subscribe", channel=channel, since={"epoch": last["epoch"], "offset": 0}
        )
        assert result["reset"] == "window"
        assert result["recovered"] is False


async def test_the_total_bounds_many_channels(
    server: ServerProcess, client: httpx.AsyncClient
) -> None:
    prefix = name("total")
    first = await publish(client, f"{prefix}:0", 1)
    for number in range(1, 100):  # 6 MB over 100 channels, above the 4 MiB total
        await publish(client, f"{prefix}:{number}", 1)
    for number in range(600):  # and many tiny channels
        await publish(client, f"{prefix}:tiny{number}", 1, text="t")
    stats = (await client.get("/api/stats")).json()
    assert stats["history_bytes"] <= TOTAL
    assert stats["history_channels"] < 700
    old = (
        await client.get(f"/api/history/{prefix}:0", params={"since": f"{first['epoch']}:0"})
    ).json()
    assert old["reset"] is not None  # it was evicted: its cursor says so
    # The server still serves everyone.
    assert (await publish(client, f"{prefix}:0", 1, text="again"))["offset"] >= 1


async def test_presence_info_too_large_is_refused_and_the_connection_still_works(
    server: ServerProcess,
) -> None:
    channel = name()
    url = server.url.replace("http", "ws", 1) + "/ws"
    async with websockets.connect(url, subprotocols=["tidings.v1.json"]) as ws:  # type: ignore[list-item]
        peer = Peer(ws)
        reply = await peer.request("connect", info={"bio": "x" * 2000})
        assert reply["error"]["code"] == "too_large"
        assert (await peer.result("connect", info={"bio": "short"}))["client"]
        await peer.result("subscribe", channel=channel)
        await peer.result("publish", channel=channel, data=1)
        assert (await peer.push())["data"] == 1
        presence = await peer.result("presence", channel=channel)
        assert [entry["info"] for entry in presence["clients"]] == [{"bio": "short"}]


async def test_listings_walk_everything_exactly_once(
    server: ServerProcess, client: httpx.AsyncClient
) -> None:
    prefix = name("walk")
    channels = [f"{prefix}:{number:02d}" for number in range(25)]
    for channel in channels:
        await publish(client, channel, 1, text="w")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 7}
        if cursor:
            params["cursor"] = cursor
        body = (await client.get("/api/channels", params=params)).json()
        seen += [entry["channel"] for entry in body["channels"]]
        cursor = body["next"]
        pages += 1
        if cursor is None:
            break
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen))
    assert [c for c in seen if c.startswith(prefix)] == channels
    assert pages > 3

    room = name()
    url = server.url.replace("http", "ws", 1) + "/ws"
    async with contextlib.AsyncExitStack() as stack:
        peers = []
        for number in range(12):
            ws = await stack.enter_async_context(
                websockets.connect(url, subprotocols=["tidings.v1.json"])  # type: ignore[list-item]
            )
            peer = Peer(ws)
            await peer.result("connect", info={"n": number})
            await peer.result("subscribe", channel=room)
            peers.append(peer)
        # HTTP pages and WebSocket pages list the same clients, each once.
        http_seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
            body = (await client.get(f"/api/presence/{room}", params=params)).json()
            http_seen += [entry["client"] for entry in body["clients"]]
            cursor = body["next"]
            if cursor is None:
                break
        ws_seen: list[str] = []
        cursor = None
        while True:
            fields = {"limit": 5, **({"cursor": cursor} if cursor else {})}
            result = await peers[0].result("presence", channel=room, **fields)
            ws_seen += [entry["client"] for entry in result["clients"]]
            cursor = result["next"]
            if cursor is None:
                break
        assert http_seen == ws_seen == sorted(set(http_seen))
        assert len(http_seen) == 12
        # The Python client pages through presence and history by itself.
        async with Socket(server.url) as member:
            members = await member.presence(room)
            assert sorted(m.client for m in members) == http_seen

    history_channel = name()
    last = await publish(client, history_channel, 40, text="y" * 50_000)
    offsets: list[int] = []
    async with Socket(server.url) as reader:
        page = await reader.history(history_channel, since=(last["epoch"], 0), limit=10000)
        while True:
            offsets += [event.offset for event in page.events]
            if not page.more:
                break
            assert page.next is not None
            page = await reader.history(history_channel, since=page.next, limit=10000)
    assert offsets == list(range(1, 41))


async def test_stats_show_the_totals(client: httpx.AsyncClient) -> None:
    stats = (await client.get("/api/stats")).json()
    for field in ("history_channels", "history_events", "history_bytes", "outbox_bytes"):
        assert isinstance(stats[field], int), field


header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=200
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(header=header_text, query=st.text(max_size=200))
async def test_arbitrary_resume_cursors_get_a_clear_answer_never_a_500(
    client: httpx.AsyncClient, header: str, query: str
) -> None:
    """``Last-Event-ID`` and ``?last_event_id=``: a stream (200) or a clear 400, never a 500.

    (A header value cannot start or end with a space on the wire.)
    """
    requests: list[tuple[dict[str, bytes], dict[str, str]]] = [
        ({"Last-Event-ID": header.strip(" ").encode("latin-1")}, {"channel": "fuzz"}),
        ({}, {"channel": "fuzz", "last_event_id": query}),
    ]
    for headers, params in requests:
        async with client.stream("GET", "/sse", headers=headers, params=params) as response:
            assert response.status_code in (200, 400), (headers, params)
            if response.status_code == 400:
                body = orjson.loads(await response.aread())
                assert body["error"]["code"] == "invalid_cursor"
