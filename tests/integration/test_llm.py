"""The LLM relay end to end: the official openai SDK -> Tidings -> a fake OpenAI upstream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.support.env import TIMEOUT
from tests.support.fake_openai import FakeUpstream, Scenario
from tests.support.proxy import FaultProxy
from tests.support.sse import SSEReader, open_sse
from tidings.llm import LLMConfig
from tidings.server.app import build_hub, create_app
from tidings.server.auth import mint_token
from tidings.settings import Settings
from tidings.testing import run_server
from tidings.wire.sse import SSEEvent

MESSAGES: list[Any] = [{"role": "user", "content": "Say something."}]
#: A DELETE, like any request that changes something, carries a JSON content type or a
#: credential header, so that no other web site can send it (server/browser.py).
JSON = {"content-type": "application/json"}


def relay_settings(upstream: FakeUpstream, **llm: Any) -> Settings:
    table = {
        "base_url": upstream.base_url,
        "grace": 30.0,
        "providers": {
            "quick": {"kind": "openai", "base_url": upstream.base_url, "timeout": 0.5},
            "demo": {"kind": "demo", "first_token_delay": 0.0, "token_interval": 0.001},
        },
        "models": {"quick-*": "quick", "demo": "demo"},
        **llm,
    }
    return Settings(log_level="warning", llm=LLMConfig.from_table(table))


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture(params=["fast", "asgi"])
async def url(upstream: FakeUpstream, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    async with run_server(
        settings=relay_settings(upstream), fast_write=request.param == "fast"
    ) as base:
        yield base


@pytest.fixture
async def sdk(url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT
    ) as client:
        yield client


@pytest.fixture
async def http(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        yield client


@contextlib.asynccontextmanager
async def post_stream(
    http: httpx.AsyncClient, **body: Any
) -> AsyncIterator[tuple[httpx.Response, SSEReader]]:
    document = {"model": "fake", "messages": MESSAGES, "stream": True, **body}
    async with http.stream("POST", "/v1/chat/completions", json=document) as response:
        assert response.status_code == 200, (await response.aread())[:500]
        reader = SSEReader(response)
        try:
            yield response, reader
        finally:
            await reader.aclose()


async def read_to_end(reader: SSEReader) -> list[SSEEvent]:
    """Every event until the response ends."""
    async with asyncio.timeout(TIMEOUT):
        with contextlib.suppress(StopAsyncIteration):
            while True:
                await reader._read_more()
    events, reader._pending = reader._pending, []
    return events


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The OpenAI error of a refused request: the body of an HTTP ``status``, or,
    for a streamed one (whose headers went out at once), its last ``data:`` line."""
    if response.headers["content-type"].startswith("text/event-stream"):
        assert response.status_code == 200
        assert response.content.startswith(b": ping\n\n")
        last = response.content.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        assert last.startswith(b"data: {")
        document = orjson.loads(last.removeprefix(b"data: "))
    else:
        assert response.status_code == status, response.text
        document = response.json()
    assert set(document) == {"error"}
    error: dict[str, Any] = document["error"]
    return error


def contents(events: list[SSEEvent]) -> str:
    text = []
    for event in events:
        if event.event == "message" and event.data.startswith("{"):
            for choice in orjson.loads(event.data).get("choices", []):
                text.append(choice["delta"].get("content") or "")
    return "".join(text)


# -- the official SDK ------------------------------------------------------------


