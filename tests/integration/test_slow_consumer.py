"""A client that reads nothing cannot grow the server's memory; it is cut off by policy.

Every transport: an SSE stream, a WebSocket (raw and protocol mode) and an NDJSON
channel stream (``/api/stream``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.support.env import TIMEOUT, eventually
from tests.support.server import ServerProcess

OUTBOX = 1024 * 1024  # the default outbox_max_bytes
TRANSPORT_BUFFER = 64 * 1024  # the transport's high-water mark before it pauses
SLACK = 4 * 1024 * 1024  # allocator and interpreter noise
EVENT = "x" * (32 * 1024 - 64)
CONFIG = "[namespaces.slow]\nhistory_size = 10\n"
#: A WebSocket close frame with code 4008 and its reason.
SLOW_CONSUMER_CLOSE = b"\x88\x0f\x0f\xa8slow consumer"


@pytest.fixture(params=["fast", "asgi"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    env = {"TIDINGS_FAST_WRITE": "1" if request.param == "fast" else "0"}
    with ServerProcess(env=env, config=CONFIG) as process:
        yield process


def open_stalled_client(port: int, path: str) -> socket.socket:
    """An HTTP streaming client (SSE, NDJSON) with a tiny receive buffer that never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return sock


def open_stalled_ws_client(port: int, channel: str, subprotocol: str | None) -> socket.socket:
    """A WebSocket client (handshake by hand) with a tiny receive buffer that never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    protocol = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
    sock.sendall(
        (
            f"GET /ws?channel={channel} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{protocol}\r\n"
        ).encode()
    )
    return sock


async def publish_many(client: httpx.AsyncClient, channel: str, count: int) -> None:
    async def worker(share: int) -> None:
        for _ in range(share):
            response = await client.post("/api/publish", json={"channel": channel, "text": EVENT})
            assert response.status_code == 200, response.text

    await asyncio.gather(*(worker(count // 8) for _ in range(8)))


@pytest.mark.parametrize("kind", ["sse", "stream", "ws-raw", "ws-json"])
async def test_stalled_client_is_disconnected_and_memory_stays_flat(
    server: ServerProcess, kind: str
) -> None:
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as client:
        await publish_many(client, "slow:warm-up", 400)  # warm the allocator and code paths
        baseline = server.rss_kib()
        if kind == "sse":
            sock = open_stalled_client(server.port, "/sse?channel=slow:stalled")
        elif kind == "stream":
            sock = open_stalled_client(server.port, "/api/stream/slow:stalled")
        else:
            subprotocol = "tidings.v1.json" if kind == "ws-json" else None
            sock = open_stalled_ws_client(server.port, "slow:stalled", subprotocol)
        try:

            async def subscribed() -> bool:
                return bool((await client.get("/api/stats")).json()["subscribers"] == 1)

            await eventually(subscribed)
            peak = baseline
            for _ in range(16):  # 16 x 100 x 32 KiB = 50 MiB
                await publish_many(client, "slow:stalled", 96)
                peak = max(peak, server.rss_kib())
            stats = (await client.get("/api/stats")).json()
            assert stats["slow_consumers"] == 1
            assert stats["subscribers"] == 0

            async def ended() -> bool:
                # On the ASGI path the connection ends once its close frame went
                # out or could not (CLOSE_SEND_TIMEOUT): shortly after the overflow.
                return bool((await client.get("/api/stats")).json()["connections"] == 0)

            await eventually(ended)
            growth = (peak - baseline) * 1024
            assert growth <= OUTBOX + TRANSPORT_BUFFER + SLACK, f"RSS grew {growth} bytes"
            # The client finds the end of its stream once it reads what was in
            # flight: the connection ends, or (WebSocket fast path) the close
            # frame says why before the server drops a peer that does not answer.
            sock.settimeout(TIMEOUT)
            received = 0
            tail = b""
            with pytest.raises((ConnectionResetError, EOFError)):
                while SLOW_CONSUMER_CLOSE not in tail:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        raise EOFError
                    received += len(chunk)
                    tail = tail[-64:] + chunk
                raise EOFError
            assert received < 50 * 1024 * 1024
        finally:
            sock.close()
