"""After the stream: the on_complete hook on each ending, and the record over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.integration.test_llm import (
    JSON,
    JWT_SECRET,
    MESSAGES,
    post_stream,
    read_to_end,
    relay_settings,
    token,
)
from tests.support.env import TIMEOUT
from tests.support.fake_openai import FakeUpstream, Scenario
from tests.support.sse import open_sse
from tidings.llm import GenerationRecord
from tidings.server.app import create_app
from tidings.testing import run_server

ACCEPT_JSON = {"accept": "application/json"}


class Recorder:
    """An on_complete hook: the records it was given, by generation id."""

    def __init__(self) -> None:
        self.records: dict[str, list[GenerationRecord]] = {}
        self._changed = asyncio.Condition()

    async def __call__(self, record: GenerationRecord) -> None:
        async with self._changed:
            self.records.setdefault(record.id, []).append(record)
            self._changed.notify_all()

    async def wait(self, generation_id: str) -> GenerationRecord:
        async with asyncio.timeout(TIMEOUT), self._changed:
            await self._changed.wait_for(lambda: generation_id in self.records)
        [record] = self.records[generation_id]
        return record


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def hook() -> Recorder:
    return Recorder()


@pytest.fixture
async def http(upstream: FakeUpstream, hook: Recorder) -> AsyncIterator[httpx.AsyncClient]:
    settings = relay_settings(upstream, grace=0.2)
    app = create_app(settings=settings, on_complete=hook)
    async with (
        run_server(app, settings=settings) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        yield client


async def get_record(http: httpx.AsyncClient, stream_id: str, **headers: str) -> Any:
    response = await http.get(f"/v1/streams/{stream_id}", headers=ACCEPT_JSON | headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


async def test_a_finished_generation_is_recorded_and_served(
    http: httpx.AsyncClient, upstream: FakeUpstream, hook: Recorder
) -> None:
    async with post_stream(http, stream_options={"include_usage": True}) as (response, reader):
        stream_id = response.headers["x-tidings-stream-id"]
        await read_to_end(reader)
    record = await hook.wait(stream_id)
    assert record.status == "completed"
    assert record.text == "".join(upstream.default.tokens)
    assert record.tokens == len(upstream.default.tokens)
    assert record.usage is not None
    assert record.time_to_first_token is not None
    assert record.duration is not None
    assert record.duration >= record.time_to_first_token
    served = await get_record(http, stream_id)
    assert served == record.to_json()
    assert served["object"] == "tidings.generation"
    # Asking for the stream (or for anything) still gets today's SSE replay.
    for accept in ("text/event-stream", "*/*", "application/json, text/event-stream"):
        async with open_sse(http, f"/v1/streams/{stream_id}", headers={"accept": accept}) as sse:
            assert (await read_to_end(sse))[-1].event == "end"


async def test_a_running_generation_says_running(
    http: httpx.AsyncClient, upstream: FakeUpstream, hook: Recorder
) -> None:
    upstream.scenario("paused", Scenario(pause_after=2))
    async with post_stream(http, model="paused") as (response, reader):
        stream_id = response.headers["x-tidings-stream-id"]
        await reader.events(2)
        running = await get_record(http, stream_id)
        assert running["status"] == "running"
        assert running["duration"] is None
        assert not hook.records
        deleted = await http.delete(f"/v1/streams/{stream_id}", headers=JSON)
        assert deleted.json()["status"] == "cancelled"
        await read_to_end(reader)
    record = await hook.wait(stream_id)
    assert (record.status, record.reason) == ("cancelled", "deleted")
    assert record.error is not None
    assert record.error["code"] == "cancelled"
    assert record.text == "tok0 tok1 "
    assert await get_record(http, stream_id) == record.to_json()


async def test_an_unheard_generation_is_recorded_as_such(
    http: httpx.AsyncClient, upstream: FakeUpstream, hook: Recorder
) -> None:
    upstream.scenario("paused", Scenario(pause_after=2))
    async with post_stream(http, model="paused") as (response, reader):
        stream_id = response.headers["x-tidings-stream-id"]
        await reader.events(2)
    # The client went away: after the grace period, the generation is cancelled.
    record = await hook.wait(stream_id)
    assert (record.status, record.reason) == ("cancelled", "unheard")
    assert (await get_record(http, stream_id))["reason"] == "unheard"


async def test_a_failed_upstream_is_recorded_with_its_error(
    http: httpx.AsyncClient, upstream: FakeUpstream, hook: Recorder
) -> None:
    upstream.scenario("failing", Scenario(fail_after=3))
    async with post_stream(http, model="failing") as (response, reader):
        stream_id = response.headers["x-tidings-stream-id"]
        await read_to_end(reader)
    record = await hook.wait(stream_id)
    assert record.status == "failed"
    assert record.reason is None
    assert record.error is not None
    assert record.error["type"] == "upstream_error"
    assert record.text == "tok0 tok1 tok2 "
    assert await get_record(http, stream_id) == record.to_json()


async def test_an_unknown_or_someone_elses_record_is_a_404(upstream: FakeUpstream) -> None:
    upstream.scenario("paused", Scenario(pause_after=1))
    settings = dataclasses.replace(relay_settings(upstream), jwt_secret=JWT_SECRET)
    alice = {"authorization": f"Bearer {token('alice')}"}
    bob = {"authorization": f"Bearer {token('bob')}"}
    async with (
        run_server(settings=settings) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
    ):
        document = {"model": "paused", "messages": MESSAGES, "stream": True}
        async with http.stream(
            "POST", "/v1/chat/completions", json=document, headers=alice
        ) as response:
            stream_id = response.headers["x-tidings-stream-id"]
            mine = await get_record(http, stream_id, **alice)
            assert mine["status"] == "running"
            theirs = await http.get(f"/v1/streams/{stream_id}", headers=ACCEPT_JSON | bob)
            unknown = await http.get("/v1/streams/chatcmpl-0", headers=ACCEPT_JSON | alice)
            assert theirs.status_code == unknown.status_code == 404
            assert theirs.json()["error"]["code"] == "not_found"
            await http.delete(f"/v1/streams/{stream_id}", headers=JSON | alice)
