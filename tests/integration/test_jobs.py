"""/api/jobs end to end: a real server, jobs of the test's own, httpx and SSE clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.support.env import TIMEOUT
from tests.support.jobs import GATED_TWO_STEPS, Lab, start
from tests.support.sse import open_sse
from tidings.hub import Hub
from tidings.server import create_app
from tidings.server.auth import mint_token
from tidings.settings import Settings
from tidings.testing import run_server

JSON = {"content-type": "application/json"}
SECRET = "a-jobs-test-secret-of-32-bytes!!"
API_KEY = "a-jobs-test-api-key"


@pytest.fixture
def lab() -> Lab:
    return Lab()


def settings(**values: Any) -> Settings:
    # The tests' client is one anonymous address: its share is the whole queue
    # unless a test asks for less.
    values.setdefault("jobs_per_client", 200)
    return Settings(log_level="warning", jobs_workers=4, jobs_queue=96, jobs_max=200, **values)


@pytest.fixture(params=["fast", "asgi"])
async def url(lab: Lab, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    config = settings()
    app = create_app(settings=config, jobs=lab.jobs)
    async with run_server(app, settings=config, fast_write=request.param == "fast") as base:
        yield base


@pytest.fixture
async def http(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        yield client


async def test_a_job_streams_its_progress_and_answers_its_state(
    http: httpx.AsyncClient, lab: Lab
) -> None:
    started = await start(http, "gated", number=1, steps=2)
    channel = f"jobs:{started['id']}"
    assert started["stream"].startswith(f"/sse?channel={channel}&last_event_id={channel}:")
    assert started["state"] == "queued"
    async with open_sse(http, started["stream"]) as reader:
        first = await reader.events(5)
        assert [event.event for event in first] == GATED_TWO_STEPS
        assert orjson.loads(first[4].data)["result"] == {"step": 2}
        await lab.waiting(1)
        record = (await http.get(f"/api/jobs/{started['id']}")).json()
        assert record["state"] == "running"
        assert record["progress"]["message"] == "step 2"
        lab.gates[1].set()
        last = await reader.events(2)
    assert [event.event for event in last] == ["progress", "completed"]
    assert orjson.loads(last[1].data)["result"] == {"number": 1}
    record = (await http.get(f"/api/jobs/{started['id']}")).json()
    assert (record["state"], record["result"], record["error"]) == (
        "completed",
        {"number": 1},
        None,
    )
    assert record["progress"] == {"percent": 100.0, "message": "done"}


async def test_a_job_cancelled_midway_runs_its_cleanup(http: httpx.AsyncClient, lab: Lab) -> None:
    started = await start(http, "gated", number=5)
    async with open_sse(http, started["stream"]) as reader:
        await lab.waiting(5)
        assert lab.cleaned == []
        response = await http.delete(f"/api/jobs/{started['id']}", headers=JSON)
        assert response.status_code == 200
        assert response.json()["state"] == "cancelled"
        assert lab.cleaned == [5]
        events = await reader.events(5)
    assert [event.event for event in events][-1] == "cancelled"
    assert orjson.loads(events[-1].data)["reason"] == "requested"
    assert (await http.get(f"/api/jobs/{started['id']}")).json()["state"] == "cancelled"


async def test_a_hundred_jobs_on_four_workers_run_in_order_and_a_full_queue_refuses(
    http: httpx.AsyncClient, lab: Lab
) -> None:
    ids = [(await start(http, "crowd", number=number))["id"] for number in range(100)]
    refused = await http.post("/api/jobs/crowd", json={"number": 100})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    await lab.waiting(0, 1, 2, 3)
    listing = (await http.get("/api/jobs")).json()
    assert (listing["running"], listing["queued"]) == (4, 96)
    stats = (await http.get("/api/stats")).json()["jobs"]
    assert (stats["running"], stats["queued"], stats["started"]) == (4, 96, 4)
    lab.everyone.set()
    for job_id in ids:
        stream = (await http.get(f"/api/jobs/{job_id}")).json()["stream"]
        async with open_sse(http, stream) as reader:
            async with asyncio.timeout(TIMEOUT):
                while (await reader.events(1))[0].event != "completed":
                    pass
    assert lab.started == list(range(100))
    assert lab.most_running == 4
    records = (await http.get("/api/jobs?limit=100")).json()["jobs"]
    assert [record["id"] for record in records] == ids
    assert [record["result"] for record in records] == list(range(100))
    assert all(record["state"] == "completed" for record in records)
    ends = [record["ended"] for record in records]
    starts = [record["started"] for record in records]
    # Four at a time, in order: job n + 4 starts only once one of the first n + 4 has ended.
    assert all(starts[n + 4] >= min(ends[: n + 4]) for n in range(96))


async def test_the_progress_stream_resumes_exactly_after_a_reconnect(
    http: httpx.AsyncClient, lab: Lab
) -> None:
    started = await start(http, "gated", number=9, steps=3)
    async with open_sse(http, started["stream"]) as reader:
        before = await reader.events(4)
        cursor = before[-1].id  # the reader may have decoded more than it returned
        assert cursor
    assert [event.event for event in before] == ["queued", "started", "log", "progress"]
    await lab.waiting(9)
    lab.gates[9].set()
    async with open_sse(http, started["stream"], headers={"last-event-id": cursor}) as reader:
        after = await reader.events(4)
    assert [event.event for event in after] == ["progress", "progress", "progress", "completed"]
    assert [orjson.loads(event.data).get("result") for event in after[:3]] == [
        {"step": 2},
        {"step": 3},
        {"number": 9},
    ]
    history = (await http.get(f"/api/history/jobs:{started['id']}")).json()["events"]
    assert [event["event"] for event in history] == [event.event for event in (*before, *after)]


async def test_bad_requests_change_nothing(http: httpx.AsyncClient, lab: Lab) -> None:
    unknown = await http.post("/api/jobs/nope", json={})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {"code": "not_found", "message": "no job 'nope'"}
    cases = [
        ({}, "number", "is required"),
        ({"number": "1"}, "number", "must be an integer, not a string"),
        ({"number": 1, "steps": 1.5}, "steps", "must be an integer"),
        ({"number": 1, "colour": "red"}, "colour", "takes no such argument"),
    ]
    for body, field, reason in cases:
        response = await http.post("/api/jobs/gated", json=body)
        assert response.status_code == 422, body
        error = response.json()["error"]
        assert error["code"] == "invalid_value"
        assert f"argument {field!r}" in error["message"]
        assert reason in error["message"]
    for content in (b"[1]", b'"x"'):
        response = await http.post("/api/jobs/gated", content=content, headers=JSON)
        assert response.status_code == 422
    broken = await http.post("/api/jobs/gated", content=b"{", headers=JSON)
    assert (broken.status_code, broken.json()["error"]["code"]) == (400, "invalid_json")
    text = await http.post("/api/jobs/gated", content=b"{}", headers={"content-type": "text/plain"})
    assert text.status_code == 415
    for method in ("GET", "DELETE"):
        missing = await http.request(method, "/api/jobs/0123456789abcdef", headers=JSON)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
    for query in ("limit=0", "limit=101", "limit=x", "cursor=nope"):
        response = await http.get(f"/api/jobs?{query}")
        assert response.status_code == 400, query
    listing = (await http.get("/api/jobs")).json()
    assert (listing["jobs"], listing["next"], listing["queued"]) == ([], None, 0)
    assert [job["name"] for job in listing["available"]] == ["crowd", "gated"]
    assert lab.started == []


async def test_listing_pages_through_the_jobs(http: httpx.AsyncClient, lab: Lab) -> None:
    ids = [(await start(http, "crowd", number=number))["id"] for number in range(5)]
    first = (await http.get("/api/jobs?limit=2")).json()
    assert [job["id"] for job in first["jobs"]] == ids[:2]
    assert first["next"] == ids[1]
    rest = (await http.get(f"/api/jobs?limit=5&cursor={first['next']}")).json()
    assert [job["id"] for job in rest["jobs"]] == ids[2:]
    assert rest["next"] is None
    lab.everyone.set()


# -- who may -----------------------------------------------------------------------------------


@pytest.fixture
async def secured(lab: Lab) -> AsyncIterator[str]:
    config = settings(jwt_secret=SECRET, api_keys=f"ops:{API_KEY}")
    app = create_app(settings=config, jobs=lab.jobs)
    async with run_server(app, settings=config) as base:
        yield base


def bearer(sub: str, **grants: list[str]) -> dict[str, str]:
    token = mint_token(SECRET, sub=sub, ttl=600, grants=grants)
    return {"authorization": f"Bearer {token}"}


async def test_who_may_start_see_and_cancel_jobs(secured: str, lab: Lab) -> None:
    async with httpx.AsyncClient(base_url=secured, timeout=TIMEOUT) as http:
        anonymous = await http.post("/api/jobs/gated", json={"number": 1})
        assert anonymous.status_code == 401
        assert (await http.get("/api/jobs")).status_code == 401
        no_claim = await http.post("/api/jobs/gated", json={"number": 1}, headers=bearer("ann"))
        assert no_claim.status_code == 403
        assert no_claim.json()["error"]["message"] == "jobs.start is not allowed on job 'gated'"
        ann = bearer("ann", jobs=["gat*"], subscribe=["jobs:*"])
        mine = await http.post("/api/jobs/gated", json={"number": 1}, headers=ann)
        assert mine.status_code == 202
        job = f"/api/jobs/{mine.json()['id']}"
        assert (
            await http.post("/api/jobs/crowd", json={"number": 2}, headers=ann)
        ).status_code == 403
        bob = bearer("bob", jobs=["*"])
        assert (await http.get(job, headers=bob)).status_code == 404
        assert (await http.delete(job, headers=bob)).status_code == 404
        assert (await http.get("/api/jobs", headers=bob)).json()["jobs"] == []
        assert (await http.get(job, headers=ann)).json()["state"] in ("queued", "running")
        async with open_sse(http, mine.json()["stream"], headers=ann) as reader:
            assert (await reader.events(1))[0].event == "queued"
        refused = await http.get(mine.json()["stream"], headers=bob)
        assert refused.status_code == 403
        key = {"x-api-key": API_KEY}
        listing = (await http.get("/api/jobs", headers=key)).json()
        assert [record["id"] for record in listing["jobs"]] == [mine.json()["id"]]
        await lab.waiting(1)
        cancelled = await http.delete(job, headers=key)
        assert cancelled.json()["state"] == "cancelled"
        assert lab.cleaned == [1]


async def test_the_jobs_namespace_may_let_anonymous_clients_in(lab: Lab) -> None:
    config = settings(jwt_secret=SECRET, namespaces={"jobs": {"anonymous": True}})
    async with (
        run_server(create_app(settings=config, jobs=lab.jobs), settings=config) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
    ):
        started = await start(http, "crowd", number=1)
        async with open_sse(http, started["stream"]) as reader:
            assert (await reader.events(1))[0].event == "queued"
            lab.everyone.set()
            events = await reader.events(3)
        assert [event.event for event in events] == ["started", "progress", "completed"]
        forged = await http.post(
            "/api/publish", json={"channel": f"jobs:{started['id']}", "data": 1}
        )
        assert forged.status_code == 403


async def test_one_client_cannot_fill_the_queue_for_everyone(lab: Lab) -> None:
    config = settings(jobs_per_client=2)
    app = create_app(settings=config, jobs=lab.jobs)
    async with (
        run_server(app, settings=config) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
    ):
        first = await start(http, "gated", number=1)
        await start(http, "gated", number=2)
        refused = await http.post("/api/jobs/gated", json={"number": 3})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == {
            "code": "queue_full",
            "message": "queue is full (2 items for this client)",
        }
        assert len((await http.get("/api/jobs")).json()["jobs"]) == 2  # nothing kept of it
        await lab.waiting(1)
        lab.open(1)
        async with open_sse(http, first["stream"]) as reader, asyncio.timeout(TIMEOUT):
            while (await reader.events(1))[0].event != "completed":
                pass
        again = await http.post("/api/jobs/gated", json={"number": 4})
        assert again.status_code == 202, again.text  # a finished job gave its share back
        lab.open(2)
        lab.open(4)


async def test_a_server_that_stops_cancels_its_jobs(lab: Lab) -> None:
    config = settings(drain_timeout=1.0)
    app = create_app(settings=config, jobs=lab.jobs)
    async with (
        run_server(app, settings=config) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
    ):
        running = await start(http, "gated", number=1)
        await lab.waiting(1)
        for number in (2, 3, 4, 5):
            await start(http, "gated", number=number)
    assert sorted(lab.cleaned) == [1, 2, 3, 4]  # job 5 waited, and never started
    records = app.state.tidings.runner.page()
    assert records[0].id == running["id"]
    assert [record.state for record in records] == ["cancelled"] * 5


async def test_jobs_of_a_server_mounted_under_a_prefix(lab: Lab) -> None:
    hub = Hub()
    config = settings()
    tidings_app = create_app(hub, config, jobs=lab.jobs)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A mounted app gets no lifespan: the hub is started here and the server's
        # jobs are stopped here; the first job starts the worker pool.
        async with hub:
            yield
            await tidings_app.state.tidings.shutdown(close_hub=False)

    outer = Starlette(lifespan=lifespan, routes=[Mount("/rt", tidings_app)])
    async with (
        run_server(outer, settings=config) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
    ):
        response = await http.post("/rt/api/jobs/crowd", json={"number": 1})
        assert response.status_code == 202
        started = response.json()
        assert response.headers["location"] == f"/rt/api/jobs/{started['id']}"
        assert started["stream"].startswith(f"/rt/sse?channel=jobs:{started['id']}&")
        lab.everyone.set()
        async with open_sse(http, started["stream"]) as reader:
            events = await reader.events(4)
        assert [event.event for event in events] == ["queued", "started", "progress", "completed"]
        record = (await http.get(f"/rt/api/jobs/{started['id']}")).json()
        assert (record["state"], record["stream"]) == ("completed", started["stream"])


async def test_a_draining_server_refuses_new_jobs(lab: Lab) -> None:
    config = settings()
    app = create_app(settings=config, jobs=lab.jobs)
    async with (
        run_server(app, settings=config) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
    ):
        await app.state.tidings.drain(wait=0.1)
        refused = await http.post("/api/jobs/crowd", json={"number": 1})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "unavailable"
        assert refused.headers["retry-after"] == "1"
        assert "accepts no jobs" in refused.json()["error"]["message"]
        assert lab.started == []
