"""/admin against a real ``tidings serve``, on both write paths: listing connections,
closing an SSE stream and a WebSocket, the test publish, the snapshot stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.env import TIMEOUT, eventually
from tests.support.server import ServerProcess
from tests.support.sse import SSEReader, open_sse
from tidings.server.admin import MAX_STREAMS
from tidings.settings import Settings
from tidings.testing import run_server
from tidings.wire.protocol import Format

ADMIN_KEY = "integration-admin-key-0123"
ADMIN = {"authorization": f"Admin {ADMIN_KEY}"}


@pytest.fixture(scope="module", params=["fast", "asgi"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    env = {
        "TIDINGS_FAST_WRITE": "1" if request.param == "fast" else "0",
        "TIDINGS_ADMIN_KEY": ADMIN_KEY,
    }
    with ServerProcess(env=env) as process:
        yield process


async def listed(client: httpx.AsyncClient, channel: str) -> list[dict[str, Any]]:
    """The open connections that hold ``channel`` (the server is shared by a module)."""
    response = await client.get("/admin/api/connections?limit=1000", headers=ADMIN)
    assert response.status_code == 200, response.text
    return [c for c in response.json()["connections"] if channel in c["channels"]]


async def test_disconnect_ends_an_sse_stream(client: httpx.AsyncClient, channel: str) -> None:
    other = channel + "-b"
    async with open_sse(client, f"/sse?channel={channel}&channel={other}") as reader:
        await reader.until(b"\n\n")
        [entry] = await listed(client, channel)
        assert entry["transport"] == "sse"
        assert entry["channels"] == [channel, other]
        assert entry["channel_count"] == 2
        assert entry["peer"] == "127.0.0.1"
        assert entry["age"] >= 0
        response = await client.delete(f"/admin/api/connections/{entry['id']}", headers=ADMIN)
        assert response.json() == {"disconnected": entry["id"], "transport": "sse"}
        await reader.until_end()  # the response ends cleanly: no error, no hang
    await eventually(lambda: _gone(client, channel))
    again = await client.delete(f"/admin/api/connections/{entry['id']}", headers=ADMIN)
    assert again.status_code == 404


async def test_disconnect_ends_a_channel_stream(client: httpx.AsyncClient, channel: str) -> None:
    published = await client.post("/api/publish", json={"channel": channel, "data": 1})
    assert published.status_code == 200, published.text
    position = f"{published.json()['epoch']}:0"
    async with client.stream("GET", f"/api/stream/{channel}?since={position}") as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        first = json.loads(await asyncio.wait_for(anext(lines), TIMEOUT))
        assert first["data"] == 1
        [entry] = await listed(client, channel)
        assert (entry["transport"], entry["channels"]) == ("stream", [channel])
        deleted = await client.delete(f"/admin/api/connections/{entry['id']}", headers=ADMIN)
        assert deleted.json() == {"disconnected": entry["id"], "transport": "stream"}
        rest = [line async for line in _bounded(lines)]
        assert rest == []  # the response ended cleanly, with nothing after the event
    await eventually(lambda: _gone(client, channel))


async def _bounded(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    async with asyncio.timeout(TIMEOUT):
        async for line in lines:
            yield line


async def _gone(client: httpx.AsyncClient, channel: str) -> bool:
    return not await listed(client, channel)


async def test_disconnect_closes_a_websocket(
    server: ServerProcess, client: httpx.AsyncClient, channel: str
) -> None:
    url = server.url.replace("http://", "ws://") + f"/ws?channel={channel}"
    async with connect(url, subprotocols=[Format.JSON.subprotocol]) as ws:  # type: ignore[list-item]
        await eventually(lambda: _listed_once(client, channel))
        [entry] = await listed(client, channel)
        assert (entry["transport"], entry["channels"]) == ("ws", [channel])
        response = await client.delete(f"/admin/api/connections/{entry['id']}", headers=ADMIN)
        assert response.status_code == 200
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(TIMEOUT):
                await ws.recv()
        assert ws.close_code == 1000
        assert ws.close_reason == "disconnected by the admin"
    await eventually(lambda: _gone(client, channel))


async def _listed_once(client: httpx.AsyncClient, channel: str) -> bool:
    return len(await listed(client, channel)) == 1


async def test_a_test_publish_reaches_subscribers(client: httpx.AsyncClient, channel: str) -> None:
    async with open_sse(client, f"/sse/{channel}") as reader:
        await reader.until(b"\n\n")
        response = await client.post(
            "/admin/api/publish", headers=ADMIN, json={"channel": channel, "data": {"ok": 1}}
        )
        assert response.json()["offset"] == 1
        [event] = await reader.events(1)
        assert json.loads(event.data) == {"ok": 1}


async def snapshots(client: httpx.AsyncClient) -> AsyncIterator[dict[str, Any]]:
    async with client.stream("GET", "/admin/api/events", headers=ADMIN) as response:
        assert response.status_code == 200
        reader = SSEReader(response)
        while True:
            [event] = await reader.events(1)
            assert event.event == "snapshot"
            yield json.loads(event.data)


async def test_the_snapshot_stream_follows_publishes(
    client: httpx.AsyncClient, channel: str
) -> None:
    async with open_sse(client, f"/sse/{channel}") as reader:
        await reader.until(b"\n\n")
        stream = snapshots(client)
        first = await anext(stream)
        assert first["connections"]["sse"] >= 1
        seen: dict[str, Any] = first
        # Publish until a snapshot shows the channel's rate (bounded in count and time).
        async with asyncio.timeout(TIMEOUT):
            for n in range(1, 200):
                await client.post("/api/publish", json={"channel": channel, "data": n})
                await reader.events(1)
                if n % 5:
                    continue
                seen = await anext(stream)
                if any(entry["channel"] == channel for entry in seen["top_rates"]):
                    break
        await stream.aclose()
    assert seen["publish_rate"] > 0
    assert seen["delivery_rate"] > 0
    assert seen["published"] > first["published"]
    assert {"channel": channel, "subscribers": 1} in seen["top_subscribers"]


async def test_event_streams_are_bounded(client: httpx.AsyncClient) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(MAX_STREAMS):
            response = await stack.enter_async_context(
                client.stream("GET", "/admin/api/events", headers=ADMIN)
            )
            assert response.status_code == 200
        refused = await client.get("/admin/api/events", headers=ADMIN)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "unavailable"
        assert "retry-after" in refused.headers

    # Once they close, a stream opens again.
    async def opens() -> bool:
        async with client.stream("GET", "/admin/api/events", headers=ADMIN) as response:
            return response.status_code == 200

    await eventually(opens)


async def test_recent_errors_show_what_the_server_logged() -> None:
    settings = Settings(log_level="warning", admin_key=ADMIN_KEY)
    async with (
        run_server(settings=settings) as url,
        httpx.AsyncClient(base_url=url, headers=ADMIN) as client,
    ):
        logging.getLogger("tidings.server").warning("disk %s is full", "/var")
        body = (await client.get("/admin/api/errors")).json()
        assert body["size"] == 100
        assert body["total"] == 1
        [entry] = body["errors"]
        assert (entry["level"], entry["logger"], entry["message"]) == (
            "warning",
            "tidings.server",
            "disk /var is full",
        )
        snapshot = (await client.get("/admin/api/snapshot")).json()
        assert snapshot["errors"]["recent"] == [entry]
