"""OpenAI Chat Completions shapes: deltas in, ``chat.completion(.chunk)`` out.

A provider yields :class:`Delta` values; :func:`build_chunk` turns one into
the ``chat.completion.chunk`` object that is published and streamed
(:class:`ChunkEncoder` writes the same object's JSON bytes straight from
the delta, with the generation's fixed fields encoded once), and
:class:`Completion` folds a whole stream of chunks back into the
non-streamed ``chat.completion`` object. :func:`error_object` is OpenAI's
``{"message", "type", "param", "code"}`` error shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["ChunkEncoder", "Completion", "Delta", "build_chunk", "error_object"]


@dataclass(frozen=True, slots=True)
class Delta:
    """One step of a generation, as a provider reports it.

    Attributes:
        content: Text to append to the answer.
        role: The role of the message, on its first delta.
        tool_calls: Tool-call fragments, exactly as the upstream sent them.
        finish_reason: Why the choice ended (``stop``, ``length``, ``tool_calls`` …).
        usage: Token counts; a delta with only ``usage`` becomes the usage chunk.
        index: The choice index.
        extra: Other delta fields passed through unchanged (``refusal``,
            ``reasoning_content`` …).
    """

    content: str | None = None
    role: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] | None = None
    finish_reason: str | None = None
    usage: Mapping[str, Any] | None = None
    index: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_choice(self) -> bool:
        """Whether this delta carries a choice (not only usage)."""
        return (
            self.content is not None
            or self.role is not None
            or bool(self.tool_calls)
            or self.finish_reason is not None
            or bool(self.extra)
        )

    @property
    def is_token(self) -> bool:
        """Whether this delta adds generated output (text or tool-call arguments)."""
        return bool(self.content) or bool(self.tool_calls) or bool(self.extra)


def build_chunk(completion_id: str, created: int, model: str, delta: Delta) -> dict[str, Any]:
    """Return the ``chat.completion.chunk`` object for ``delta``.

    A delta with a choice gives one choice; a usage-only delta gives the
    usage chunk (``choices: []``), as ``stream_options.include_usage`` does.
    """
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
    }
    if delta.has_choice:
        body: dict[str, Any] = {}
        if delta.role is not None:
            body["role"] = delta.role
        if delta.content is not None:
            body["content"] = delta.content
        if delta.tool_calls:
            body["tool_calls"] = [dict(call) for call in delta.tool_calls]
        body.update(delta.extra)
        chunk["choices"].append(
            {
                "index": delta.index,
                "delta": body,
                "logprobs": None,
                "finish_reason": delta.finish_reason,
            }
        )
    if delta.usage is not None:
        chunk["usage"] = dict(delta.usage)
    return chunk


class ChunkEncoder:
    """The JSON bytes of ``build_chunk(completion_id, created, model, delta)``, cheaper.

    The fields every chunk of a generation shares are encoded once; per
    delta only the delta's own fields are, so a token costs one small
    ``orjson.dumps`` instead of building and encoding the whole object.
    The bytes are exactly ``orjson.dumps(build_chunk(...))``.
    """

    __slots__ = ("_head",)

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
        self._head = orjson.dumps({**head, "model": model})[:-1] + b',"choices":['

    def encode(self, delta: Delta) -> bytes:
        """The chunk for ``delta``, as JSON bytes."""
        parts = [self._head]
        if delta.has_choice:
            body: dict[str, Any] = {}
            if delta.role is not None:
                body["role"] = delta.role
            if delta.content is not None:
                body["content"] = delta.content
            if delta.tool_calls:
                body["tool_calls"] = [dict(call) for call in delta.tool_calls]
            if delta.extra:
                body.update(delta.extra)
            parts += (
                b'{"index":%d,"delta":' % delta.index,
                orjson.dumps(body),
                b',"logprobs":null,"finish_reason":',
                orjson.dumps(delta.finish_reason),
                b"}",
            )
        if delta.usage is not None:
            parts += (b'],"usage":', orjson.dumps(dict(delta.usage)), b"}")
        else:
            parts.append(b"]}")
        return b"".join(parts)


def error_object(
    message: str, *, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Choice:
    __slots__ = ("content", "extra", "finish_reason", "role", "tool_calls")

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.extra: dict[str, Any] = {}

    def add(self, delta: Mapping[str, Any], finish_reason: str | None) -> None:
        if isinstance(delta.get("role"), str):
            self.role = delta["role"]
        if isinstance(delta.get("content"), str):
            self.content.append(delta["content"])
        for fragment in delta.get("tool_calls") or ():
            self._add_tool_call(fragment)
        self.add_extra(delta)
        if finish_reason is not None:
            self.finish_reason = finish_reason

    def add_extra(self, fields: Mapping[str, Any]) -> None:
        """Fold the delta fields other than role, content and tool_calls."""
        for key, value in fields.items():
            if key in ("role", "content", "tool_calls"):
                continue
            if isinstance(value, str) and isinstance(self.extra.get(key), str):
                self.extra[key] += value
            else:
                self.extra[key] = value

    def _add_tool_call(self, fragment: Mapping[str, Any]) -> None:
        call = self.tool_calls.setdefault(
            int(fragment.get("index", len(self.tool_calls))),
            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if fragment.get("id"):
            call["id"] = fragment["id"]
        if fragment.get("type"):
            call["type"] = fragment["type"]
        function = fragment.get("function") or {}
        if function.get("name"):
            call["function"]["name"] += function["name"]
        if function.get("arguments"):
            call["function"]["arguments"] += function["arguments"]

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": self.role,
            "content": "".join(self.content) if self.content or not self.tool_calls else None,
            "refusal": None,
        }
        message.update(self.extra)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[index] for index in sorted(self.tool_calls)]
        return message


class Completion:
    """Folds ``chat.completion.chunk`` objects into one ``chat.completion``."""

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.id = completion_id
        self.created = created
        self.model = model
        self.usage: dict[str, Any] | None = None
        self._choices: dict[int, _Choice] = {}

    def add(self, chunk: Mapping[str, Any]) -> None:
        """Add one chunk."""
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index", 0))
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = _Choice()
            state.add(choice.get("delta") or {}, choice.get("finish_reason"))
        if chunk.get("usage") is not None:
            self.usage = dict(chunk["usage"])

    def add_delta(self, delta: Delta) -> None:
        """Add the chunk of ``delta`` (the same as ``add(build_chunk(…, delta))``, cheaper)."""
        if delta.has_choice:
            state = self._choices.get(delta.index)
            if state is None:
                state = self._choices[delta.index] = _Choice()
            if delta.role is not None:
                state.role = delta.role
            if delta.content is not None:
                state.content.append(delta.content)
            for fragment in delta.tool_calls or ():
                state._add_tool_call(fragment)
            if delta.extra:
                state.add_extra(delta.extra)
            if delta.finish_reason is not None:
                state.finish_reason = delta.finish_reason
        if delta.usage is not None:
            self.usage = dict(delta.usage)

    def first(self) -> tuple[dict[str, Any], str | None]:
        """The first choice's message so far, and its ``finish_reason`` (None: none yet)."""
        choice = self._choices.get(0) or _Choice()
        return choice.message(), choice.finish_reason

    def result(self) -> dict[str, Any]:
        """The ``chat.completion`` object of everything added so far."""
        choices = self._choices or {0: _Choice()}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": index,
                    "message": choices[index].message(),
                    "logprobs": None,
                    "finish_reason": choices[index].finish_reason or "stop",
                }
                for index in sorted(choices)
            ],
            "usage": self.usage,
        }
