"""Three ``tidings serve`` processes on one Redis behave as one hub.

SSE and WebSocket clients are spread over the nodes; 10,000 events are
published round-robin through all three over HTTP; every client must get
every event of its channels once and in offset order, including two clients
that move from node A to node C in the middle of the stream, while node B's
Pub/Sub connection is cut halfway through.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess
from tests.support.sse import open_sse
from tests.support.ws import Peer

pytestmark = pytest.mark.slow

EVENTS = 10_000
CHANNELS = [f"cluster:c{n}" for n in range(4)]
PER_CHANNEL = EVENTS // len(CHANNELS)
#: How many events of its channel a moving client reads on node A before it moves.
MOVE_AFTER = PER_CHANNEL // 3
CONCURRENCY = 24


@pytest.fixture
def nodes(redis_url: str, redis_prefix: str) -> Iterator[list[ServerProcess]]:
    env = {
        "TIDINGS_BACKEND": "redis",
        "TIDINGS_REDIS_URL": redis_url,
        "TIDINGS_REDIS_PREFIX": redis_prefix,
    }
    started: list[ServerProcess] = []
    try:
        for _ in range(3):
            started.append(ServerProcess(env=env).start())
        yield started
    finally:
        for node in started:
            node.close()


class Received:
    """What one client got: per channel, the published numbers in arrival order."""

    def __init__(self, name: str, channels: list[str]) -> None:
        self.name = name
        self.channels = channels
        self.numbers: dict[str, list[int]] = defaultdict(list)
        self.done = asyncio.Event()

    def add(self, document: dict[str, Any]) -> None:
        self.numbers[document["c"]].append(document["n"])
        if all(len(self.numbers[channel]) >= PER_CHANNEL for channel in self.channels):
            self.done.set()

    def count(self, channel: str) -> int:
        return len(self.numbers[channel])


async def sse_client(
    client: httpx.AsyncClient, url: str, received: Received, ready: asyncio.Event
) -> None:
    query = "&".join(f"channel={channel}" for channel in received.channels)
    async with open_sse(client, f"{url}/sse?{query}") as reader:
        ready.set()
        while not received.done.is_set():
            for event in await reader.events(1, timeout=TIMEOUT * 6):
                assert event.event == "message", event
                received.add(orjson.loads(event.data))


async def ws_client(url: str, received: Received, ready: asyncio.Event) -> None:
    async with connect(url.replace("http", "ws") + "/ws", subprotocols=["tidings.v1.json"]) as ws:  # type: ignore[list-item]
        peer = Peer(ws)
        for channel in received.channels:
            await peer.result("subscribe", channel=channel)
        ready.set()
        while not received.done.is_set():
            push = await peer.push(timeout=TIMEOUT * 6)
            assert push["event"] == "message", push
            received.add(push["data"])


async def moving_sse_client(
    client: httpx.AsyncClient, first: str, second: str, received: Received, ready: asyncio.Event
) -> None:
    """Reads MOVE_AFTER events on ``first``, then resumes on ``second`` with Last-Event-ID."""
    (channel,) = received.channels
    query = f"channel={channel}"
    async with open_sse(client, f"{first}/sse?{query}") as reader:
        ready.set()
        while received.count(channel) < MOVE_AFTER:
            (event,) = await reader.events(1, timeout=TIMEOUT * 6)
            received.add(orjson.loads(event.data))
        cursor = event.id
    async with open_sse(
        client, f"{second}/sse?{query}", headers={"last-event-id": cursor}
    ) as reader:
        while not received.done.is_set():
            (event,) = await reader.events(1, timeout=TIMEOUT * 6)
            assert event.event == "message", event
            received.add(orjson.loads(event.data))


async def moving_ws_client(
    first: str, second: str, received: Received, ready: asyncio.Event
) -> None:
    """Reads MOVE_AFTER events on ``first``, then subscribes on ``second`` with ``since``."""
    (channel,) = received.channels
    async with connect(first.replace("http", "ws") + "/ws", subprotocols=["tidings.v1.json"]) as ws:  # type: ignore[list-item]
        peer = Peer(ws)
        await peer.result("subscribe", channel=channel)
        ready.set()
        while received.count(channel) < MOVE_AFTER:
            push = await peer.push(timeout=TIMEOUT * 6)
            received.add(push["data"])
        since = {"epoch": push["epoch"], "offset": push["offset"]}
    async with connect(
        second.replace("http", "ws") + "/ws", subprotocols=["tidings.v1.json"]
    ) as ws:  # type: ignore[list-item]
        peer = Peer(ws)
        result = await peer.result("subscribe", channel=channel, since=since)
        assert result["recovered"] is True, result
        while not received.done.is_set():
            push = await peer.push(timeout=TIMEOUT * 6)
            assert push["event"] == "message", push
            received.add(push["data"])


#: Tries of one publish whose connection failed (each with the same idempotency key).
PUBLISH_ATTEMPTS = 3


async def publish_all(
    urls: list[str], midway: Callable[[], Awaitable[None]]
) -> dict[str, dict[int, int]]:
    """Publish EVENTS events round-robin through ``urls``; return channel -> offset -> number.

    ``midway`` runs once, when half of the events are published.
    """
    offsets: dict[str, dict[int, int]] = defaultdict(dict)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    numbers = iter(range(EVENTS))

    async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT * 2) as client:

        async def publish(n: int, channel: str) -> httpx.Response:
            # A pooled connection the server closed while idle (a loaded machine
            # can leave one idle past uvicorn's keep-alive) fails the request:
            # send it again with the same idempotency key, so it lands once.
            for attempt in range(PUBLISH_ATTEMPTS):
                try:
                    return await client.post(
                        f"{urls[n % len(urls)]}/api/publish",
                        json={"channel": channel, "data": {"c": channel, "n": n}, "key": f"n{n}"},
                    )
                except httpx.TransportError:
                    if attempt == PUBLISH_ATTEMPTS - 1:
                        raise
            raise AssertionError("unreachable")

        async def worker() -> None:
            for n in numbers:
                channel = CHANNELS[n % len(CHANNELS)]
                response = await publish(n, channel)
                assert response.status_code == 200, response.text
                offsets[channel][response.json()["offset"]] = n
                if n == EVENTS // 2:
                    await midway()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return offsets


async def kill_pubsub(redis_url: str, node: ServerProcess) -> None:
    """Cut a node's Pub/Sub connection from the Redis side, as a network blip would."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        names = [
            entry["id"]
            for entry in await client.client_list()
            if entry.get("name", "").startswith(f"tidings-pubsub-{node.pid}-")
        ]
        assert len(names) == 1, names
        await client.execute_command("CLIENT", "KILL", "ID", names[0])
    finally:
        await client.aclose()


