"""llm/ui_messages.py: the AI SDK's chat request as a Chat Completions request."""

from __future__ import annotations

from typing import Any

import pytest

from tidings.errors import InvalidChatRequest
from tidings.llm.request import RequestLimits
from tidings.llm.ui_messages import parse_chat, to_openai_messages


def text(role: str, *texts: str) -> dict[str, Any]:
    return {"id": "m", "role": role, "parts": [{"type": "text", "text": t} for t in texts]}


def body(**fields: Any) -> dict[str, Any]:
    return {"id": "chat-1", "messages": [text("user", "hi")], "model": "m", **fields}


def test_a_chat_request_becomes_a_streamed_completion_request() -> None:
    chat = parse_chat(
        body(trigger="submit-message", messageId=None, temperature=0.5, sessionId="page's own")
    )
    assert chat.chat_id == "chat-1"
    assert chat.trigger == "submit-message"
    assert chat.continues is None
    assert chat.request.stream
    assert chat.request.model == "m"
    assert chat.request.messages == ({"role": "user", "content": "hi"},)
    assert chat.request.body == {
        "model": "m",
        "temperature": 0.5,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }


def test_parts_become_content_steps_and_tool_messages() -> None:
    weather = {
        "type": "tool-weather",
        "toolCallId": "c1",
        "state": "output-available",
        "input": {"city": "Paris"},
        "output": {"celsius": 21},
    }
    pending = {"type": "tool-weather", "toolCallId": "c2", "state": "input-available", "input": {}}
    failed = {
        "type": "dynamic-tool",
        "toolName": "search",
        "toolCallId": "c3",
        "state": "output-error",
        "input": {},
        "errorText": "down",
    }
    messages = [
        text("system", "be brief"),
        {
            "role": "user",
            "parts": [
                {"type": "text", "text": "what is this?"},
                {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,AA=="},
            ],
        },
        {
            "role": "assistant",
            "parts": [
                {"type": "step-start"},
                {"type": "reasoning", "text": "hidden"},
                {"type": "text", "text": "Let me look."},
                weather,
                pending,
                {"type": "step-start"},
                failed,
                {"type": "step-start"},
                {"type": "text", "text": "21 degrees."},
                {"type": "data-progress", "data": 1},
            ],
        },
    ]
    assert to_openai_messages(messages) == [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"celsius":21}'},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c3", "type": "function", "function": {"name": "search", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c3", "content": "Error: down"},
        {"role": "assistant", "content": "21 degrees."},
    ]


@pytest.mark.parametrize(
    ("document", "param"),
    [
        ([], "body"),
        (body(id=""), "id"),
        (body(id="x" * 129), "id"),
        (body(id="."), "id"),
        (body(id="a b"), "id"),
        (body(trigger="resume-stream"), "trigger"),
        (body(messages=None), "messages"),
        (body(messages=[text("user", "a")] * 3), "messages"),
        (body(messages=["hi"]), "messages[0]"),
        (body(messages=[text("tool", "a")]), "messages[0].role"),
        (body(messages=[{"role": "user", "parts": [1]}]), "messages[0].parts"),
        (
            body(messages=[{"role": "user", "parts": [{"type": "text"}]}]),
            "messages[0].parts[0].text",
        ),
        (
            body(messages=[{"role": "user", "parts": [{"type": "file", "mediaType": "text/csv"}]}]),
            "messages[0].parts[0]",
        ),
        (
            body(
                messages=[
                    {
                        "role": "assistant",
                        "parts": [{"type": "tool-x", "state": "output-available"}],
                    }
                ]
            ),
            "messages[0]",
        ),
        (body(model=""), "model"),
        (body(max_tokens=10**9), "max_tokens"),
    ],
)
def test_bad_requests_name_the_field(document: Any, param: str) -> None:
    with pytest.raises(InvalidChatRequest) as caught:
        parse_chat(document, RequestLimits(max_messages=2))
    assert caught.value.param == param


def test_routing_fields_are_not_forwarded() -> None:
    chat = parse_chat(body(base_url="http://elsewhere", api_key="k"))
    assert chat.request.body is not None
    assert "base_url" not in chat.request.body
    assert "api_key" not in chat.request.body


def test_an_answer_after_an_assistant_message_continues_it() -> None:
    tool = {"type": "tool-t", "toolCallId": "c1", "state": "output-available", "output": "ok"}
    last = {"id": "m-assistant", "role": "assistant", "parts": [tool]}
    chat = parse_chat(body(messages=[text("user", "hi"), last]))
    assert chat.continues == "m-assistant"
    assert [message["role"] for message in chat.request.messages] == ["user", "assistant", "tool"]
