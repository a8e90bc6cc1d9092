"""The AI SDK chat endpoint on two ``tidings serve --backend redis`` processes.

The chat id's record is in Redis: a resume that reaches the other node finds
the chat's generation, replays it and follows it there, and the mark that it
was delivered is seen by both nodes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.env import TIMEOUT
from tests.support.fake_openai import FakeUpstream, Scenario
from tests.support.server import ServerProcess

TOKENS = [f"tok{index} " for index in range(12)]
BODY = {
    "id": "chat-redis",
    "model": "paused",
    "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}],
}


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
        "TIDINGS_LLM_GRACE": str(TIMEOUT * 0.4),
    }
    with ServerProcess(env=env) as node_a, ServerProcess(env=env) as node_b:
        yield node_a, node_b


async def chunks(lines: AsyncIterator[str], *, until: int | None = None) -> list[Any]:
    """The UI chunks of a response's lines, to its end or until ``until`` text deltas."""
    out: list[Any] = []
    async for line in lines:
        if not line.startswith("data: "):
            continue
        out.append(line[6:] if line == "data: [DONE]" else orjson.loads(line[6:]))
        if until is not None and sum(1 for c in out if is_delta(c)) == until:
            break
    return out


def is_delta(chunk: Any) -> bool:
    return isinstance(chunk, dict) and chunk["type"] == "text-delta"


async def test_a_chat_resumes_on_the_other_node(
    nodes: tuple[ServerProcess, ServerProcess], upstream: FakeUpstream
) -> None:
    scenario = upstream.scenario("paused", Scenario(pause_after=3))
    node_a, node_b = nodes
    async with (
        httpx.AsyncClient(base_url=node_a.url, timeout=TIMEOUT) as a,
        httpx.AsyncClient(base_url=node_b.url, timeout=TIMEOUT) as b,
    ):
        async with a.stream("POST", "/v1/ai-sdk/chat", json=BODY) as response:
            assert response.status_code == 200
            first = await chunks(response.aiter_lines(), until=3)
        async with b.stream("GET", "/v1/ai-sdk/chat/chat-redis/stream") as resumed:
            assert resumed.status_code == 200
            assert resumed.headers["x-vercel-ai-ui-message-stream"] == "v1"
            lines = resumed.aiter_lines()
            replay = await chunks(lines, until=1)
            # From the start, the same parts, what came before folded into one delta.
            assert [c for c in replay if not is_delta(c)] == [c for c in first if not is_delta(c)]
            assert [c["delta"] for c in replay if is_delta(c)] == ["".join(TOKENS[:3])]
            scenario.release.set()
            rest = await chunks(lines)
        assert [c["delta"] for c in rest if is_delta(c)] == TOKENS[3:]
        assert rest[-2:] == [{"type": "finish", "finishReason": "stop"}, "[DONE]"]
        # Delivered whole on node B: nothing to resume on either node.
        assert (await a.get("/v1/ai-sdk/chat/chat-redis/stream")).status_code == 204
        assert (await b.get("/v1/ai-sdk/chat/chat-redis/stream")).status_code == 204