async def test_sdk_streams_every_token_with_one_completion_id(
    sdk: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    stream = await sdk.chat.completions.create(model="fake", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "".join(upstream.default.tokens)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)  # include_usage was not asked for
    call = upstream.calls[0]
    assert call.body["stream"] is True
    assert call.body["messages"] == MESSAGES


async def test_sdk_stream_with_include_usage(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="fake", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12


async def test_sdk_without_streaming(sdk: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    completion = await sdk.chat.completions.create(model="fake", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.content == "".join(upstream.default.tokens)
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 15


async def test_sdk_stream_helper(sdk: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    deltas = []
    async with sdk.chat.completions.stream(model="fake", messages=MESSAGES) as stream:
        async for event in stream:
            if event.type == "content.delta":
                deltas.append(event.delta)
        final = await stream.get_final_completion()
    assert "".join(deltas) == "".join(upstream.default.tokens)
    assert final.choices[0].message.content == "".join(upstream.default.tokens)
    assert final.choices[0].finish_reason == "stop"


async def test_tool_call_deltas_pass_through(
    sdk: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.scenario("tools", Scenario(tool_call=("get_weather", ['{"city"', ': "Oslo"}'])))
    async with sdk.chat.completions.stream(model="tools", messages=MESSAGES) as stream:
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.id == "call_1"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city": "Oslo"}'
    whole = await sdk.chat.completions.create(model="tools", messages=MESSAGES)
    assert whole.choices[0].message.tool_calls is not None
    assert whole.choices[0].message.tool_calls[0].function.arguments == '{"city": "Oslo"}'


async def test_demo_provider_answers_without_upstream(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=5)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == 'You asked: "Say something.". This'
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5


async def test_sdk_lists_the_models_that_route_somewhere(
    sdk: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.scenario("quick-x", Scenario())
    models = {model.id: model.owned_by async for model in sdk.models.list()}
    assert models == {"demo": "demo", "fake": "upstream", "quick-x": "quick"}
    upstream.models_status = 500  # a failing upstream lists nothing; the rest still do
    models = {model.id: model.owned_by async for model in sdk.models.list()}
    assert models == {"demo": "demo"}


# -- the wire format ---------------------------------------------------------------


async def test_stream_is_only_data_lines_and_comments(http: httpx.AsyncClient) -> None:
    async with post_stream(http) as (response, reader):
        events = await read_to_end(reader)
    stream_id = response.headers["x-tidings-stream-id"]
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    raw = bytes(reader.raw)
    assert not raw.startswith(b"\xef\xbb\xbf")
    for block in raw.split(b"\n\n")[:-1]:
        lines = block.split(b"\n")
        assert all(line.startswith((b"data: ", b":")) for line in lines), block
        assert lines == [b": ping"] or any(line.startswith(b"data: ") for line in lines), block
    assert raw.startswith(b": ping\n\n")  # sent with the headers, before any chunk
    assert raw.endswith(b"data: [DONE]\n\n")
    chunks = [orjson.loads(event.data) for event in events[:-1]]
    for chunk in chunks:
        assert chunk["id"] == stream_id
        assert chunk["object"] == "chat.completion.chunk"
        assert isinstance(chunk["created"], int)
        assert chunk["model"] == "fake"
        assert [choice["index"] for choice in chunk["choices"]] == [0]
    assert {event.id for event in events} == {""}  # no id: field
    assert {event.event for event in events} == {"message"}  # no event: field
    assert reader.decoder.retry is None  # no retry: field


# -- upstream failures ----------------------------------------------------------------


@pytest.mark.parametrize(("upstream_status", "status"), [(429, 429), (400, 400), (500, 502)])
async def test_upstream_refusal_reaches_the_sdk_as_an_error(
    sdk: openai.AsyncOpenAI, upstream: FakeUpstream, upstream_status: int, status: int
) -> None:
    upstream.scenario("refused", Scenario(status=upstream_status, error_message="no capacity"))
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model="refused", messages=MESSAGES)
    assert caught.value.status_code == status
    # Streamed, the headers went out before the upstream answered: the error is
    # the stream's one data line, which the SDK raises as an APIError.
    stream = await sdk.chat.completions.create(model="refused", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as raised:
        async for _ in stream:
            pytest.fail("no chunk before the error")
    for body in (caught.value.body, raised.value.body):
        assert isinstance(body, dict)
        # A summary: the upstream's own text may quote the request (its key).
        assert body["message"] == f"upstream answered {upstream_status} (type: fake)"
        assert "no capacity" not in body["message"]
        assert body["type"] == "upstream_error"
        assert set(body) == {"message", "type", "param", "code"}


async def test_upstream_error_mid_stream_ends_with_an_error_chunk(
    sdk: openai.AsyncOpenAI, http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.scenario("flaky", Scenario(fail_after=3))
    stream = await sdk.chat.completions.create(model="flaky", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "tok0 tok1 tok2 "
    async with post_stream(http, model="flaky") as (_, reader):
        events = await read_to_end(reader)
    last = orjson.loads(events[-1].data)
    assert last["error"]["type"] == "upstream_error"
    assert b"[DONE]" not in reader.raw
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model="flaky", messages=MESSAGES)
    assert caught.value.status_code == 502


@pytest.mark.parametrize(
    "garbage",
    [
        '{"choices": [{"index": 0, "delta": {"content": "broken',  # cut JSON
        "[1, 2, 3]",  # JSON, not an object
        '{"choices": "not a list"}',
        '{"choices": [7]}',
    ],
)
async def test_malformed_upstream_data_mid_stream_ends_with_an_error_chunk(
    sdk: openai.AsyncOpenAI, upstream: FakeUpstream, garbage: str
) -> None:
    """Never a hang, never the garbage passed on: an error chunk, and the upstream closed."""
    # The fake would go on after the garbage; it waits instead, until the relay hangs up.
    upstream.scenario("garbled", Scenario(garbage_after=2, garbage=garbage, pause_after=3))
    stream = await sdk.chat.completions.create(model="garbled", messages=MESSAGES, stream=True)
    received = []
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(openai.APIError, match="upstream sent a") as caught:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "tok0 tok1 "
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "upstream_error"
    assert garbage not in str(caught.value.body)  # what the upstream sent is not echoed
    call = await upstream.next_call(1, TIMEOUT)
    async with asyncio.timeout(TIMEOUT):
        await call.disconnected.wait()  # the relay closed the upstream request


async def test_upstream_cut_mid_stream_ends_with_an_error_chunk(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.scenario("cut", Scenario(cut_after=2))
    async with post_stream(http, model="cut") as (_, reader):
        events = await read_to_end(reader)
    assert contents(events) == "tok0 tok1 "
    assert orjson.loads(events[-1].data)["error"]["code"] == "upstream_error"


async def test_upstream_stall_times_out_and_closes_the_upstream_request(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.scenario("quick-stall", Scenario(pause_after=2))
    async with post_stream(http, model="quick-stall") as (_, reader):
        events = await read_to_end(reader)
    assert contents(events) == "tok0 tok1 "
    assert orjson.loads(events[-1].data)["error"]["code"] == "timeout"
    async with asyncio.timeout(TIMEOUT):
        await upstream.calls[0].disconnected.wait()


async def test_unreachable_upstream_is_a_502_or_a_stream_error(http: httpx.AsyncClient) -> None:
    # Model "quick-…" goes to the fake; the base_url provider is the default,
    # so a server whose upstream is gone answers 502 right away.
    async with FakeUpstream() as gone:
        pass
    settings = relay_settings(gone)
    async with run_server(settings=settings) as base, httpx.AsyncClient(base_url=base) as client:
        for stream in (False, True):
            document = {"model": "any", "messages": MESSAGES, "stream": stream}
            response = await client.post("/v1/chat/completions", json=document)
            assert error_of(response, 502)["type"] == "upstream_error"


# -- resume ---------------------------------------------------------------------------


async def test_a_dropped_request_resumes_through_the_stream_exactly_once(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    scenario = upstream.scenario("paused", Scenario(pause_after=5))
    async with post_stream(http, model="paused") as (response, reader):
        stream_id = response.headers["x-tidings-stream-id"]
        first = await reader.events(6)  # the role chunk and five tokens
    assert contents(first) == "tok0 tok1 tok2 tok3 tok4 "
    scenario.release.set()
    async with open_sse(http, f"/v1/streams/{stream_id}?after={len(first)}") as viewer:
        rest = await read_to_end(viewer)
    assert contents(first) + contents(rest) == "".join(scenario.tokens)
    assert rest[-1].event == "end"
    assert orjson.loads(rest[-1].data) == {"status": "completed"}
    assert upstream.calls[0].tokens_sent == len(scenario.tokens)


async def test_a_viewer_resumes_with_last_event_id_exactly_once(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    scenario = upstream.scenario("paused", Scenario(pause_after=4))
    async with post_stream(http, model="paused") as (response, reader):
        stream_id = response.headers["x-tidings-stream-id"]
        async with open_sse(http, f"/v1/streams/{stream_id}") as viewer:
            seen = await viewer.events(5)
            cursor = viewer.last_event_id
        assert cursor.startswith(f"llm:{stream_id}:")
        scenario.release.set()
        async with open_sse(
            http, f"/v1/streams/{stream_id}", headers={"last-event-id": cursor}
        ) as viewer:
            rest = await read_to_end(viewer)
        whole = await read_to_end(reader)
    assert contents(seen) + contents(rest) == "".join(scenario.tokens)
    assert contents(whole) == "".join(scenario.tokens)
    offsets = [int(event.id.rsplit(":", 1)[1]) for event in seen + rest]
    assert offsets == list(range(1, len(offsets) + 1))
    # Resuming after the end: nothing more to send, and no reconnect either.
    response = await http.get(f"/v1/streams/{stream_id}", headers={"last-event-id": rest[-1].id})
    assert response.status_code == 204


async def test_a_late_viewer_gets_the_whole_answer(
    sdk: openai.AsyncOpenAI, http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    raw = await sdk.chat.completions.with_raw_response.create(model="fake", messages=MESSAGES)
    stream_id = raw.headers["x-tidings-stream-id"]
    assert raw.parse().id == stream_id
    for _ in range(2):
        async with open_sse(http, f"/v1/streams/{stream_id}") as viewer:
            events = await read_to_end(viewer)
        assert contents(events) == "".join(upstream.default.tokens)
        assert [event.event for event in events[-2:]] == ["usage", "end"]
    assert len(upstream.calls) == 1


async def test_a_second_viewer_follows_a_running_answer(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    scenario = upstream.scenario("paused", Scenario(pause_after=3))
    async with post_stream(http, model="paused") as (response, reader):
        stream_id = response.headers["x-tidings-stream-id"]
        await reader.events(4)
        async with (
            open_sse(http, f"/v1/streams/{stream_id}") as first,
            open_sse(http, f"/v1/streams/{stream_id}") as second,
        ):
            await first.events(4)
            scenario.release.set()
            one, two = await read_to_end(first), await read_to_end(second)
    assert contents(one) == "".join(scenario.tokens[3:])
    assert contents(two) == "".join(scenario.tokens)


def offset(event: SSEEvent) -> int:
    return int(event.id.rsplit(":", 1)[1])


async def test_a_late_viewer_with_snapshot_gets_one_chunk_then_the_rest_once(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    scenario = upstream.scenario("paused", Scenario(pause_after=5))
    async with post_stream(http, model="paused") as (response, reader):
        stream_id = response.headers["x-tidings-stream-id"]
        await reader.events(6)  # the role chunk and five tokens: the generation waits
        async with open_sse(http, f"/v1/streams/{stream_id}?snapshot=1") as viewer:
            (snapshot,) = await viewer.events(1)
            scenario.release.set()
            rest = await read_to_end(viewer)
        await read_to_end(reader)
    (choice,) = orjson.loads(snapshot.data)["choices"]
    assert choice["delta"] == {"role": "assistant", "content": "tok0 tok1 tok2 tok3 tok4 "}
    assert snapshot.event == "message"
    assert offset(snapshot) == 6  # the cut: a reconnect resumes right after it
    assert [offset(event) for event in rest] == list(range(7, 7 + len(rest)))
    assert contents([snapshot, *rest]) == "".join(scenario.tokens)
    assert rest[-1].event == "end"
    # Reconnecting from the snapshot's id with ?snapshot=1: what followed it, as one chunk.
    async with open_sse(
        http, f"/v1/streams/{stream_id}?snapshot=1", headers={"last-event-id": snapshot.id}
    ) as again:
        replay = await read_to_end(again)
    assert [event.event for event in replay] == ["message", "end"]
    assert contents(replay) == "".join(scenario.tokens[5:])
    assert orjson.loads(replay[0].data)["choices"][0]["finish_reason"] == "stop"
    assert replay[0].id == rest[-2].id  # the last chunk's cursor: the end comes after it


async def test_a_finished_generations_snapshot_is_the_whole_answer_then_the_end(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.scenario("tool", Scenario(tool_call=("lookup", ['{"q": ', '"tidings"}'])))
    async with post_stream(http, model="tool", stream_options={"include_usage": True}) as (
        response,
        reader,
    ):
        stream_id = response.headers["x-tidings-stream-id"]
        await read_to_end(reader)
    async with open_sse(http, f"/v1/streams/{stream_id}?snapshot=1") as viewer:
        events = await read_to_end(viewer)
    assert [event.event for event in events] == ["message", "end"]
    snapshot = orjson.loads(events[0].data)
    (choice,) = snapshot["choices"]
    (call,) = choice["delta"]["tool_calls"]
    assert call["function"] == {"name": "lookup", "arguments": '{"q": "tidings"}'}
    assert call["index"] == 0
    assert choice["finish_reason"] == "tool_calls"
    assert snapshot["usage"]["total_tokens"] > 0
    assert snapshot["id"] == stream_id
    assert orjson.loads(events[1].data) == {"status": "completed"}
    assert offset(events[1]) == offset(events[0]) + 1


async def test_snapshot_takes_only_0_or_1(http: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    async with post_stream(http) as (response, reader):
        stream_id = response.headers["x-tidings-stream-id"]
        await read_to_end(reader)
    answer = await http.get(f"/v1/streams/{stream_id}?snapshot=yes")
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "snapshot"
    async with open_sse(http, f"/v1/streams/{stream_id}?snapshot=0") as viewer:
        events = await read_to_end(viewer)  # chunk by chunk, as without the parameter
    assert len(events) > 2
    assert contents(events) == "".join(upstream.default.tokens)


async def test_unknown_stream_is_a_404(http: httpx.AsyncClient) -> None:
    for method in ("GET", "DELETE"):
        response = await http.request(method, "/v1/streams/chatcmpl-nope", headers=JSON)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    response = await http.get("/v1/streams/chatcmpl-x", headers={"last-event-id": "bad cursor"})
    assert response.status_code == 404


# -- cancellation ---------------------------------------------------------------------


async def test_delete_cancels_and_closes_the_upstream_request(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.scenario("paused", Scenario(pause_after=3))
    async with post_stream(http, model="paused") as (response, reader):
        stream_id = response.headers["x-tidings-stream-id"]
        call = await upstream.next_call(1, TIMEOUT)
        async with asyncio.timeout(TIMEOUT):
            await call.paused.wait()
        deleted = await http.delete(f"/v1/streams/{stream_id}", headers=JSON)
        assert deleted.status_code == 200
        assert deleted.json()["status"] == "cancelled"
        async with asyncio.timeout(TIMEOUT):
            await call.disconnected.wait()
        events = await read_to_end(reader)
    assert contents(events) == "tok0 tok1 tok2 "
    assert orjson.loads(events[-1].data)["error"]["code"] == "cancelled"
    async with open_sse(http, f"/v1/streams/{stream_id}") as viewer:
        replay = await read_to_end(viewer)
    end = orjson.loads(replay[-1].data)
    assert replay[-1].event == "end"
    assert (end["status"], end["reason"]) == ("cancelled", "deleted")
    again = await http.delete(f"/v1/streams/{stream_id}", headers=JSON)
    assert again.json()["status"] == "cancelled"
    stats = (await http.get("/api/stats")).json()["llm"]
    assert stats["cancelled"] >= 1
    assert stats["active"] == 0


async def test_delete_answers_a_waiting_non_streamed_request(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.scenario("paused", Scenario(pause_after=1))
    document = {"model": "paused", "messages": MESSAGES}
    request = asyncio.ensure_future(http.post("/v1/chat/completions", json=document))
    try:
        call = await upstream.next_call(1, TIMEOUT)
        async with asyncio.timeout(TIMEOUT):
            await call.paused.wait()
        stats = (await http.get("/api/stats")).json()["llm"]
        assert stats["active"] == 1
        (stream_id,) = [
            channel["channel"].removeprefix("llm:")
            for channel in (await http.get("/api/channels")).json()["channels"]
            if channel["channel"].startswith("llm:chatcmpl-") and channel["subscribers"] == 1
        ]
        assert (await http.delete(f"/v1/streams/{stream_id}", headers=JSON)).status_code == 200
        async with asyncio.timeout(TIMEOUT):
            response = await request
    finally:
        request.cancel()
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "cancelled"
    assert response.headers["x-tidings-stream-id"] == stream_id


async def test_an_unheard_generation_is_cancelled_after_the_grace_period(
    upstream: FakeUpstream,
) -> None:
    upstream.scenario("paused", Scenario(pause_after=2))
    settings = relay_settings(upstream, grace=0.2)
    async with run_server(settings=settings) as base, httpx.AsyncClient(base_url=base) as http:
        async with post_stream(http, model="paused") as (response, reader):
            stream_id = response.headers["x-tidings-stream-id"]
            await reader.events(3)
        call = upstream.calls[0]
        async with asyncio.timeout(TIMEOUT):
            await call.disconnected.wait()
        async with open_sse(http, f"/v1/streams/{stream_id}") as viewer:
            replay = await read_to_end(viewer)
    end = orjson.loads(replay[-1].data)
    assert (end["status"], end["reason"]) == ("cancelled", "unheard")
    assert call.tokens_sent == 2


async def test_a_viewer_keeps_a_generation_alive(upstream: FakeUpstream) -> None:
    scenario = upstream.scenario("paused", Scenario(pause_after=2))
    upstream.scenario("unheard", Scenario(pause_after=2))
    settings = relay_settings(upstream, grace=0.2)
    async with (
        run_server(settings=settings) as base,
        httpx.AsyncClient(base_url=base) as http,
        post_stream(http, model="paused") as (response, reader),
    ):
        stream_id = response.headers["x-tidings-stream-id"]
        await reader.events(3)
        async with open_sse(http, f"/v1/streams/{stream_id}") as viewer:
            await viewer.events(3)
            await reader.aclose()  # the request goes; the viewer stays
            # A generation nobody hears, started after that: once it is
            # cancelled, the first one's grace period is over too.
            async with post_stream(http, model="unheard") as (_, other):
                await other.events(3)
            unheard = await upstream.next_call(2, TIMEOUT)
            async with asyncio.timeout(TIMEOUT):
                await unheard.disconnected.wait()
            assert not upstream.calls[0].disconnected.is_set()
            scenario.release.set()
            rest = await read_to_end(viewer)
    assert orjson.loads(rest[-1].data) == {"status": "completed"}
    assert contents(rest) == "".join(scenario.tokens[2:])
    assert upstream.calls[0].tokens_sent == len(scenario.tokens)


# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": "fake"}, "messages"),
        ({"model": "fake", "messages": []}, "messages"),
        ({"model": "fake", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "fake", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "fake", "messages": MESSAGES, "stream": "yes"}, "stream"),
        (
            {"model": "fake", "messages": MESSAGES, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        ({"model": "fake", "messages": MESSAGES, "n": 2}, "n"),
        ({"model": "fake", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"model": "fake", "messages": MESSAGES, "temperature": 3}, "temperature"),
    ],
)
async def test_invalid_requests_get_openai_error_bodies(
    http: httpx.AsyncClient, upstream: FakeUpstream, body: dict[str, Any], param: str
) -> None:
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}
    assert not upstream.calls


async def test_malformed_bodies_are_refused(
    http: httpx.AsyncClient, sdk: openai.AsyncOpenAI
) -> None:
    response = await http.post("/v1/chat/completions", content=b"{not json", headers=JSON)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    response = await http.post(
        "/v1/chat/completions", content=b"x", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model="fake", messages=[])
    assert caught.value.param == "messages"


async def test_a_request_cannot_choose_the_upstream(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    for field, value in [
        ("base_url", "http://127.0.0.1:9/v1"),
        ("api_base", "http://127.0.0.1:9/v1"),
        ("api_key", "sk-mine"),
        ("provider", "quick"),
        ("url", "http://127.0.0.1:9/v1/chat/completions"),
    ]:
        body = {"model": "fake", "messages": MESSAGES, field: value}
        response = await http.post("/v1/chat/completions", json=body)
        assert response.status_code == 400, field
        error = response.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", field)
    body = {"model": "http://127.0.0.1:9/v1", "messages": MESSAGES}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"
    assert not upstream.calls


async def test_a_model_no_route_matches_is_refused(upstream: FakeUpstream) -> None:
    settings = relay_settings(upstream, default_provider="")
    async with run_server(settings=settings) as base, httpx.AsyncClient(base_url=base) as client:
        refused = await client.post(
            "/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}
        )
        served = await client.post(
            "/v1/chat/completions", json={"model": "quick-1", "messages": MESSAGES}
        )
    assert refused.status_code == 404  # as OpenAI answers a model it does not have
    error = refused.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "model",
        "model_not_found",
    )
    assert served.status_code == 200
    assert [call.body["model"] for call in upstream.calls] == ["quick-1"]


# -- no secret leaves ---------------------------------------------------------------------

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
PASSWORD = "pa55word-in-the-url"


def assert_no_secret(text: str) -> None:
    assert UPSTREAM_KEY not in text
    assert PASSWORD not in text
    assert "Bearer" not in text


async def test_an_upstream_echoing_the_key_shows_it_to_nobody(
    upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tidings")
    upstream.scenario("keyed-echo", Scenario(status=401, echo_authorization=True))
    keyed = {"kind": "openai", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY}
    config = LLMConfig.from_table({"providers": {"keyed": keyed}, "models": {"keyed-*": "keyed"}})
    settings = Settings(log_level="warning", llm=config)
    async with run_server(settings=settings) as base, httpx.AsyncClient(base_url=base) as client:
        for stream in (True, False):
            body = {"model": "keyed-echo", "messages": MESSAGES, "stream": stream}
            response = await client.post("/v1/chat/completions", json=body)
            assert error_of(response, 502)["message"] == "upstream answered 401"
            assert_no_secret(response.text)
            stream_id = response.headers["x-tidings-stream-id"]
            async with open_sse(client, f"/v1/streams/{stream_id}") as viewer:
                replay = await read_to_end(viewer)
            assert replay[-1].event == "end"
            assert_no_secret(bytes(viewer.raw).decode())
            history = await client.get(f"/api/history/llm:{stream_id}")
            assert_no_secret(history.text)
    # The upstream did get the key (and quoted it back).
    assert upstream.calls[0].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert caplog.records
    for record in caplog.records:
        assert_no_secret(record.getMessage())


async def test_a_base_url_with_credentials_is_shown_without_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tidings")
    async with FakeUpstream() as gone:
        pass
    config = LLMConfig.from_table(
        {"base_url": f"http://relay-user:{PASSWORD}@127.0.0.1:{gone.port}/v1"}
    )
    assert_no_secret(repr(Settings(llm=config)))
    settings = Settings(log_level="warning", llm=config)
    async with run_server(settings=settings) as base, httpx.AsyncClient(base_url=base) as client:
        body = {"model": "any", "messages": MESSAGES, "stream": True}
        response = await client.post("/v1/chat/completions", json=body)
        message = error_of(response, 502)["message"]
        assert f"http://***@127.0.0.1:{gone.port}/v1/chat/completions" in message
        assert "relay-user" not in message
        assert_no_secret(response.text)
        stream_id = response.headers["x-tidings-stream-id"]
        async with open_sse(client, f"/v1/streams/{stream_id}") as viewer:
            await read_to_end(viewer)
        assert_no_secret(bytes(viewer.raw).decode())
        history = await client.get(f"/api/history/llm:{stream_id}")
        assert history.status_code == 200
        assert_no_secret(history.text)
    assert caplog.records
    for record in caplog.records:
        assert_no_secret(record.getMessage())
        assert "relay-user" not in record.getMessage()


# -- ownership -------------------------------------------------------------------------

JWT_SECRET = "an-integration-secret-of-32-bytes-or-more"
API_KEY = "ops-key-0123456789abcdef"


def token(sub: str) -> str:
    return mint_token(JWT_SECRET, sub=sub, ttl=600)


async def test_one_users_stream_is_nobody_elses(upstream: FakeUpstream) -> None:
    upstream.scenario("paused", Scenario(pause_after=3))
    settings = dataclasses.replace(
        relay_settings(upstream), jwt_secret=JWT_SECRET, api_keys=f"ops:{API_KEY}"
    )
    alice = {"authorization": f"Bearer {token('alice')}"}
    bob = {"authorization": f"Bearer {token('bob')}"}
    async with (
        run_server(settings=settings) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
        openai.AsyncOpenAI(
            base_url=base + "/v1", api_key=token("alice"), max_retries=0, timeout=TIMEOUT
        ) as sdk,
    ):
        anonymous = await http.post(
            "/v1/chat/completions", json={"model": "fake", "messages": MESSAGES}
        )
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        # The SDK sends its api_key as a bearer token: a user's token works as one.
        completion = await sdk.chat.completions.create(model="fake", messages=MESSAGES)
        assert completion.choices[0].message.content == "".join(upstream.default.tokens)
        async with openai.AsyncOpenAI(
            base_url=base + "/v1",
            api_key="unused",
            default_headers={"Authorization": f"ApiKey {API_KEY}"},
            max_retries=0,
            timeout=TIMEOUT,
        ) as server:
            await server.chat.completions.create(model="fake", messages=MESSAGES)
        document = {"model": "paused", "messages": MESSAGES, "stream": True}
        async with http.stream(
            "POST", "/v1/chat/completions", json=document, headers=alice
        ) as response:
            assert response.status_code == 200
            stream_id = response.headers["x-tidings-stream-id"]
            reader = SSEReader(response)
            await reader.events(4)
            call = await upstream.next_call(3, TIMEOUT)  # after the two SDK calls
            for method in ("GET", "DELETE"):
                refused = await http.request(method, f"/v1/streams/{stream_id}", headers=bob)
                assert refused.status_code == 404
                assert refused.json()["error"] == {
                    "message": f"no running or recent stream {stream_id!r}",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "not_found",
                }
            assert not call.disconnected.is_set()  # bob's DELETE did nothing
            for path in (f"/sse?channel=llm:{stream_id}", f"/api/history/llm:{stream_id}"):
                assert (await http.get(path, headers=bob)).status_code in (401, 403)
            async with open_sse(http, f"/v1/streams/{stream_id}", headers=alice) as viewer:
                assert contents(await viewer.events(4)) == "tok0 tok1 tok2 "
            deleted = await http.delete(f"/v1/streams/{stream_id}", headers={"x-api-key": API_KEY})
            assert deleted.status_code == 200
            assert deleted.json()["status"] == "cancelled"
            async with asyncio.timeout(TIMEOUT):
                await call.disconnected.wait()
            await read_to_end(reader)


# -- figures ----------------------------------------------------------------------------


async def test_stats_report_llm_figures(sdk: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    await sdk.chat.completions.create(model="fake", messages=MESSAGES)
    stats = (await http.get("/api/stats")).json()["llm"]
    assert stats["started"] == stats["completed"] == 1
    assert stats["active"] == 0
    assert stats["tokens"] == 12
    assert stats["ttft_ms_p50"] > 0
    assert stats["ttft_ms_mean"] > 0
    assert stats["tokens_per_second"] > 0


# -- several servers on one backend -----------------------------------------------------


async def test_two_servers_on_one_hub_share_viewers_and_deletes(upstream: FakeUpstream) -> None:
    """Two apps on one hub stand for two nodes on one backend: a viewer on B follows
    A's generation past A's grace period, and a DELETE on B cancels it on A.

    (In one process B's viewer is also a subscriber of A's hub; the "heard"
    messages that stand for it across processes are tested in
    tests/unit/llm/test_relay.py.)"""
    upstream.scenario("paused", Scenario(pause_after=3))
    upstream.scenario("unheard", Scenario(pause_after=1))
    settings = relay_settings(upstream, grace=1.0)
    async with (
        build_hub(settings) as hub,
        run_server(create_app(hub, settings)) as node_a,
        run_server(create_app(hub, settings)) as node_b,
        httpx.AsyncClient(base_url=node_a, timeout=TIMEOUT) as a,
        httpx.AsyncClient(base_url=node_b, timeout=TIMEOUT) as b,
        contextlib.AsyncExitStack() as viewing,
    ):
        async with post_stream(a, model="paused") as (response, reader):
            stream_id = response.headers["x-tidings-stream-id"]
            await reader.events(4)
            # B's viewer comes before A's request goes: it never depends
            # on connecting within the grace period.
            viewer = await viewing.enter_async_context(open_sse(b, f"/v1/streams/{stream_id}"))
            assert contents(await viewer.events(4)) == "tok0 tok1 tok2 "
        async with post_stream(a, model="unheard") as (_, other):
            await other.events(2)
        unheard = await upstream.next_call(2, TIMEOUT)
        async with asyncio.timeout(TIMEOUT):
            await unheard.disconnected.wait()
        generation = upstream.calls[0]
        assert not generation.disconnected.is_set()
        deleted = await b.delete(f"/v1/streams/{stream_id}", headers=JSON)
        assert deleted.status_code == 200
        assert deleted.json()["status"] == "cancelled"
        async with asyncio.timeout(TIMEOUT):
            await generation.disconnected.wait()
        rest = await read_to_end(viewer)
    end = orjson.loads(rest[-1].data)
    assert (rest[-1].event, end["status"], end["reason"]) == ("end", "cancelled", "deleted")


async def test_a_viewer_resumes_on_another_server_when_its_own_is_lost(
    upstream: FakeUpstream,
) -> None:
    scenario = upstream.scenario("paused", Scenario(pause_after=4))
    settings = relay_settings(upstream)
    async with (
        build_hub(settings) as hub,
        run_server(create_app(hub, settings)) as node_a,
        run_server(create_app(hub, settings)) as node_b,
        FaultProxy(int(node_b.rsplit(":", 1)[1])) as path_to_b,
        httpx.AsyncClient(base_url=node_a, timeout=TIMEOUT) as a,
        httpx.AsyncClient(base_url=path_to_b.url, timeout=TIMEOUT) as b,
        post_stream(a, model="paused") as (response, reader),
    ):
        stream_id = response.headers["x-tidings-stream-id"]
        async with open_sse(b, f"/v1/streams/{stream_id}") as viewer:
            seen = await viewer.events(5)
            cursor = viewer.last_event_id
            await path_to_b.cut()  # node B is lost to the viewer
            with pytest.raises(httpx.TransportError):
                await read_to_end(viewer)
        scenario.release.set()
        # The viewer comes back on node A with its cursor.
        headers = {"last-event-id": cursor}
        async with open_sse(a, f"/v1/streams/{stream_id}", headers=headers) as again:
            rest = await read_to_end(again)
        await read_to_end(reader)
    assert contents(seen) + contents(rest) == "".join(scenario.tokens)
    assert orjson.loads(rest[-1].data) == {"status": "completed"}
