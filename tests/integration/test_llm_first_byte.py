"""The first byte of a streamed answer, and what a client's disconnect does to its generation.

The official openai SDK and httpx against a real server relaying a fake
upstream whose first token comes late (``Scenario.first_delay``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.integration.test_llm import (
    JSON,
    MESSAGES,
    contents,
    post_stream,
    read_to_end,
    relay_settings,
)
from tests.support.env import TIMEOUT
from tests.support.fake_openai import FakeUpstream, Scenario
from tests.support.sse import open_sse
from tidings.testing import run_server

#: Seconds between keepalive comments in these tests.
KEEPALIVE = 0.1


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@contextlib.asynccontextmanager
async def serve(upstream: FakeUpstream, **llm: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A server relaying ``upstream`` and an httpx client of it."""
    settings = relay_settings(upstream, **llm)
    settings = type(settings)(log_level="warning", llm=settings.llm, sse_keepalive=KEEPALIVE)
    async with (
        run_server(settings=settings) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        yield client


# -- the first byte -------------------------------------------------------------------


async def test_headers_and_pings_go_out_before_the_first_token(upstream: FakeUpstream) -> None:
    upstream.scenario("late", Scenario(first_delay=5 * KEEPALIVE))
    async with serve(upstream) as http, post_stream(http, model="late") as (response, reader):
        assert response.headers["x-tidings-stream-id"].startswith("chatcmpl-")
        call = await upstream.next_call(1, TIMEOUT)
        await reader.until(b": ping\n\n: ping\n\n")  # the first at once, then keepalives
        assert call.tokens_sent == 0
        events = await read_to_end(reader)
    raw = bytes(reader.raw)
    assert raw.startswith(b": ping\n\n")  # with the headers, before the upstream answered
    assert raw.index(b": ping\n\n: ping\n\n") < raw.index(b'"content":"tok0 "')
    assert raw.endswith(b"data: [DONE]\n\n")
    assert contents(events) == "".join(upstream.default.tokens)


async def test_an_error_before_the_first_token_reaches_the_sdk(upstream: FakeUpstream) -> None:
    # The "quick-" provider times out after 0.5 s without a token.
    upstream.scenario("quick-late", Scenario(first_delay=TIMEOUT))
    async with serve(upstream) as http:
        sdk = openai.AsyncOpenAI(
            base_url=str(http.base_url.join("/v1")),
            api_key="unused",
            max_retries=0,
            timeout=TIMEOUT,
        )
        async with sdk:
            stream = await sdk.chat.completions.create(
                model="quick-late", messages=MESSAGES, stream=True
            )
            with pytest.raises(openai.APIError) as raised:
                async for chunk in stream:  # the upstream's role chunk, no token
                    assert not chunk.choices[0].delta.content
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "timeout"
    assert raised.value.body["type"] == "upstream_error"
    async with asyncio.timeout(TIMEOUT):
        await upstream.calls[0].disconnected.wait()


async def test_a_delete_before_the_first_token_reaches_the_sdk(upstream: FakeUpstream) -> None:
    upstream.scenario("late", Scenario(first_delay=TIMEOUT))
    async with serve(upstream) as http:
        sdk = openai.AsyncOpenAI(
            base_url=str(http.base_url.join("/v1")),
            api_key="unused",
            max_retries=0,
            timeout=TIMEOUT,
        )
        async with sdk:
            raw = await sdk.chat.completions.with_raw_response.create(
                model="late", messages=MESSAGES, stream=True
            )
            stream_id = raw.headers["x-tidings-stream-id"]
            stream = raw.parse()
            deleted = await http.delete(f"/v1/streams/{stream_id}", headers=JSON)
            assert deleted.json()["status"] == "cancelled"
            with pytest.raises(openai.APIError, match="cancelled") as raised:
                async for chunk in stream:  # the upstream's role chunk, no token
                    assert not chunk.choices[0].delta.content
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "cancelled"


async def test_a_refusal_before_any_upstream_call_is_still_an_http_error(
    upstream: FakeUpstream,
) -> None:
    scenario = upstream.scenario("paused", Scenario(pause_after=1))
    async with serve(upstream, max_generations=1) as http:
        async with post_stream(http, model="paused") as (_, reader):
            await reader.events(1)
            document = {"model": "fake", "messages": MESSAGES, "stream": True}
            full = await http.post("/v1/chat/completions", json=document)
            scenario.release.set()
            await read_to_end(reader)
        bad = await http.post("/v1/chat/completions", json={**document, "temperature": 9})
    assert full.status_code == 429
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "temperature"
    assert len(upstream.calls) == 1


# -- on_disconnect ----------------------------------------------------------------------


def policy(on_disconnect: str, **more: Any) -> dict[str, Any]:
    return {"tidings": {"on_disconnect": on_disconnect, **more}}


async def end_of(http: httpx.AsyncClient, stream_id: str) -> dict[str, Any]:
    async with open_sse(http, f"/v1/streams/{stream_id}") as viewer:
        replay = await read_to_end(viewer)
    end: dict[str, Any] = orjson.loads(replay[-1].data)
    return end


@pytest.mark.parametrize("extension", [policy("cancel"), policy("grace", grace=0)])
async def test_cancel_closes_the_upstream_request_when_the_client_goes(
    upstream: FakeUpstream, extension: dict[str, Any]
) -> None:
    upstream.scenario("paused", Scenario(pause_after=2))
    async with serve(upstream, grace=60.0) as http:
        async with post_stream(http, model="paused", **extension) as (response, reader):
            stream_id = response.headers["x-tidings-stream-id"]
            await reader.events(2)
        call = upstream.calls[0]
        async with asyncio.timeout(TIMEOUT):
            await call.disconnected.wait()
        end = await end_of(http, stream_id)
    assert (end["status"], end["reason"]) == ("cancelled", "unheard")
    assert call.tokens_sent == 2
    assert "tidings" not in call.body  # never forwarded upstream


async def test_continue_outlives_the_client_and_a_short_grace(upstream: FakeUpstream) -> None:
    kept = upstream.scenario("kept", Scenario(pause_after=2))
    upstream.scenario("dropped", Scenario(pause_after=2))
    async with serve(upstream, grace=0.05) as http:
        async with post_stream(http, model="kept", **policy("continue")) as (response, reader):
            stream_id = response.headers["x-tidings-stream-id"]
            await reader.events(2)
        # Gone after the first: once its grace is over, the first one's would be too.
        async with post_stream(http, model="dropped") as (_, other):
            await other.events(2)
        async with asyncio.timeout(TIMEOUT):
            await upstream.calls[1].disconnected.wait()
        assert not upstream.calls[0].disconnected.is_set()
        kept.release.set()
        async with asyncio.timeout(TIMEOUT):
            await upstream.calls[0].finished.wait()
        end = await end_of(http, stream_id)
    assert end == {"status": "completed"}
    assert upstream.calls[0].tokens_sent == len(kept.tokens)


async def test_a_grace_of_its_own_overrides_the_server_grace(upstream: FakeUpstream) -> None:
    upstream.scenario("paused", Scenario(pause_after=2))
    async with serve(upstream, grace=60.0) as http:
        extension = policy("grace", grace=0.05)
        async with post_stream(http, model="paused", **extension) as (response, reader):
            stream_id = response.headers["x-tidings-stream-id"]
            await reader.events(2)
        async with asyncio.timeout(TIMEOUT):
            await upstream.calls[0].disconnected.wait()
        end = await end_of(http, stream_id)
    assert end["reason"] == "unheard"


BAD_POLICIES = [
    ({"tidings": "cancel"}, "tidings"),
    (policy("later"), "tidings.on_disconnect"),
    (policy("grace", grace=-1), "tidings.grace"),
    (policy("grace", grace="5"), "tidings.grace"),
    (policy("grace", grace=10**6), "tidings.grace"),
    (policy("cancel", grace=5), "tidings.grace"),
    ({"tidings": {"on_disconect": "cancel"}}, "tidings.on_disconect"),
]


async def test_a_bad_policy_is_a_400_and_starts_nothing(upstream: FakeUpstream) -> None:
    async with serve(upstream) as http:
        for extension, param in BAD_POLICIES:
            for stream in (True, False):
                document = {"model": "fake", "messages": MESSAGES, "stream": stream, **extension}
                response = await http.post("/v1/chat/completions", json=document)
                assert response.status_code == 400, extension
                error = response.json()["error"]
                assert (error["param"], error["type"]) == (param, "invalid_request_error")
                assert param in error["message"]
        stats = (await http.get("/api/stats")).json()["llm"]
    assert stats["started"] == 0
    assert upstream.calls == []
