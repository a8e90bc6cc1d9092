"""The AI SDK's UI message stream: a generation's chunks in, UI message chunks out.

Theory of operation
-------------------

The ``ai`` package (v5 and v6) reads a chat's answer as a *UI message
stream*: SSE whose every event is ``data: {"type": …}`` (its
``uiMessageChunkSchema``), ending with ``data: [DONE]``, served with the
header ``x-vercel-ai-ui-message-stream: v1``. :class:`UIMessageStream`
turns the events of one generation (its ``chat.completion.chunk`` objects,
then its ``end``) into those chunks; it is sans-I/O, and it is a function of
the events alone, so replaying a generation from its start gives the same
chunks, byte for byte, which is what the AI SDK's resume expects
(``DefaultChatTransport`` replays: its client throws away what it had and
rebuilds the message from the replay's ``start``).

=====================================  ==========================================
generation                             UI message chunks
=====================================  ==========================================
(before anything)                      ``start`` (``messageId`` = generation id),
                                       ``start-step``
first ``content`` of a text run        ``text-start`` then ``text-delta``
more ``content``                       ``text-delta``
``reasoning_content`` / ``reasoning``  ``reasoning-start`` / ``reasoning-delta``
a tool call's first fragment           ``tool-input-start`` (id, name)
its ``arguments`` fragments            ``tool-input-delta``
``finish_reason`` or ``end``           ``text-end`` / ``reasoning-end``;
                                       ``tool-input-available`` (``input`` parsed),
                                       or ``tool-input-error`` when it is not JSON
``end`` completed                      ``finish-step``, ``finish`` (``finishReason``)
``end`` failed, history lost           ``finish-step``, ``error`` (``errorText``),
                                       ``finish`` (``finishReason: "error"``)
``end`` cancelled                      ``finish-step``, ``abort`` (``reason``)
=====================================  ==========================================

Tool parts are the AI SDK's static tool parts (``tool-{name}``): the tools
are the page's. Usage-only chunks say nothing to the page and are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["FINISH_REASONS", "UIMessageStream"]

#: OpenAI's ``finish_reason`` → the AI SDK's ``finishReason``; anything else is ``other``.
FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
    "content_filter": "content-filter",
}
_REASONING = ("reasoning_content", "reasoning")

Chunk = dict[str, Any]


@dataclass
class _ToolCall:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


class UIMessageStream:
    """The UI message chunks of one generation, fed its events in order.

    Args:
        message_id: The ``messageId`` of the ``start`` chunk (the generation id).
    """

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self._parts = 0
        self._text: str | None = None
        self._reasoning: str | None = None
        self._calls: dict[int, _ToolCall] = {}
        self._finish_reason: str | None = None
        self.ended = False

    def start(self) -> list[Chunk]:
        """The chunks that open the stream."""
        return [{"type": "start", "messageId": self.message_id}, {"type": "start-step"}]

    def feed(self, chunk: Mapping[str, Any]) -> list[Chunk]:
        """The chunks for one ``chat.completion.chunk`` object (choice 0 only)."""
        out: list[Chunk] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                out += self._delta(delta)
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self._finish_reason = reason
                out += self._close()
        return out

    def end(self, end: Mapping[str, Any]) -> list[Chunk]:
        """The chunks that close the stream, from the data of the ``end`` event."""
        self.ended = True
        out = [*self._close(), {"type": "finish-step"}]
        status = end.get("status")
        if status == "completed":
            reason = FINISH_REASONS.get(self._finish_reason or "stop", "other")
            return [*out, {"type": "finish", "finishReason": reason}]
        if status == "cancelled":
            return [*out, {"type": "abort", "reason": str(end.get("reason") or "cancelled")}]
        error = end.get("error")
        message = error.get("message") if isinstance(error, Mapping) else None
        text = message if isinstance(message, str) else "the generation failed"
        return [
            *out,
            {"type": "error", "errorText": text},
            {"type": "finish", "finishReason": "error"},
        ]

    def _delta(self, delta: Mapping[str, Any]) -> list[Chunk]:
        out: list[Chunk] = []
        for key in _REASONING:
            text = delta.get(key)
            if isinstance(text, str) and text:
                out += self._close_text()
                if self._reasoning is None:
                    self._reasoning = self._part_id("reasoning")
                    out.append({"type": "reasoning-start", "id": self._reasoning})
                out.append({"type": "reasoning-delta", "id": self._reasoning, "delta": text})
        content = delta.get("content")
        if isinstance(content, str) and content:
            out += self._close_reasoning()
            if self._text is None:
                self._text = self._part_id("text")
                out.append({"type": "text-start", "id": self._text})
            out.append({"type": "text-delta", "id": self._text, "delta": content})
        for fragment in delta.get("tool_calls") or ():
            if isinstance(fragment, Mapping):
                out += self._tool_fragment(fragment)
        return out

    def _tool_fragment(self, fragment: Mapping[str, Any]) -> list[Chunk]:
        index = fragment.get("index", len(self._calls))
        index = index if isinstance(index, int) else len(self._calls)
        function = fragment.get("function")
        function = function if isinstance(function, Mapping) else {}
        out: list[Chunk] = []
        call = self._calls.get(index)
        if call is None:
            call_id = fragment.get("id")
            name = function.get("name")
            call = _ToolCall(
                call_id if isinstance(call_id, str) and call_id else self._part_id("call"),
                name if isinstance(name, str) else "",
            )
            self._calls[index] = call
            out.append({"type": "tool-input-start", "toolCallId": call.id, "toolName": call.name})
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.arguments.append(arguments)
            out.append(
                {"type": "tool-input-delta", "toolCallId": call.id, "inputTextDelta": arguments}
            )
        return out

    def _part_id(self, kind: str) -> str:
        self._parts += 1
        return f"{kind}-{self._parts}"

    def _close_text(self) -> list[Chunk]:
        if self._text is None:
            return []
        part, self._text = self._text, None
        return [{"type": "text-end", "id": part}]

    def _close_reasoning(self) -> list[Chunk]:
        if self._reasoning is None:
            return []
        part, self._reasoning = self._reasoning, None
        return [{"type": "reasoning-end", "id": part}]

    def _close(self) -> list[Chunk]:
        out = [*self._close_reasoning(), *self._close_text()]
        for index in sorted(self._calls):
            out.append(_tool_input(self._calls[index]))
        self._calls.clear()
        return out


def _tool_input(call: _ToolCall) -> Chunk:
    text = "".join(call.arguments)
    base = {"toolCallId": call.id, "toolName": call.name}
    try:
        value = orjson.loads(text) if text.strip() else {}
    except orjson.JSONDecodeError as exc:
        return {
            "type": "tool-input-error",
            **base,
            "input": text,
            "errorText": f"the tool's arguments are not JSON: {exc}",
        }
    return {"type": "tool-input-available", **base, "input": value}
