"""The LLM relay on two ``tidings serve --backend redis`` processes: one relay across nodes.

A generation runs on the node that got its POST; a viewer on the other node
keeps it alive past the grace period ("heard" messages over Redis) and a
DELETE on the other node reaches the node that runs the upstream request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.env import TIMEOUT
from tests.support.fake_openai import FakeUpstream, Scenario
from tests.support.server import ServerProcess
from tests.support.sse import SSEReader, open_sse

MESSAGES = [{"role": "user", "content": "Say something."}]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def nodes(
    redis_url: str, redis_prefix: str, upstream: FakeUpstream
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {
        "TIDINGS_BACKEND": "redis",
        "TIDINGS_REDIS_URL": redis_url,
        "TIDINGS_REDIS_PREFIX": redis_prefix,
        "TIDINGS_LLM_BASE_URL": upstream.base_url,
        "TIDINGS_LLM_GRACE": str(TIMEOUT * 0.4),  # "heard" goes every third of it
    }
    with ServerProcess(env=env) as node_a, ServerProcess(env=env) as node_b:
        yield node_a, node_b


async def start(client: httpx.AsyncClient, model: str, events: int) -> str:
    """POST a streamed completion, read ``events`` chunks, drop it; return the stream id."""
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        reader = SSEReader(response)
        await reader.events(events)
        await reader.aclose()
        return response.headers["x-tidings-stream-id"]


async def test_a_viewer_on_another_node_keeps_a_generation_alive(
    nodes: tuple[ServerProcess, ServerProcess], upstream: FakeUpstream
) -> None:
    upstream.scenario("paused", Scenario(pause_after=3))
    upstream.scenario("unheard", Scenario(pause_after=1))
    node_a, node_b = nodes
    async with (
        httpx.AsyncClient(base_url=node_a.url, timeout=TIMEOUT) as a,
        httpx.AsyncClient(base_url=node_b.url, timeout=TIMEOUT) as b,
    ):
        stream_id = await start(a, "paused", 4)
        watched = upstream.calls[0]
        async with open_sse(b, f"/v1/streams/{stream_id}") as viewer:
            await viewer.events(4)
            # Started later on node A and heard by nobody: once it is
            # cancelled, the watched generation has outlived its grace too.
            await start(a, "unheard", 2)
            unheard = await upstream.next_call(2, TIMEOUT)
            async with asyncio.timeout(TIMEOUT):
                await unheard.disconnected.wait()
            assert not watched.disconnected.is_set()
        # The viewer is gone: node A cancels it as unheard.
        async with asyncio.timeout(TIMEOUT):
            await watched.disconnected.wait()
        async with open_sse(b, f"/v1/streams/{stream_id}") as replay:
            (*_, last) = await replay.events(5)
    end = orjson.loads(last.data)
    assert (last.type, end["status"], end["reason"]) == ("end", "cancelled", "unheard")


async def test_a_delete_on_another_node_closes_the_upstream_request(
    nodes: tuple[ServerProcess, ServerProcess], upstream: FakeUpstream
) -> None:
    upstream.scenario("paused", Scenario(pause_after=3))
    node_a, node_b = nodes
    async with (
        httpx.AsyncClient(base_url=node_a.url, timeout=TIMEOUT) as a,
        httpx.AsyncClient(base_url=node_b.url, timeout=TIMEOUT) as b,
    ):
        stream_id = await start(a, "paused", 4)
        async with open_sse(b, f"/v1/streams/{stream_id}") as viewer:
            await viewer.events(4)
            deleted = await b.delete(
                f"/v1/streams/{stream_id}", headers={"content-type": "application/json"}
            )
            assert deleted.status_code == 200
            assert deleted.json()["status"] == "cancelled"
            async with asyncio.timeout(TIMEOUT):
                await upstream.calls[0].disconnected.wait()
            (last,) = await viewer.events(1)
    end = orjson.loads(last.data)
    assert (last.type, end["status"], end["reason"]) == ("end", "cancelled", "deleted")