async def test_three_nodes_deliver_every_event_once_in_order(
    nodes: list[ServerProcess], redis_url: str
) -> None:
    """Also across a cut of node B's Pub/Sub connection halfway through."""
    node_a, node_b, node_c = (node.url for node in nodes)
    urls = [node_a, node_b, node_c]
    clients: list[tuple[Received, Any]] = []
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(
        limits=limits, timeout=httpx.Timeout(TIMEOUT * 2, read=None)
    ) as http:
        for index, url in enumerate(urls):
            pair = [CHANNELS[index % 4], CHANNELS[(index + 1) % 4]]
            rest = [CHANNELS[(index + 2) % 4], CHANNELS[(index + 3) % 4]]
            for name, channels, kind in (
                (f"sse-{index}-a", pair, "sse"),
                (f"sse-{index}-b", CHANNELS, "sse"),
                (f"ws-{index}-a", rest, "ws"),
                (f"ws-{index}-b", CHANNELS, "ws"),
            ):
                received = Received(name, channels)
                if kind == "sse":
                    clients.append(
                        (received, lambda r, ready, u=url: sse_client(http, u, r, ready))
                    )
                else:
                    clients.append((received, lambda r, ready, u=url: ws_client(u, r, ready)))
        moving_sse = Received("moving-sse", [CHANNELS[0]])
        clients.append(
            (moving_sse, lambda r, ready: moving_sse_client(http, node_a, node_c, r, ready))
        )
        moving_ws = Received("moving-ws", [CHANNELS[1]])
        clients.append((moving_ws, lambda r, ready: moving_ws_client(node_a, node_c, r, ready)))

        async with asyncio.TaskGroup() as group:
            readies = []
            for received, run in clients:
                ready = asyncio.Event()
                readies.append(ready)
                group.create_task(run(received, ready), name=received.name)
            async with asyncio.timeout(TIMEOUT * 3):
                for ready in readies:
                    await ready.wait()
            async with asyncio.timeout(TIMEOUT * 40):
                offsets = await publish_all(urls, lambda: kill_pubsub(redis_url, nodes[1]))
                for received, _ in clients:
                    await received.done.wait()

    expected = {
        channel: [by_offset[offset] for offset in sorted(by_offset)]
        for channel, by_offset in offsets.items()
    }
    for channel in CHANNELS:
        assert sorted(offsets[channel]) == list(range(1, PER_CHANNEL + 1)), channel
    for received, _ in clients:
        for channel in received.channels:
            # pytest shows the first index where they differ
            assert received.numbers[channel] == expected[channel], (received.name, channel)
