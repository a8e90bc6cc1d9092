"""No silent loss: a generation whose node is killed (kill -9) ends as ``lost`` on the others.

Two ``tidings serve --backend redis`` processes with a 1 s lease: node A runs
a paused generation, node B has a viewer; A dies; within the lease, B's
viewer gets the ``end`` with ``generation_lost``, once, and so does any
later viewer; the record on B says ``lost``, and B's ``proxy_complete_url``
receives it once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.redis.test_llm import start
from tests.support.env import TIMEOUT
from tests.support.fake_openai import FakeUpstream, Scenario
from tests.support.server import ServerProcess
from tests.support.sse import open_sse
from tidings.testing import run_server

LEASE = 1.0
ACCEPT_JSON = {"accept": "application/json"}


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


class Billing:
    """The user's backend for ``proxy_complete_url``: keeps the records it is POSTed."""

    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []
        self.received = asyncio.Event()
        self.app = Starlette(routes=[Route("/complete", self.complete, methods=["POST"])])

    async def complete(self, request: Request) -> Response:
        self.records.append(orjson.loads(await request.body()))
        self.received.set()
        return Response(status_code=204)


@pytest.fixture
async def billing() -> AsyncIterator[tuple[Billing, str]]:
    backend = Billing()
    async with run_server(backend.app) as base:
        yield backend, base + "/complete"


@pytest.fixture
def nodes(
    redis_url: str, redis_prefix: str, upstream: FakeUpstream, billing: tuple[Billing, str]
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {
        "TIDINGS_BACKEND": "redis",
        "TIDINGS_REDIS_URL": redis_url,
        "TIDINGS_REDIS_PREFIX": redis_prefix,
        "TIDINGS_LLM_BASE_URL": upstream.base_url,
        "TIDINGS_LLM_GRACE": str(TIMEOUT),
        "TIDINGS_LLM_LEASE": str(LEASE),
        "TIDINGS_PROXY_COMPLETE_URL": billing[1],
    }
    with ServerProcess(env=env) as node_a, ServerProcess(env=env) as node_b:
        yield node_a, node_b


async def test_a_killed_nodes_generation_ends_lost_for_viewers_elsewhere(
    nodes: tuple[ServerProcess, ServerProcess],
    upstream: FakeUpstream,
    billing: tuple[Billing, str],
) -> None:
    upstream.scenario("paused", Scenario(pause_after=3))
    node_a, node_b = nodes
    async with httpx.AsyncClient(base_url=node_b.url, timeout=TIMEOUT) as b:
        async with httpx.AsyncClient(base_url=node_a.url, timeout=TIMEOUT) as a:
            stream_id = await start(a, "paused", 3)
        async with open_sse(b, f"/v1/streams/{stream_id}") as viewer:
            assert len(await viewer.events(4)) == 4  # role + tok0..tok2
            # Alive past its lease: node A renews it.
            await asyncio.sleep(LEASE * 1.5)
            running = await b.get(f"/v1/streams/{stream_id}", headers=ACCEPT_JSON)
            assert running.json()["status"] == "running"
            node_a.kill()
            [end] = await viewer.events(1)
        assert end.event == "end"
        data = orjson.loads(end.data)
        assert data["status"] == "lost"
        assert data["error"]["code"] == "generation_lost"
        # A new viewer on B gets the whole generation and the same end, once.
        async with open_sse(b, f"/v1/streams/{stream_id}") as late:
            events = await late.events(5)
        assert [event.event for event in events][-1] == "end"
        assert orjson.loads(events[-1].data) == data
        record = await b.get(f"/v1/streams/{stream_id}", headers=ACCEPT_JSON)
        assert record.json()["status"] == "lost"
        assert record.json()["text"] == "tok0 tok1 tok2 "
        history = await b.get(f"/api/history/llm:{stream_id}")
        ends = [event for event in history.json()["events"] if event.get("event") == "end"]
        assert len(ends) == 1
    # The hook of the lost generation ran on B, once: the server that declared it.
    async with asyncio.timeout(TIMEOUT):
        await billing[0].received.wait()
    [billed] = billing[0].records
    assert billed == record.json()
