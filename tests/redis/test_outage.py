"""Redis stops for 5 seconds and comes back empty, under two running nodes.

The test runs its own ``redis-server`` (no persistence) on a spare port so
that it can kill it. While it is down, publishes fail fast with a clear
error over HTTP and WebSocket, connected clients stay connected, and the
nodes retry with backoff instead of spinning. Once it is back, delivery
resumes on the same connections, with a ``reset`` since the history was lost.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.support.env import TIMEOUT, eventually
from tests.support.redis_server import RedisServer, own_redis_server
from tests.support.server import ServerProcess
from tests.support.sse import open_sse
from tests.support.ws import Peer

pytestmark = pytest.mark.slow

OUTAGE = 5.0


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with own_redis_server() as server:
        yield server


@pytest.fixture
def own_persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with own_redis_server(data_dir=tmp_path) as server:
        yield server


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_redis_outage_fails_fast_keeps_clients_and_recovers(own_redis: RedisServer) -> None:
    env = {
        "TIDINGS_BACKEND": "redis",
        "TIDINGS_REDIS_URL": own_redis.url,
        "TIDINGS_REDIS_PREFIX": f"outage-{uuid.uuid4().hex[:8]}:",
    }
    channel = "outage:c"
    with ServerProcess(env=env) as node_a, ServerProcess(env=env) as node_b:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT, read=None)) as http,
            open_sse(http, f"{node_a.url}/sse?channel={channel}") as sse,
            connect(
                node_b.url.replace("http", "ws") + "/ws",
                subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
            ) as ws,
        ):
            peer = Peer(ws)
            await peer.result("subscribe", channel=channel)
            for n in range(3):
                response = await http.post(
                    f"{(node_a, node_b)[n % 2].url}/api/publish",
                    json={"channel": channel, "data": n},
                )
                assert response.status_code == 200, response.text
            before = [orjson.loads(event.data) for event in await sse.events(3)]
            assert before == [0, 1, 2]
            assert [push["data"] for push in await peer.pushes_of(3)] == [0, 1, 2]
            old_epoch = response.json()["epoch"]

            # -- Redis goes away --------------------------------------------------------
            rss_before = [node.rss_kib() for node in (node_a, node_b)]
            cpu_before = [cpu_seconds(node.pid) for node in (node_a, node_b)]
            own_redis.kill()
            started = time.monotonic()
            failures = 0
            slowest = 0.0
            while time.monotonic() - started < OUTAGE and failures < 200:
                node = (node_a, node_b)[failures % 2]
                sent = time.monotonic()
                response = await http.post(
                    f"{node.url}/api/publish", json={"channel": channel, "data": "lost"}
                )
                slowest = max(slowest, time.monotonic() - sent)
                assert response.status_code == 503, response.text
                error = response.json()["error"]
                assert error["code"] == "unavailable"
                assert "redis" in error["message"]
                reply = await peer.request("publish", channel=channel, data="lost")
                assert reply["error"]["code"] == "unavailable", reply
                failures += 1
                # A new subscription cannot start either, and says why.
                if failures == 1:
                    refused = await http.get(f"{node_a.url}/sse?channel=outage:other")
                    assert refused.status_code == 503, refused.text
                await asyncio.sleep(0.1)  # paces the probes: about 20 per node
            outage = time.monotonic() - started
            cpu_used = [
                cpu_seconds(node.pid) - before
                for node, before in zip((node_a, node_b), cpu_before, strict=True)
            ]
            rss_after = [node.rss_kib() for node in (node_a, node_b)]
            # The connections are still up: a local op answers.
            assert (await peer.request("ping"))["ok"] is True
            own_redis.start()

            # -- Redis is back, empty -------------------------------------------------------
            async def publish_succeeds() -> bool:
                response = await http.post(
                    f"{node_a.url}/api/publish", json={"channel": channel, "data": "back"}
                )
                assert response.status_code in (200, 503), response.text
                return response.status_code == 200

            await eventually(publish_succeeds, timeout=TIMEOUT * 2, interval=0.1)
            reset, back = await sse.events(2)
            assert reset.event == "reset"
            assert orjson.loads(reset.data)["reason"] == "epoch"
            assert orjson.loads(back.data) == "back"
            reset_push, back_push = await peer.pushes_of(2)
            assert (reset_push["event"], reset_push["data"]["reason"]) == ("reset", "epoch")
            assert reset_push["epoch"] != old_epoch
            assert (back_push["data"], back_push["offset"]) == ("back", 1)
            # Nothing of the failed publishes surfaced anywhere.
            history = (await http.get(f"{node_b.url}/api/history/{channel}")).json()
            assert [event["data"] for event in history["events"]] == ["back"]

            # Both nodes publish and deliver again, through the same connections.
            response = await http.post(
                f"{node_b.url}/api/publish", json={"channel": channel, "data": "again"}
            )
            assert response.status_code == 200, response.text
            assert orjson.loads((await sse.events(1))[0].data) == "again"
            assert (await peer.push())["data"] == "again"

    # The measurements, shown by ``pytest -rP``.
    print(
        f"outage {outage:.2f} s: {failures} publishes refused per transport, slowest "
        f"{slowest * 1000:.1f} ms; node CPU during the outage "
        f"{', '.join(f'{used:.3f} s' for used in cpu_used)}; RSS KiB before/after "
        f"{list(zip(rss_before, rss_after, strict=True))}"
    )
    # Generous bounds that a busy reconnect loop or a growing queue would break:
    # a spinning node burns a whole core (about OUTAGE seconds of CPU).
    assert all(used < OUTAGE / 2 for used in cpu_used), cpu_used
    assert all(
        after - before < 32 * 1024 for before, after in zip(rss_before, rss_after, strict=True)
    )


async def test_redis_restart_with_history_kept_resumes_without_reset(
    own_persistent_redis: RedisServer,
) -> None:
    """Redis comes back with its data: the nodes fill what Pub/Sub missed, no reset."""
    redis_server = own_persistent_redis
    env = {
        "TIDINGS_BACKEND": "redis",
        "TIDINGS_REDIS_URL": redis_server.url,
        "TIDINGS_REDIS_PREFIX": f"restart-{uuid.uuid4().hex[:8]}:",
    }
    channel = "restart:c"
    with ServerProcess(env=env) as node_a, ServerProcess(env=env) as node_b:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT, read=None)) as http,
            open_sse(http, f"{node_a.url}/sse?channel={channel}") as sse,
            connect(
                node_b.url.replace("http", "ws") + "/ws",
                subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
            ) as ws,
        ):
            peer = Peer(ws)
            await peer.result("subscribe", channel=channel)
            response = await http.post(
                f"{node_a.url}/api/publish", json={"channel": channel, "data": 0}
            )
            before = response.json()
            assert [orjson.loads(event.data) for event in await sse.events(1)] == [0]
            assert [push["data"] for push in await peer.pushes_of(1)] == [0]

            redis_server.kill()
            response = await http.post(
                f"{node_a.url}/api/publish", json={"channel": channel, "data": "lost"}
            )
            assert response.status_code == 503, response.text
            redis_server.start()

            # Publish through each node as soon as it answers again: the other
            # node may not have its Pub/Sub connection back yet, and must fill
            # what it missed from the stream.
            numbers = iter(range(1, 21))

            async def published(node: ServerProcess) -> bool:
                response = await http.post(
                    f"{node.url}/api/publish", json={"channel": channel, "data": next(numbers)}
                )
                return response.status_code == 200

            await eventually(lambda: published(node_a), timeout=TIMEOUT * 2, interval=0.05)
            await eventually(lambda: published(node_b), timeout=TIMEOUT * 2, interval=0.05)
            history = (await http.get(f"{node_b.url}/api/history/{channel}")).json()
            assert history["epoch"] == before["epoch"]
            data = [event["data"] for event in history["events"]]
            assert data[0] == 0
            count = len(data)
            got_sse = [orjson.loads(event.data) for event in await sse.events(count - 1)]
            got_ws = await peer.pushes_of(count - 1)
            assert got_sse == data[1:]
            assert [push["data"] for push in got_ws] == data[1:]
            assert [push["offset"] for push in got_ws] == list(range(2, count + 1))
            assert all(push["event"] == "message" for push in got_ws)
