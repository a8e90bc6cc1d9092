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
from tidings.server.auth import mint_token

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


async def start(
    client: httpx.AsyncClient, model: str, events: int, headers: dict[str, str] | None = None
) -> str:
    """POST a streamed completion, read ``events`` chunks, drop it; return the stream id."""
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "stream": True}
    async with client.stream(
        "POST", "/v1/chat/completions", json=body, headers=headers
    ) as response:
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
    assert (last.event, end["status"], end["reason"]) == ("end", "cancelled", "unheard")


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
    assert (last.event, end["status"], end["reason"]) == ("end", "cancelled", "deleted")


async def test_a_late_viewer_on_another_node_gets_a_snapshot_then_the_rest(
    nodes: tuple[ServerProcess, ServerProcess], upstream: FakeUpstream
) -> None:
    scenario = upstream.scenario("paused", Scenario(pause_after=3))
    node_a, node_b = nodes
    async with (
        httpx.AsyncClient(base_url=node_a.url, timeout=TIMEOUT) as a,
        httpx.AsyncClient(base_url=node_b.url, timeout=TIMEOUT) as b,
    ):
        stream_id = await start(a, "paused", 4)  # the role chunk and three tokens
        async with open_sse(b, f"/v1/streams/{stream_id}?snapshot=1") as viewer:
            (snapshot,) = await viewer.events(1)
            scenario.release.set()
            rest = []
            while not rest or rest[-1].event != "end":
                rest += await viewer.events(1)
    (choice,) = orjson.loads(snapshot.data)["choices"]
    assert choice["delta"] == {"role": "assistant", "content": "tok0 tok1 tok2 "}
    offsets = [int(event.id.rsplit(":", 1)[1]) for event in (snapshot, *rest)]
    assert offsets == list(range(4, 4 + len(offsets)))
    text = "".join(
        c["delta"].get("content") or ""
        for event in rest
        if event.event == "message"
        for c in orjson.loads(event.data)["choices"]
    )
    assert text == "".join(scenario.tokens[3:])


JWT_SECRET = "a-redis-test-secret-of-32-bytes-or-more"
API_KEY = "ops-key-0123456789abcdef"


def bearer(sub: str) -> dict[str, str]:
    return {"authorization": f"Bearer {mint_token(JWT_SECRET, sub=sub, ttl=600)}"}


@pytest.fixture
def secured_nodes(
    redis_url: str, redis_prefix: str, upstream: FakeUpstream
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {
        "TIDINGS_BACKEND": "redis",
        "TIDINGS_REDIS_URL": redis_url,
        "TIDINGS_REDIS_PREFIX": redis_prefix,
        "TIDINGS_LLM_BASE_URL": upstream.base_url,
        "TIDINGS_JWT_SECRET": JWT_SECRET,
        "TIDINGS_API_KEYS": f"ops:{API_KEY}",
    }
    with ServerProcess(env=env) as node_a, ServerProcess(env=env) as node_b:
        yield node_a, node_b


async def test_the_owner_of_a_generation_is_known_on_every_node(
    secured_nodes: tuple[ServerProcess, ServerProcess], upstream: FakeUpstream
) -> None:
    scenario = upstream.scenario("paused", Scenario(pause_after=3))
    node_a, node_b = secured_nodes
    async with (
        httpx.AsyncClient(base_url=node_a.url, timeout=TIMEOUT) as a,
        httpx.AsyncClient(base_url=node_b.url, timeout=TIMEOUT) as b,
    ):
        stream_id = await start(a, "paused", 4, headers=bearer("alice"))
        running = upstream.calls[0]
        path = f"/v1/streams/{stream_id}"
        for method in ("GET", "DELETE"):
            refused = await b.request(method, path, headers=bearer("bob"))
            assert refused.status_code == 404
            assert refused.json()["error"]["code"] == "not_found"
        history = await b.get(f"/api/history/llm:{stream_id}", headers=bearer("bob"))
        assert history.status_code in (401, 403)
        assert not running.disconnected.is_set()
        # Alice resumes on node B, after the three chunks she had read.
        async with open_sse(b, path + "?after=4", headers=bearer("alice")) as viewer:
            scenario.release.set()
            # The nine other tokens, the finish chunk, the usage chunk, the end.
            rest = await viewer.events(len(scenario.tokens) - 3 + 3)
        last = rest[-1]
        text = "".join(
            orjson.loads(event.data)["choices"][0]["delta"].get("content", "")
            for event in rest
            if event.event == "message"
        )
        assert text == "".join(scenario.tokens[3:])
        assert last.event == "end"
        assert orjson.loads(last.data) == {"status": "completed"}
        assert b"alice" not in bytes(viewer.raw)
        # After the end, too: bob still sees nothing, a server key sees it.
        assert (await b.get(path, headers=bearer("bob"))).status_code == 404
        assert (await b.get(path, headers={"x-api-key": API_KEY})).status_code == 200
