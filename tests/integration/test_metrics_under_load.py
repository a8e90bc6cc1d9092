"""GET /metrics while clients flood publishes and streams are open: every scrape answers,
and the refused publishes it counts are the ones the clients were refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.env import TIMEOUT, eventually
from tests.support.resuming import running
from tests.support.server import ServerProcess
from tests.support.sse import open_sse
from tests.support.ws import Peer
from tidings.server.rates import REFUSAL_REASONS

CHANNELS = [f"flood:{n}" for n in range(4)]
#: Publishers of each kind; each sends at most FLOOD publishes, until the scrapes are done.
PUBLISHERS = 4
FLOOD = 5000
#: Scrapes made while the flood runs; each must answer 200 within SCRAPE seconds.
SCRAPES = 10
SCRAPE = TIMEOUT * 2
#: One publish in this many names an invalid channel.
INVALID_EVERY = 50
#: The WebSocket publish limit: a pipelined flood goes over it at once.
PER_CONNECTION = 20


class Flood:
    """Publishes over HTTP and WebSocket until :attr:`done` is set (or FLOOD each);
    counts what the clients were refused, by the reason the metrics should give."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.done = asyncio.Event()
        self.refused: Counter[str] = Counter()
        self.accepted = 0
        self.running = 0

    @contextlib.contextmanager
    def _active(self) -> Any:
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1

    def _body(self, n: int) -> dict[str, Any]:
        channel = "not a channel" if n % INVALID_EVERY == 0 else CHANNELS[n % len(CHANNELS)]
        return {"channel": channel, "data": {"n": n, "pad": "x" * 100}}

    def _count(self, code: str | None) -> None:
        if code is None:
            self.accepted += 1
        else:
            self.refused[{"rate_limited": "rate", "invalid_channel": "invalid"}[code]] += 1

    async def over_http(self) -> None:
        with self._active():
            async with httpx.AsyncClient(base_url=self.server.url, timeout=SCRAPE) as client:
                for n in range(FLOOD):
                    if self.done.is_set():
                        return
                    response = await client.post("/api/publish", json=self._body(n))
                    code = None if response.status_code == 200 else response.json()["error"]["code"]
                    self._count(code)

    async def over_websocket(self) -> None:
        """Send publishes without waiting for their replies (a window of 100 in flight)."""
        with self._active():
            url = self.server.url.replace("http://", "ws://") + "/ws"
            async with connect(url, subprotocols=["tidings.v1.json"]) as ws:  # type: ignore[list-item]
                window = asyncio.Semaphore(100)
                reader = asyncio.create_task(self._replies(ws, window))
                try:
                    for n in range(FLOOD):
                        if self.done.is_set():
                            break
                        await window.acquire()
                        command = {"id": n + 1, "op": "publish", **self._body(n)}
                        await ws.send(orjson.dumps(command).decode())
                    for _ in range(100):  # every reply is in
                        await window.acquire()
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader

    async def _replies(self, ws: ClientConnection, window: asyncio.Semaphore) -> None:
        async for frame in ws:
            document = orjson.loads(frame)
            for reply in document if isinstance(document, list) else [document]:
                self._count(reply["error"]["code"] if "error" in reply else None)
                window.release()


async def read_forever(stream: Any) -> None:
    """Keep a subscriber reading (SSE reader or WebSocket peer) until cancelled."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            if isinstance(stream, Peer):
                await stream.push(timeout=3600)
            else:
                await stream.events(1, timeout=3600)


def refused(text: str) -> dict[str, float]:
    return {
        line.split('reason="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tidings_publish_refused_total{")
    }


async def test_metrics_answer_during_a_publish_flood_and_count_its_refusals() -> None:
    env = {
        "TIDINGS_PUBLISH_RATE_PER_CONNECTION": str(PER_CONNECTION),
        "TIDINGS_WS_RATE_LIMIT": "100000",  # refuse publishes, never close the connection
    }
    with ServerProcess(env=env) as server:
        flood = Flood(server)
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=SCRAPE) as client,
            contextlib.AsyncExitStack() as stack,
        ):
            readers: list[Any] = [
                await stack.enter_async_context(open_sse(client, f"/sse/{channel}"))
                for channel in CHANNELS * 2
            ]
            for channel in CHANNELS * 2:
                ws = await stack.enter_async_context(
                    connect(
                        server.url.replace("http://", "ws://") + f"/ws?channel={channel}",
                        subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
                    )
                )
                readers.append(Peer(ws))

            async def subscribed() -> bool:
                stats = (await client.get("/api/stats")).json()
                return bool(stats["subscribers"] >= len(readers))

            await eventually(subscribed)
            publishers = [flood.over_http() for _ in range(PUBLISHERS)]
            publishers += [flood.over_websocket() for _ in range(PUBLISHERS)]
            async with (
                running(*(read_forever(reader) for reader in readers)),
                running(*publishers) as tasks,
            ):
                await eventually(lambda: flood.accepted > 0)
                for _ in range(SCRAPES):
                    assert flood.running == len(tasks), "the flood ended before the scrapes"
                    async with asyncio.timeout(SCRAPE):
                        response = await client.get("/metrics")
                    assert response.status_code == 200
                    assert "tidings_published_total" in response.text
                flood.done.set()
                await asyncio.wait(tasks, timeout=SCRAPE * 2)
            after = (await client.get("/metrics")).text
    counted = refused(after)
    assert flood.refused["rate"] > 0  # the WebSocket flood went over its limit
    assert flood.refused["invalid"] > 0
    for reason in ("rate", "invalid"):
        assert counted[reason] == flood.refused[reason], (reason, counted, flood.refused)
    assert sum(counted.values()) == sum(flood.refused.values())
    assert set(counted) == set(REFUSAL_REASONS)
