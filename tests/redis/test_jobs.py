"""Jobs on two servers sharing one Redis: state and events visible from both, cancels reach
the server that runs the job."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from tests.support.env import TIMEOUT
from tests.support.jobs import GATED_TWO_STEPS, Lab, start
from tests.support.sse import open_sse
from tidings.server import create_app
from tidings.settings import Settings
from tidings.testing import run_server

JSON = {"content-type": "application/json"}


@pytest.fixture
async def nodes(
    redis_url: str, redis_prefix: str
) -> AsyncIterator[tuple[Lab, httpx.AsyncClient, httpx.AsyncClient]]:
    """Two servers on one Redis; the jobs of each are the same Lab's."""
    lab = Lab()
    settings = Settings(
        log_level="warning", backend="redis", redis_url=redis_url, redis_prefix=redis_prefix
    )
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for _ in range(2):
            base = await stack.enter_async_context(
                run_server(create_app(settings=settings, jobs=lab.jobs), settings=settings)
            )
            client = httpx.AsyncClient(base_url=base, timeout=TIMEOUT)
            clients.append(await stack.enter_async_context(client))
        yield lab, clients[0], clients[1]


async def test_a_job_is_seen_and_cancelled_from_the_other_server(
    nodes: tuple[Lab, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    lab, a, b = nodes
    started = await start(a, "gated", number=1, steps=2)
    await lab.waiting(1)
    seen = (await b.get(f"/api/jobs/{started['id']}")).json()
    assert (seen["state"], seen["progress"]["message"]) == ("running", "step 2")
    assert seen["stream"] == started["stream"]
    assert "owner" not in seen
    async with open_sse(b, seen["stream"]) as reader:
        events = await reader.events(5)
        assert [event.event for event in events] == GATED_TWO_STEPS
        cancelled = await b.delete(f"/api/jobs/{started['id']}", headers=JSON)
        assert cancelled.status_code == 200
        assert cancelled.json()["state"] == "cancelled"
        assert lab.cleaned == [1]  # the cleanup ran on the server that runs the job
        last = (await reader.events(1))[0]
    assert (last.event, orjson.loads(last.data)["reason"]) == ("cancelled", "requested")
    assert (await a.get(f"/api/jobs/{started['id']}")).json()["state"] == "cancelled"


async def test_a_finished_job_answers_from_the_other_server(
    nodes: tuple[Lab, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    lab, a, b = nodes
    started = await start(a, "crowd", number=3)
    lab.everyone.set()
    async with open_sse(b, started["stream"]) as reader:
        events = await reader.events(4)
    assert events[-1].event == "completed"
    record = (await b.get(f"/api/jobs/{started['id']}")).json()
    assert (record["state"], record["result"]) == ("completed", 3)
    again = await b.delete(f"/api/jobs/{started['id']}", headers=JSON)
    assert again.json()["state"] == "completed"  # a finished job stays as it is
    for client in (a, b):
        missing = await client.get("/api/jobs/0123456789abcdef0123456789abcdef")
        assert missing.status_code == 404
    # The records, with their owners, are for the servers only.
    hidden = await b.get(f"/api/history/jobstate:{started['id']}")
    assert hidden.status_code == 403
