"""GenerationRecord: what a generation was, once it has ended (or while it runs).

Theory of operation
-------------------

A :class:`GenerationRecord` is a frozen value that
:meth:`Generation.record() <tidings.llm.relay.Generation.record>` builds: the
final text and tool calls (folded from the chunks the relay published, the
same way a non-streamed answer is), the usage the upstream reported, the
time to first token, the duration, and how it ended (``status`` and, for a
cancelled one, ``reason``: ``deleted``, ``unheard`` or ``shutdown``; for a
failed or lost one, ``error``, the OpenAI-shaped error object).

It is what the ``on_complete`` hook receives, and its :meth:`to_json` is what
``GET /v1/streams/{id}`` answers with ``Accept: application/json``. The relay
also publishes it with the generation's owner (``llm:_owner/{id}``), so that
any server on the same backend can answer for it; :meth:`from_json` reads it
back. While the generation runs, the record says ``running`` and holds no
text yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RECORD_OBJECT", "GenerationRecord"]

#: The ``object`` field of a record's JSON.
RECORD_OBJECT = "tidings.generation"


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    """One generation, as it ended (or ``running``).

    Attributes:
        id: The generation id (``chatcmpl-…``), also the stream id.
        model: The model asked for.
        provider: The provider that served it.
        created: When it started (Unix seconds).
        status: ``running``, ``completed``, ``failed``, ``cancelled`` or ``lost``.
        reason: Who cancelled it (``deleted``, ``unheard``, ``shutdown``);
            None unless ``status`` is ``cancelled``.
        error: The OpenAI-shaped error object (``message``, ``type``,
            ``param``, ``code``) of a failed, cancelled or lost generation.
        text: The final text of the first choice ("" for none yet).
        tool_calls: The tool calls of the first choice, in OpenAI's shape.
        finish_reason: The first choice's ``finish_reason`` (None if none came).
        usage: The upstream's usage object, when it sent one.
        tokens: Content and tool-call deltas relayed.
        time_to_first_token: Seconds from start to the first token (None: none came).
        duration: Seconds from start to end (None while running).
    """

    id: str
    model: str
    provider: str
    created: int
    status: str
    reason: str | None = None
    error: Mapping[str, Any] | None = None
    text: str = ""
    tool_calls: tuple[Mapping[str, Any], ...] = field(default=())
    finish_reason: str | None = None
    usage: Mapping[str, Any] | None = None
    tokens: int = 0
    time_to_first_token: float | None = None
    duration: float | None = None

    @property
    def ended(self) -> bool:
        """Whether the generation has ended (any status but ``running``)."""
        return self.status != "running"

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object (what ``GET /v1/streams/{id}`` answers)."""
        return {
            "id": self.id,
            "object": RECORD_OBJECT,
            "model": self.model,
            "provider": self.provider,
            "created": self.created,
            "status": self.status,
            "reason": self.reason,
            "error": dict(self.error) if self.error is not None else None,
            "text": self.text,
            "tool_calls": [dict(call) for call in self.tool_calls],
            "finish_reason": self.finish_reason,
            "usage": dict(self.usage) if self.usage is not None else None,
            "tokens": self.tokens,
            "time_to_first_token": self.time_to_first_token,
            "duration": self.duration,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> GenerationRecord:
        """Read a record back from :meth:`to_json`'s output.

        Raises:
            ValueError: ``document`` is not a record.
        """
        try:
            ttft, duration = document.get("time_to_first_token"), document.get("duration")
            return cls(
                id=str(document["id"]),
                model=str(document["model"]),
                provider=str(document["provider"]),
                created=int(document["created"]),
                status=str(document["status"]),
                reason=document.get("reason"),
                error=document.get("error"),
                text=str(document.get("text") or ""),
                tool_calls=tuple(document.get("tool_calls") or ()),
                finish_reason=document.get("finish_reason"),
                usage=document.get("usage"),
                tokens=int(document.get("tokens") or 0),
                time_to_first_token=float(ttft) if ttft is not None else None,
                duration=float(duration) if duration is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a generation record: {exc}") from None
