"""llm/chunks.py: deltas become OpenAI chunks, and chunks fold back into a completion."""

from __future__ import annotations

import orjson
import pytest

from tidings.llm.chunks import ChunkEncoder, Completion, Delta, build_chunk, error_object


def test_a_content_chunk_has_every_field_the_sdk_needs() -> None:
    chunk = build_chunk("chatcmpl-1", 17, "m", Delta(content="Hi"))
    assert chunk == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 17,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"content": "Hi"}, "logprobs": None, "finish_reason": None}
        ],
    }


def test_role_finish_tool_calls_and_extra_fields() -> None:
    call = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}
    delta = Delta(
        role="assistant",
        tool_calls=(call,),
        finish_reason="tool_calls",
        index=1,
        extra={"reasoning_content": "hmm"},
    )
    (choice,) = build_chunk("i", 1, "m", delta)["choices"]
    assert choice["index"] == 1
    assert choice["finish_reason"] == "tool_calls"
    assert choice["delta"] == {
        "role": "assistant",
        "tool_calls": [call],
        "reasoning_content": "hmm",
    }
    assert delta.is_token


def test_a_usage_only_delta_is_the_usage_chunk() -> None:
    delta = Delta(usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    chunk = build_chunk("i", 1, "m", delta)
    assert chunk["choices"] == []
    assert chunk["usage"]["total_tokens"] == 3
    assert not delta.has_choice
    assert not delta.is_token


def test_empty_content_is_a_choice_but_not_a_token() -> None:
    delta = Delta(role="assistant", content="")
    assert delta.has_choice
    assert not delta.is_token


def test_error_object_shape() -> None:
    assert error_object("bad", type="invalid_request_error", param="model") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "model", "code": None}
    }


def test_completion_folds_text_tool_calls_and_usage() -> None:
    completion = Completion("i", 5, "m")
    deltas = [
        Delta(role="assistant", content=""),
        Delta(content="Hel"),
        Delta(content="lo"),
        Delta(
            tool_calls=(
                {
                    "index": 0,
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get", "arguments": '{"a"'},
                },
            )
        ),
        Delta(tool_calls=({"index": 0, "function": {"arguments": ": 1}"}},)),
        Delta(finish_reason="tool_calls"),
        Delta(usage={"total_tokens": 9}),
    ]
    for delta in deltas:
        completion.add(build_chunk("i", 5, "m", delta))
    result = completion.result()
    assert result["object"] == "chat.completion"
    (choice,) = result["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Hello"
    assert choice["message"]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}
    ]
    assert result["usage"] == {"total_tokens": 9}


def test_an_empty_completion_still_has_one_choice() -> None:
    result = Completion("i", 5, "m").result()
    assert result["choices"][0]["message"]["content"] == ""
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"] is None


@pytest.mark.parametrize(
    "delta",
    [
        Delta(content='tok \u2603 "quoted"\n'),
        Delta(role="assistant", content=""),
        Delta(content="", finish_reason="stop", index=2),
        Delta(tool_calls=({"index": 0, "function": {"arguments": '{"a'}},)),
        Delta(content="x", extra={"reasoning_content": "why"}),
        Delta(usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}),
        Delta(content="both", usage={"total_tokens": 1}),
    ],
)
def test_the_encoder_writes_exactly_the_built_chunk(delta: Delta) -> None:
    encoder = ChunkEncoder("chatcmpl-1", 1700000000, 'model "with" quotes')
    built = build_chunk("chatcmpl-1", 1700000000, 'model "with" quotes', delta)
    assert encoder.encode(delta) == orjson.dumps(built)
    folded, added = Completion("c", 1, "m"), Completion("c", 1, "m")
    for _ in range(2):  # twice: the second appends to the first
        folded.add(built)
        added.add_delta(delta)
    assert added.result() == folded.result()
