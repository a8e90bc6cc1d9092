"""llm/ui_stream.py: a generation's chunks and end as the AI SDK's UI message chunks."""

from __future__ import annotations

from typing import Any

from tidings.llm.chunks import Delta, build_chunk
from tidings.llm.ui_stream import UIMessageStream


def chunk(**delta: Any) -> dict[str, Any]:
    return build_chunk("chatcmpl-1", 0, "m", Delta(**delta))


def run(*chunks: dict[str, Any], end: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    ui = UIMessageStream("chatcmpl-1")
    out = ui.start()
    for one in chunks:
        out += ui.feed(one)
    return out + ui.end(end or {"status": "completed"})


def test_text_is_one_part_from_start_to_finish() -> None:
    out = run(
        chunk(role="assistant", content=""),
        chunk(content="Hel"),
        chunk(content="lo"),
        chunk(finish_reason="length"),
        chunk(usage={"total_tokens": 3}),
    )
    assert out == [
        {"type": "start", "messageId": "chatcmpl-1"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "Hel"},
        {"type": "text-delta", "id": "text-1", "delta": "lo"},
        {"type": "text-end", "id": "text-1"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "length"},
    ]


def test_a_replay_gives_the_same_chunks() -> None:
    chunks = [chunk(content="a"), chunk(extra={"reasoning": "r"}), chunk(content="b")]
    assert run(*chunks) == run(*chunks)


def test_reasoning_then_text_are_two_parts() -> None:
    out = run(
        chunk(extra={"reasoning_content": "think"}),
        chunk(content="say"),
        chunk(finish_reason="stop"),
    )
    assert [c["type"] for c in out[2:]] == [
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]
    assert out[3] == {"type": "reasoning-delta", "id": "reasoning-1", "delta": "think"}
    assert out[6]["id"] == "text-2"


def test_tool_calls_stream_their_input_and_end_parsed() -> None:
    first = {"index": 0, "id": "call_a", "function": {"name": "lookup", "arguments": ""}}
    second = {"index": 1, "function": {"name": "broken", "arguments": "{nope"}}
    out = run(
        chunk(tool_calls=(first,)),
        chunk(tool_calls=({"index": 0, "function": {"arguments": '{"q": 1}'}},)),
        chunk(tool_calls=(second,)),
        chunk(finish_reason="tool_calls"),
    )
    assert out[2:] == [
        {"type": "tool-input-start", "toolCallId": "call_a", "toolName": "lookup"},
        {"type": "tool-input-delta", "toolCallId": "call_a", "inputTextDelta": '{"q": 1}'},
        {"type": "tool-input-start", "toolCallId": "call-1", "toolName": "broken"},
        {"type": "tool-input-delta", "toolCallId": "call-1", "inputTextDelta": "{nope"},
        {
            "type": "tool-input-available",
            "toolCallId": "call_a",
            "toolName": "lookup",
            "input": {"q": 1},
        },
        {
            "type": "tool-input-error",
            "toolCallId": "call-1",
            "toolName": "broken",
            "input": "{nope",
            "errorText": out[7]["errorText"],
        },
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "tool-calls"},
    ]
    assert out[7]["errorText"].startswith("the tool's arguments are not JSON")


def test_an_unclosed_part_is_closed_by_the_end() -> None:
    out = run(chunk(content="x"), end={"status": "failed", "error": {"message": "boom"}})
    assert out[-4:] == [
        {"type": "text-end", "id": "text-1"},
        {"type": "finish-step"},
        {"type": "error", "errorText": "boom"},
        {"type": "finish", "finishReason": "error"},
    ]


def test_a_cancelled_generation_aborts() -> None:
    out = run(end={"status": "cancelled", "reason": "deleted"})
    assert out[-2:] == [{"type": "finish-step"}, {"type": "abort", "reason": "deleted"}]


def test_odd_chunks_say_nothing() -> None:
    ui = UIMessageStream("g")
    assert ui.feed({"choices": [{"index": 1, "delta": {"content": "other choice"}}]}) == []
    assert ui.feed({"choices": ["junk", {"delta": None}]}) == []
    assert ui.feed({}) == []
    assert ui.end({"status": "failed"})[-2] == {
        "type": "error",
        "errorText": "the generation failed",
    }
    finish = UIMessageStream("g")
    finish.feed(chunk(finish_reason="something_new"))
    assert finish.end({"status": "completed"})[-1] == {"type": "finish", "finishReason": "other"}
