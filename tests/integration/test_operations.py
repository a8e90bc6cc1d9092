"""Operations over a real server: /metrics, /healthz and /readyz, JSON logs."""

from __future__ import annotations

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from tests.support.env import TIMEOUT, eventually
from tests.support.server import ServerProcess
from tests.support.sse import open_sse
from tests.support.ws import Peer
from tidings.server.metrics import LATENCY_EVERY

EVENTS = LATENCY_EVERY * 2


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_what_the_subscribers_received(
    server: ServerProcess, client: httpx.AsyncClient, channel: str
) -> None:
    async with (
        open_sse(client, f"/sse?channel={channel}") as sse,
        connect(
            server.url.replace("http", "ws") + f"/ws?channel={channel}",
            subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
        ) as ws,
    ):
        peer = Peer(ws)
        await sse.events(0)
        await eventually(lambda: _subscribers(client, 2))
        before = samples((await client.get("/metrics")).text)
        for number in range(EVENTS):
            response = await client.post("/api/publish", json={"channel": channel, "data": number})
            assert response.status_code == 200
        assert len(await sse.events(EVENTS)) == EVENTS
        assert len(await peer.pushes_of(EVENTS)) == EVENTS
        response = await client.get("/metrics")
    assert response.status_code == 200
    after = samples(response.text)
    assert after[("tidings_connections", (("transport", "sse"),))] >= 1
    assert after[("tidings_connections", (("transport", "ws"),))] >= 1
    assert after[("tidings_open_requests", ())] >= 3  # two streams and the scrape
    assert after[("tidings_open_sockets", ())] >= 3  # under tidings serve only
    grew = {
        key: after[key] - before.get(key, 0)
        for key in (
            ("tidings_published_total", ()),
            ("tidings_delivered_total", (("transport", "sse"),)),
            ("tidings_delivered_total", (("transport", "ws"),)),
            ("tidings_publish_to_write_seconds_count", ()),
        )
    }
    assert grew[("tidings_published_total", ())] == EVENTS
    # Deliveries are counted by transport: each stream got every event.
    assert grew[("tidings_delivered_total", (("transport", "sse"),))] == EVENTS
    assert grew[("tidings_delivered_total", (("transport", "ws"),))] == EVENTS
    assert grew[("tidings_publish_to_write_seconds_count", ())] >= 1
    assert after[("process_open_fds", ())] > 0
    assert after[("process_resident_memory_bytes", ())] > 0


async def _subscribers(client: httpx.AsyncClient, count: int) -> bool:
    """Whether the server has at least ``count`` channel subscriptions (all channels)."""
    stats = (await client.get("/api/stats")).json()
    return bool(stats["subscribers"] >= count)


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    ready = await client.get("/readyz")
    assert health.status_code == ready.status_code == 200
    assert ready.json() == {"status": "ready", "backend": "memory"}


@pytest.mark.parametrize("fast", ["1", "0"])
async def test_json_logs_carry_connection_ends_and_leave_out_stream_access(fast: str) -> None:
    env = {"TIDINGS_LOG_LEVEL": "debug", "TIDINGS_FAST_WRITE": fast}
    with ServerProcess(env=env, args=["--log-format", "json"]) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            async with open_sse(client, "/sse?channel=logs:a&channel=logs:b") as sse:
                await sse.events(0)
            async with connect(
                server.url.replace("http", "ws") + "/ws?channel=logs:a",
                subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
            ):
                await eventually(lambda: _subscribers(client, 1))
            assert (await client.get("/api/stats")).status_code == 200

            def ended() -> list[dict[str, object]]:
                return [
                    line for line in _lines(server) if line.get("logger") == "tidings.connections"
                ]

            await eventually(lambda: len(ended()) >= 2)
        lines = _lines(server)
    closes = {
        line["transport"]: line for line in lines if line.get("logger") == "tidings.connections"
    }
    assert closes["sse"]["channels"] == 2
    assert closes["ws"]["channels"] == 1
    for line in closes.values():
        assert {"time", "level", "logger", "message", "connection", "reason"} <= set(line)
    access = [line for line in lines if line.get("logger") == "uvicorn.access"]
    paths = [str(line["path"]) for line in access]
    assert "/api/stats" in paths
    assert not [path for path in paths if path.startswith(("/sse", "/ws"))]
    assert any(line["logger"] == "tidings.server.app" for line in lines)


def _lines(server: ServerProcess) -> list[dict[str, object]]:
    """Every line of the server's log: each must be a JSON object."""
    text = server.log_path.read_text()
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]
