"""llm/request.py: what a chat completion request may be, and the param named when not."""

from __future__ import annotations

from typing import Any

import pytest

from tidings.errors import InvalidChatRequest
from tidings.llm.request import RequestLimits, validate_request

USER = {"role": "user", "content": "hello"}


def valid(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [USER], **fields}


def test_a_minimal_request() -> None:
    request = validate_request(valid())
    assert (request.model, request.stream, request.include_usage, request.max_tokens) == (
        "m",
        False,
        False,
        None,
    )
    assert request.prompt == "hello"


def test_streaming_with_usage_and_limits() -> None:
    request = validate_request(
        valid(
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=50,
            max_completion_tokens=20,
        )
    )
    assert request.stream
    assert request.include_usage
    assert request.max_tokens == 20


def test_unknown_fields_are_kept_for_the_upstream() -> None:
    body = valid(top_k=40, tools=[{"type": "function", "function": {"name": "f"}}])
    request = validate_request(body)
    assert request.body is not None
    assert request.body["top_k"] == 40


def test_prompt_of_content_parts_and_assistant_tool_calls() -> None:
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "42", "tool_call_id": "1"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    assert validate_request(valid(messages=messages)).prompt == "a b"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"messages": [USER]}, "model"),
        (valid(model=""), "model"),
        (valid(model="x" * 300), "model"),
        (valid(messages="hi"), "messages"),
        (valid(messages=[]), "messages"),
        (valid(messages=["hi"]), "messages[0]"),
        (valid(messages=[USER, {"role": "nobody", "content": "x"}]), "messages[1].role"),
        (valid(messages=[{"role": "user"}]), "messages[0].content"),
        (valid(messages=[{"role": "user", "content": 3}]), "messages[0].content"),
        (valid(messages=[{"role": "user", "content": "x", "name": 1}]), "messages[0].name"),
        (valid(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
        (valid(stream=1), "stream"),
        (valid(stream_options={"include_usage": True}), "stream_options"),
        (valid(stream=True, stream_options=[]), "stream_options"),
        (valid(stream=True, stream_options={"include_usage": "y"}), "stream_options.include_usage"),
        (valid(max_tokens=0), "max_tokens"),
        (valid(max_tokens=True), "max_tokens"),
        (valid(max_tokens=10**9), "max_tokens"),
        (valid(max_completion_tokens=-1), "max_completion_tokens"),
        (valid(n=3), "n"),
        (valid(temperature=2.5), "temperature"),
        (valid(top_p="1"), "top_p"),
        (valid(tools={}), "tools"),
        # The server chooses the upstream; a client naming one is refused, not forwarded.
        (valid(base_url="http://evil.example/v1"), "base_url"),
        (valid(api_base="http://evil.example/v1"), "api_base"),
        (valid(api_key="sk-mine"), "api_key"),
        (valid(provider={"order": ["x"]}), "provider"),
        (valid(url="http://evil.example"), "url"),
        (valid(headers={"authorization": "x"}), "headers"),
        (valid(model="http://evil.example/v1"), "model"),
        (valid(model="gpt 4"), "model"),
    ],
)
def test_refusals_name_the_param(body: Any, param: str | None) -> None:
    with pytest.raises(InvalidChatRequest) as caught:
        validate_request(body)
    assert caught.value.param == param
    assert caught.value.code == "invalid_request"
    assert isinstance(caught.value, ValueError)


def test_limits_are_configurable() -> None:
    limits = RequestLimits(max_messages=1, max_tokens=10)
    with pytest.raises(InvalidChatRequest, match="at most 1 messages"):
        validate_request(valid(messages=[USER, USER]), limits)
    with pytest.raises(InvalidChatRequest, match="from 1 to 10"):
        validate_request(valid(max_tokens=11), limits)


def test_the_disconnect_policy_is_read_and_never_forwarded() -> None:
    default = validate_request(valid())
    assert (default.on_disconnect, default.grace) == ("grace", None)
    for extension, expected in [
        ({"on_disconnect": "cancel"}, ("cancel", None)),
        ({"on_disconnect": "continue"}, ("continue", None)),
        ({"grace": 2}, ("grace", 2.0)),
        ({"on_disconnect": "grace", "grace": 0.5}, ("grace", 0.5)),
        ({}, ("grace", None)),
    ]:
        request = validate_request(valid(tidings=extension, top_k=3))
        assert (request.on_disconnect, request.grace) == expected
        assert request.body == valid(top_k=3)


@pytest.mark.parametrize(
    ("extension", "param"),
    [
        (None, "tidings"),
        (["cancel"], "tidings"),
        ({"on_disconnect": None}, "tidings.on_disconnect"),
        ({"on_disconnect": "CANCEL"}, "tidings.on_disconnect"),
        ({"grace": True}, "tidings.grace"),
        ({"grace": 61}, "tidings.grace"),
        ({"on_disconnect": "continue", "grace": 1}, "tidings.grace"),
        ({"ttl": 1}, "tidings.ttl"),
    ],
)
def test_a_bad_disconnect_policy_names_its_field(extension: object, param: str) -> None:
    with pytest.raises(InvalidChatRequest) as caught:
        validate_request(valid(tidings=extension), RequestLimits(max_grace=60))
    assert caught.value.param == param
