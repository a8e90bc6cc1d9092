"""llm/providers/anthropic.py: the request translation, the event mapping, and the provider
over httpx.MockTransport."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from tidings.errors import UpstreamError, UpstreamTimeout
from tidings.llm.chunks import Completion, Delta, build_chunk
from tidings.llm.providers.anthropic import AnthropicProvider, MessageStream, messages_request
from tidings.llm.request import ChatRequest, validate_request


def chat(**body: Any) -> ChatRequest:
    return validate_request(
        {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}], **body}
    )


def event(kind: str, **fields: Any) -> str:
    return orjson.dumps({"type": kind, **fields}).decode()


def text(index: int, value: str) -> str:
    return event("content_block_delta", index=index, delta={"type": "text_delta", "text": value})


START = event(
    "message_start",
    message={"id": "msg_1", "usage": {"input_tokens": 10, "cache_read_input_tokens": 4}},
)
TOOL_START = event(
    "content_block_start",
    index=1,
    content_block={"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {}},
)


def json_delta(index: int, fragment: str) -> str:
    delta = {"type": "input_json_delta", "partial_json": fragment}
    return event("content_block_delta", index=index, delta=delta)


def stop(reason: str, output_tokens: int = 5) -> str:
    return event(
        "message_delta", delta={"stop_reason": reason}, usage={"output_tokens": output_tokens}
    )


def run(*events: str) -> list[Delta]:
    state = MessageStream()
    return [delta for data in events for delta in state.event(data)]


def fold(deltas: list[Delta]) -> dict[str, Any]:
    completion = Completion("chatcmpl-1", 1, "claude-x")
    for delta in deltas:
        completion.add(build_chunk("chatcmpl-1", 1, "claude-x", delta))
    return completion.result()


# -- the event mapping -----------------------------------------------------------------


def test_text_usage_and_stop() -> None:
    deltas = run(
        START,
        event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        event("ping"),
        text(0, "Hel"),
        text(0, "lo"),
        event("content_block_stop", index=0),
        stop("end_turn", 2),
        event("message_stop"),
    )
    assert deltas[0] == Delta(role="assistant", content="")
    assert [delta.content for delta in deltas[1:3]] == ["Hel", "lo"]
    assert deltas[3].finish_reason == "stop"
    assert deltas[4].usage == {
        "prompt_tokens": 14,
        "completion_tokens": 2,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert len(deltas) == 5


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("a_reason_to_come", "stop"),
    ],
)
def test_stop_reasons(reason: str, finish: str) -> None:
    deltas = run(START, stop(reason), event("message_stop"))
    assert [delta.finish_reason for delta in deltas if delta.finish_reason] == [finish]


def test_tool_use_becomes_openai_tool_call_deltas() -> None:
    second = TOOL_START.replace("toolu_9", "toolu_10").replace('"index":1', '"index":2')
    deltas = run(
        START,
        text(0, "Let me look."),
        TOOL_START,
        json_delta(1, ""),
        json_delta(1, '{"city":'),
        json_delta(1, ' "Oslo"}'),
        second,
        json_delta(2, "{}"),
        stop("tool_use"),
        event("message_stop"),
    )
    assert deltas[2].tool_calls == (
        {
            "index": 0,
            "id": "toolu_9",
            "type": "function",
            "function": {"name": "weather", "arguments": ""},
        },
    )
    assert deltas[4].tool_calls == ({"index": 0, "function": {"arguments": '{"city":'}},)
    result = fold(deltas)["choices"][0]
    assert result["finish_reason"] == "tool_calls"
    assert result["message"]["content"] == "Let me look."
    calls = result["message"]["tool_calls"]
    assert [(call["id"], call["function"]["arguments"]) for call in calls] == [
        ("toolu_9", '{"city": "Oslo"}'),
        ("toolu_10", "{}"),
    ]


def test_thinking_becomes_reasoning_content_and_signatures_are_dropped() -> None:
    thinking = {"type": "thinking_delta", "thinking": "Hmm."}
    signature = {"type": "signature_delta", "signature": "abc"}
    deltas = run(
        START,
        event("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
        event("content_block_delta", index=0, delta=thinking),
        event("content_block_delta", index=0, delta=signature),
    )
    assert deltas[1:] == [Delta(extra={"reasoning_content": "Hmm."})]


def test_unknown_event_and_delta_types_are_ignored() -> None:
    deltas = run(
        START,
        event("a_future_event", anything=[1, 2]),
        event("content_block_delta", index=0, delta={"type": "a_future_delta", "x": 1}),
        text(0, "ok"),
    )
    assert [delta.content for delta in deltas] == ["", "ok"]


def test_message_stop_without_a_stop_reason_still_finishes() -> None:
    deltas = run(START, text(0, "a"), event("message_stop"))
    assert deltas[-2].finish_reason == "stop"
    assert deltas[-1].usage is not None


def test_error_event_is_an_upstream_error_naming_its_type_only() -> None:
    error = event("error", error={"type": "overloaded_error", "message": "key sk-secret"})
    with pytest.raises(UpstreamError) as caught:
        run(START, error)
    assert str(caught.value) == "upstream failed mid-stream (type: overloaded_error)"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"type": "content_block_delta", "index": 0,', "not JSON"),
        ("[1, 2]", "not an object with a type"),
        ('{"no": "type"}', "not an object with a type"),
        ('{"type": "content_block_delta", "index": 0}', "without its delta object"),
        ('{"type": "content_block_delta", "delta": {"type": "text_delta"}}', "without an index"),
        (text(0, "x").replace('"text":"x"', '"text":5'), "text_delta without its text"),
        (json_delta(0, "{}"), "not a tool call"),
    ],
)
def test_malformed_events_are_errors(data: str, message: str) -> None:
    with pytest.raises(UpstreamError, match=message):
        run(START, data)


# -- the request ------------------------------------------------------------------------


def test_request_translation() -> None:
    request = chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": "Weather in Oslo and Bergen?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Bergen"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "rain"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": ""},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://img.example/a.png"}},
                ],
            },
        ],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Weather by city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0.5,
        stop="END",
        user="u-1",
        max_completion_tokens=99,
        seed=3,
    )
    body = messages_request(request, max_tokens=4096)
    assert body["system"] == "Be brief.\n\nUse tools."
    assert body["max_tokens"] == 99
    assert body["stream"] is True
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["temperature"] == 0.5
    assert "seed" not in body
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["tools"] == [
        {
            "name": "weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            "description": "Weather by city",
        }
    ]
    roles = [turn["role"] for turn in body["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][1] == {
        "type": "tool_use",
        "id": "toolu_2",
        "name": "weather",
        "input": {"city": "Bergen"},
    }
    last = body["messages"][2]["content"]
    assert last[0] == {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [{"type": "text", "text": "rain"}],
    }
    assert last[1] == {"type": "tool_result", "tool_use_id": "toolu_2"}
    assert last[3]["source"] == {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    assert last[4]["source"] == {"type": "url", "url": "https://img.example/a.png"}


def test_request_defaults() -> None:
    body = messages_request(chat(), max_tokens=321, model="claude-real")
    assert body == {
        "model": "claude-real",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 321,
        "stream": True,
    }
    tools = [{"type": "function", "function": {"name": "f"}}]
    for choice, expected in [
        (None, {"type": "auto"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    ]:
        body = messages_request(chat(tools=tools, tool_choice=choice), max_tokens=1)
        assert body["tool_choice"] == expected
        assert body["tools"][0]["input_schema"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "{x"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments is not JSON",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0] is a content part",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "image_url must be",
        ),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "cannot be sent"),
        ({"tools": [{"type": "function"}]}, "tools[0] must be a function tool"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": 3},
            "tool_choice must be",
        ),
    ],
)
def test_untranslatable_requests_are_refused_with_400(body: dict[str, Any], param: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        messages_request(chat(**body), max_tokens=1)
    assert caught.value.status == 400
    assert param in str(caught.value)


# -- the provider over a mock transport ----------------------------------------------------


def provider_for(
    handler: Callable[[httpx.Request], httpx.Response], **options: Any
) -> AnthropicProvider:
    return AnthropicProvider(
        "http://upstream/v1/",
        api_key="sk-ant-secret-key",
        transport=httpx.MockTransport(handler),
        **options,
    )


def sse(*events: str) -> bytes:
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (orjson.loads(data)["type"].encode(), data.encode())
        for data in events
    )


async def collect(provider: AnthropicProvider, request: ChatRequest | None = None) -> list[Delta]:
    try:
        return [delta async for delta in provider.stream(request or chat(stream=True))]
    finally:
        await provider.aclose()


async def test_stream_sends_the_headers_and_stops_at_message_stop() -> None:
    seen: list[httpx.Request] = []
    body = sse(START, text(0, "hi"), stop("end_turn"), event("message_stop")) + b"data: junk\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body)

    deltas = await collect(provider_for(handler, max_tokens=77))
    assert [delta.content for delta in deltas[:2]] == ["", "hi"]
    assert deltas[-1].usage is not None
    (request,) = seen
    assert str(request.url) == "http://upstream/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-secret-key"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert orjson.loads(request.content)["max_tokens"] == 77


async def test_a_stream_ending_after_the_stop_reason_still_reports_usage() -> None:
    body = sse(START, text(0, "hi"), stop("max_tokens", 1))
    deltas = await collect(provider_for(lambda _: httpx.Response(200, content=body)))
    assert deltas[-2].finish_reason == "length"
    assert deltas[-1].usage == {
        "prompt_tokens": 14,
        "completion_tokens": 1,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


async def test_a_stream_ending_early_is_an_error() -> None:
    body = sse(START, text(0, "hi"))
    with pytest.raises(UpstreamError, match="before the answer was finished"):
        await collect(provider_for(lambda _: httpx.Response(200, content=body)))


@pytest.mark.parametrize(
    ("status", "kind"), [(529, "overloaded_error"), (400, "invalid_request_error")]
)
async def test_http_errors_are_summarised_never_quoted(status: int, kind: str) -> None:
    error = {"type": "error", "error": {"type": kind, "message": "bad key sk-ant-secret-key"}}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=error)

    with pytest.raises(UpstreamError) as caught:
        await collect(provider_for(handler))
    assert str(caught.value) == f"upstream answered {status} (type: {kind})"
    assert caught.value.status == status


async def test_an_untranslatable_request_sends_nothing() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(500)

    bad = chat(messages=[{"role": "user", "content": [{"type": "file"}]}])
    with pytest.raises(UpstreamError):
        await collect(provider_for(handler), bad)
    assert seen == []


async def test_timeouts_are_upstream_timeouts() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(UpstreamTimeout, match="http://upstream/v1/messages"):
        await collect(provider_for(handler))


async def test_models_are_read_page_by_page() -> None:
    pages = {
        "": {"data": [{"id": "a"}, {"id": "b"}], "has_more": True, "last_id": "b"},
        "b": {"data": [{"id": "c"}], "has_more": False, "last_id": "c"},
    }
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=pages[request.url.params.get("after_id", "")])

    provider = provider_for(handler)
    try:
        assert await provider.models() == ["a", "b", "c"]
    finally:
        await provider.aclose()
    assert [request.url.path for request in seen] == ["/v1/models", "/v1/models"]
    assert seen[0].headers["x-api-key"] == "sk-ant-secret-key"


async def test_models_failures_and_configured_lists() -> None:
    provider = provider_for(lambda _: httpx.Response(200, json={"nothing": []}))
    with pytest.raises(UpstreamError, match="sent no model list"):
        await provider.models()
    await provider.aclose()
    provider = provider_for(
        lambda _: httpx.Response(401, json={"error": {"type": "authentication_error"}})
    )
    with pytest.raises(UpstreamError, match="401"):
        await provider.models()
    await provider.aclose()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError("a configured list asks nobody")

    provider = provider_for(refuse, models=["claude-a", "claude-b"])
    assert await provider.models() == ["claude-a", "claude-b"]
    await provider.aclose()


def test_max_tokens_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        AnthropicProvider(max_tokens=0)
