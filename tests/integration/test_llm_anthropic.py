"""Anthropic upstreams end to end: the official openai SDK -> Tidings -> a fake Messages API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.support.env import TIMEOUT
from tests.support.fake_anthropic import INPUT_TOKENS, FakeAnthropic, Scenario
from tests.support.sse import SSEReader
from tidings.llm import LLMConfig
from tidings.settings import Settings
from tidings.testing import run_server

MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say something."},
]
TOKENS = "".join(Scenario().tokens)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
async def url(upstream: FakeAnthropic) -> AsyncIterator[str]:
    table = {
        "grace": 30.0,
        "default_provider": "",
        "providers": {
            "claude": {
                "kind": "anthropic",
                "base_url": upstream.base_url,
                "api_key": "sk-ant-test-key",
                "max_tokens": 321,
                "timeout": 0.5,
            },
        },
        "models": {"claude-*": "claude"},
    }
    settings = Settings(log_level="warning", llm=LLMConfig.from_table(table))
    async with run_server(settings=settings) as base:
        yield base


@pytest.fixture
async def sdk(url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT
    ) as client:
        yield client


async def stream_text(sdk: openai.AsyncOpenAI, model: str) -> tuple[str, Exception | None]:
    """The text streamed for ``model`` and the error that ended it, if any."""
    received = []
    stream = await sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    try:
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    except openai.APIError as exc:
        return "".join(received), exc
    return "".join(received), None


async def test_text_usage_and_the_request_sent(
    sdk: openai.AsyncOpenAI, upstream: FakeAnthropic
) -> None:
    upstream.scenario("claude-slow", Scenario(first_delay=0.05, interval=0.005))
    stream = await sdk.chat.completions.create(
        model="claude-slow",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        stop=["END"],
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == TOKENS
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (INPUT_TOKENS, 12)
    assert usage.total_tokens == INPUT_TOKENS + 12
    call = upstream.calls[0]
    assert call.headers["x-api-key"] == "sk-ant-test-key"
    assert call.headers["anthropic-version"] == "2023-06-01"
    assert call.body == {
        "model": "claude-slow",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say something."}]}],
        "system": "Be brief.",
        "max_tokens": 321,
        "stop_sequences": ["END"],
        "stream": True,
    }
    whole = await sdk.chat.completions.create(model="claude-x", messages=MESSAGES, max_tokens=5)
    assert whole.choices[0].message.content == TOKENS
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 12
    assert upstream.calls[1].body["max_tokens"] == 5


async def test_tool_calls(sdk: openai.AsyncOpenAI, upstream: FakeAnthropic) -> None:
    upstream.scenario(
        "claude-tools",
        Scenario(tokens=["Checking."], tool_call=("get_weather", ['{"city"', ': "Oslo"}'])),
    )
    tools: Any = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]
    async with sdk.chat.completions.stream(
        model="claude-tools", messages=MESSAGES, tools=tools
    ) as stream:
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert (call.id, call.function.name) == ("toolu_1", "get_weather")
    assert call.function.arguments == '{"city": "Oslo"}'
    sent = upstream.calls[0].body
    assert sent["tools"] == [{"name": "get_weather", "input_schema": {"type": "object"}}]
    assert sent["tool_choice"] == {"type": "auto"}
    # The answer goes back as tool_use and tool_result blocks.
    follow_up: Any = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "rain"},
    ]
    await sdk.chat.completions.create(model="claude-x", messages=follow_up, tools=tools)
    turns = upstream.calls[1].body["messages"]
    assert turns[1]["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
    ]
    assert turns[2]["content"][0]["type"] == "tool_result"


async def test_unknown_event_types_are_ignored(
    sdk: openai.AsyncOpenAI, upstream: FakeAnthropic
) -> None:
    upstream.scenario("claude-future", Scenario(unknown_events=True))
    assert await stream_text(sdk, "claude-future") == (TOKENS, None)


@pytest.mark.parametrize(("upstream_status", "status"), [(529, 502), (429, 429), (400, 400)])
async def test_an_http_refusal_is_an_http_error_or_the_streams_error(
    sdk: openai.AsyncOpenAI, upstream: FakeAnthropic, upstream_status: int, status: int
) -> None:
    kind = {529: "overloaded_error", 429: "rate_limit_error", 400: "invalid_request_error"}
    upstream.scenario(
        "claude-no", Scenario(status=upstream_status, error_type=kind[upstream_status])
    )
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model="claude-no", messages=MESSAGES)
    assert caught.value.status_code == status
    # Streamed, the headers went out before the upstream answered: the SDK
    # raises the stream's error line.
    stream = await sdk.chat.completions.create(model="claude-no", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as raised:
        async for _ in stream:
            pass
    expected = f"upstream answered {upstream_status} (type: {kind[upstream_status]})"
    for body in (caught.value.body, raised.value.body):
        assert isinstance(body, dict)
        assert body["message"] == expected


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        (Scenario(fail_after=3), "failed mid-stream (type: overloaded_error)"),
        (Scenario(malformed_after=3), "not JSON"),
        (Scenario(cut_after=3), "failed"),
        (
            Scenario(tokens=["tok0 ", "tok1 ", "tok2 "], send_delta=False, send_stop=False),
            "before the answer was finished",
        ),
    ],
)
async def test_a_failure_mid_stream_ends_with_an_error_chunk(
    sdk: openai.AsyncOpenAI, upstream: FakeAnthropic, scenario: Scenario, message: str
) -> None:
    upstream.scenario("claude-bad", scenario)
    text, error = await stream_text(sdk, "claude-bad")
    assert text == "tok0 tok1 tok2 "
    assert error is not None
    assert message in str(error)
    call = await upstream.next_call(1, TIMEOUT)
    async with asyncio.timeout(TIMEOUT):
        await call.finished.wait()


async def test_malformed_data_closes_the_upstream_request(
    sdk: openai.AsyncOpenAI, upstream: FakeAnthropic
) -> None:
    # The fake would go on for a while; the relay stops reading at the bad event.
    upstream.scenario("claude-junk", Scenario(malformed_after=2, interval=0.05))
    text, error = await stream_text(sdk, "claude-junk")
    assert text == "tok0 tok1 "
    assert error is not None
    assert "not JSON" in str(error)
    async with asyncio.timeout(TIMEOUT):
        await upstream.calls[0].disconnected.wait()
    assert upstream.calls[0].tokens_sent < len(Scenario().tokens)


async def test_a_stalled_upstream_times_out(
    sdk: openai.AsyncOpenAI, upstream: FakeAnthropic
) -> None:
    upstream.scenario("claude-stall", Scenario(pause_after=2))
    text, error = await stream_text(sdk, "claude-stall")
    assert text == "tok0 tok1 "
    assert error is not None
    assert "timed out" in str(error)
    async with asyncio.timeout(TIMEOUT):
        await upstream.calls[0].disconnected.wait()


async def test_delete_closes_the_upstream_request(url: str, upstream: FakeAnthropic) -> None:
    upstream.scenario("claude-paused", Scenario(pause_after=3))
    document = {"model": "claude-paused", "messages": MESSAGES, "stream": True}
    async with (
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http,
        http.stream("POST", "/v1/chat/completions", json=document) as response,
    ):
        assert response.status_code == 200
        reader = SSEReader(response)
        try:
            await reader.events(4)  # the role chunk and three tokens
            stream_id = response.headers["x-tidings-stream-id"]
            headers = {"content-type": "application/json"}
            deleted = await http.delete(f"/v1/streams/{stream_id}", headers=headers)
            assert deleted.json()["status"] == "cancelled"
            async with asyncio.timeout(TIMEOUT):
                await upstream.calls[0].disconnected.wait()
            (last,) = await reader.events(1)
        finally:
            await reader.aclose()
    assert orjson.loads(last.data)["error"]["code"] == "cancelled"
    assert upstream.calls[0].tokens_sent == 3


async def test_models_are_listed_page_by_page(
    sdk: openai.AsyncOpenAI, upstream: FakeAnthropic
) -> None:
    upstream.page_size = 2
    for name in ("claude-a", "claude-b", "other"):
        upstream.scenario(name, Scenario())
    models = {model.id: model.owned_by async for model in sdk.models.list()}
    # "other" routes nowhere (no default provider), so it is not listed.
    assert models == {"claude-a": "claude", "claude-b": "claude", "claude-fake": "claude"}
    assert [query.get("after_id") for query in upstream.model_requests] == [
        None,
        ["claude-b"],
    ]


async def test_an_unrouted_model_is_refused_and_nothing_is_sent(
    sdk: openai.AsyncOpenAI, upstream: FakeAnthropic
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:  # as OpenAI answers an unknown model
        await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "model"
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["type"] == "invalid_request_error"
    bad: Any = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]
    with pytest.raises(openai.BadRequestError, match="content part"):
        await sdk.chat.completions.create(model="claude-x", messages=bad, stream=True)
    assert upstream.calls == []
