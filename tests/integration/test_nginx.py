"""Tidings behind nginx with the config docs/deployment.md shows (examples/deploy/nginx.conf).

A real nginx in front of a real server: SSE events pass unbuffered, WebSockets
upgrade, and the client address Tidings sees is the forwarded one only when
the request came through the trusted proxy.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.asyncio.client import connect

from tests.support.env import TIMEOUT
from tests.support.nginx import NginxProcess
from tests.support.server import ServerProcess
from tests.support.sse import SSEReader, open_sse
from tests.support.ws import Peer
from tidings.server import create_app
from tidings.server.state import ServerState
from tidings.settings import Settings
from tidings.testing import run_server

#: How long an event may take from its publish to the client through nginx: far
#: below the 100 ms between publishes, and far below what a buffer that holds
#: events until it fills (4-8 KiB, here hundreds of events) would take.
DELIVERY_BOUND = 0.05 * TIMEOUT / 5.0
EVENTS = 25
PERIOD = 0.1
#: A client address other than the proxy's own: Linux routes 127.0.0.0/8 to loopback.
CLIENT = "127.0.0.2"
SPOOFED = "203.0.113.9"


class PeerRoute:
    """The Tidings app plus ``GET /test/peer``: the client address Tidings works out."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/test/peer":
            peer = self.state.authority.peer(scope)
            await JSONResponse({"peer": peer})(scope, receive, send)
        else:
            await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """``tidings serve`` as the docs run it behind nginx."""
    with ServerProcess(env={"TIDINGS_TRUSTED_PROXIES": "127.0.0.1"}) as process:
        yield process


@pytest.fixture(scope="module")
def nginx(
    server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NginxProcess]:
    with NginxProcess(tmp_path_factory.mktemp("nginx"), upstream_port=server.port) as process:
        yield process


def channel() -> str:
    return f"nx{uuid.uuid4().hex[:10]}"


async def arrivals(reader: SSEReader, count: int) -> list[float]:
    """When each of the next ``count`` events arrived (monotonic); they must be 0, 1, 2 …"""
    times = []
    for number in range(count):
        (event,) = await reader.events(1)
        times.append(time.monotonic())
        assert json.loads(event.data) == number
    return times


@pytest.mark.slow
async def test_sse_events_pass_through_unbuffered(
    server: ServerProcess, nginx: NginxProcess
) -> None:
    """Each event comes through nginx as soon as it comes to a direct subscriber.

    Both subscribers read in this process, so what slows the machine slows
    both alike; a proxy that held events back until a buffer filled would
    add seconds, far more than the bound.
    """
    name = channel()
    published: list[float] = []
    async with (
        httpx.AsyncClient(base_url=nginx.url, timeout=TIMEOUT) as through,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as direct,
        open_sse(through, f"/sse/{name}") as proxied,
        open_sse(direct, f"/sse/{name}") as control,
    ):
        await proxied.until(b"\n\n")  # both subscribed
        await control.until(b"\n\n")
        reading = asyncio.gather(arrivals(proxied, EVENTS), arrivals(control, EVENTS))
        try:
            start = time.monotonic()
            for number in range(EVENTS):
                await asyncio.sleep(max(0.0, start + number * PERIOD - time.monotonic()))
                published.append(time.monotonic())
                answer = await direct.post("/api/publish", json={"channel": name, "data": number})
                assert answer.status_code == 200, answer.text
            via_nginx, straight = await asyncio.wait_for(reading, TIMEOUT)
        finally:
            reading.cancel()
    delays = [got - sent for sent, got in zip(published, via_nginx, strict=True)]
    added = [late - early for early, late in zip(straight, via_nginx, strict=True)]
    shown = ", ".join(
        f"#{n}: {delay * 1000:.1f} (+{extra * 1000:.1f}) ms"
        for n, (delay, extra) in enumerate(zip(delays, added, strict=True))
    )
    assert max(added) < DELIVERY_BOUND, f"publish to receipt (added by nginx): {shown}"


async def test_websocket_upgrades_through_nginx(nginx: NginxProcess) -> None:
    name = channel()
    url = nginx.url.replace("http://", "ws://") + "/ws"
    async with (
        connect(url, subprotocols=["tidings.v1.json"]) as ws,  # type: ignore[list-item]
        httpx.AsyncClient(base_url=nginx.url, timeout=TIMEOUT) as client,
    ):
        assert ws.subprotocol == "tidings.v1.json"
        peer = Peer(ws)
        reply = await peer.request("subscribe", channel=name)
        assert reply.get("ok"), reply
        reply = await peer.request("publish", channel=name, data="over ws")
        assert reply.get("ok"), reply
        answer = await client.post("/api/publish", json={"channel": name, "data": "over http"})
        assert answer.status_code == 200, answer.text
        pushes = await peer.pushes_of(2)
        assert [(push["offset"], push["data"]) for push in pushes] == [
            (1, "over ws"),
            (2, "over http"),
        ]


async def peer_seen(base_url: str, headers: dict[str, str] | None = None) -> str:
    """The client address Tidings sees for a request sent from :data:`CLIENT`."""
    transport = httpx.AsyncHTTPTransport(local_address=CLIENT)
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=TIMEOUT) as c:
        answer = await c.get("/test/peer", headers=headers or {})
        assert answer.status_code == 200, answer.text
        peer: str = answer.json()["peer"]
        return peer


async def test_the_forwarded_address_is_believed_only_from_the_trusted_proxy(
    tmp_path: Path,
) -> None:
    settings = Settings(trusted_proxies="127.0.0.1", log_level="warning")
    app = create_app(settings=settings)
    async with run_server(PeerRoute(app, app.state.tidings), settings=settings) as tidings:
        with NginxProcess(tmp_path, upstream_port=httpx.URL(tidings).port or 0) as nginx:
            await check_peers(tidings, nginx)


async def check_peers(tidings: str, nginx: NginxProcess) -> None:
    # Through nginx (127.0.0.1, trusted): the address nginx saw.
    assert await peer_seen(nginx.url) == CLIENT
    # A client's own X-Forwarded-For: nginx appends the real address, which wins.
    assert await peer_seen(nginx.url, {"X-Forwarded-For": SPOOFED}) == CLIENT
    # Straight to Tidings from an untrusted address: the header is ignored.
    assert await peer_seen(tidings, {"X-Forwarded-For": SPOOFED}) == CLIENT
    # The proxy is still serving others afterwards.
    async with httpx.AsyncClient(base_url=nginx.url, timeout=TIMEOUT) as client:
        assert (await client.get("/healthz")).status_code == 200
