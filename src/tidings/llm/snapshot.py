"""Snapshots: a generation so far as one chunk, for a viewer who joins late.

Theory of operation
-------------------

A generation is the events of its channel ``llm:{id}``: ``message`` chunks,
a ``usage`` chunk, then one ``end`` (``llm.relay``). Every chunk is a *delta*
(text to append, tool-call fragments to append, a finish reason to set), so
any run of consecutive chunks folds into a single chunk that has the same
effect on a client that applies it: :class:`ChunkMerger` does that fold,
without I/O. Per choice it keeps the role, the content so far, each tool
call (index, id, type, function name and arguments so far), other delta
fields (``refusal``, ``reasoning_content`` …: strings appended, other values
replaced, as :class:`~tidings.llm.chunks.Completion` does) and the finish
reason once set; and the last ``usage``. The fold is exact: for any cut,
folding ``merge(chunks[:cut])`` and then ``chunks[cut:]`` gives what folding
all the chunks gives, and ``merge(merge(a) + b) == merge(a + b)``.

:func:`take_snapshot` reads the channel's history after ``since`` (pages of
``page`` events, up to the position the first read reported) and folds the
leading run of ``message`` and ``usage`` events. The *cut* is the hub
position of the last event it took: a subscription ``since=cut`` replays
what came after it and then goes live, so snapshot and tail join with no gap
and no duplicate however many events arrive meanwhile. It works on every
backend (it only reads history), so a viewer on another server gets the
same snapshot. It stops before the ``end`` event (returned in ``end``, so a
caller need not subscribe for it) and before any other event type, which is
left to the tail unchanged. A ``since`` outside the history window folds nothing: the
cut stays at ``since`` and the subscription reports the reset, as it would
without a snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from tidings.hub import Event, Hub
from tidings.types import Position

__all__ = ["ChunkMerger", "Snapshot", "merge_chunks", "take_snapshot"]

#: Event types a snapshot folds.
FOLDED = frozenset({"message", "usage"})
#: Events read per history page.
PAGE = 1000
_OWN_KEYS = ("role", "content", "tool_calls")


class _ChoiceDelta:
    __slots__ = ("content", "extra", "finish_reason", "role", "tool_calls")

    def __init__(self) -> None:
        self.role: str | None = None
        self.content: list[str] | None = None
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}
        self.finish_reason: str | None = None

    def add(self, delta: Mapping[str, Any], finish_reason: Any) -> None:
        if isinstance(delta.get("role"), str):
            self.role = delta["role"]
        if isinstance(delta.get("content"), str):
            if self.content is None:
                self.content = []
            self.content.append(delta["content"])
        for fragment in delta.get("tool_calls") or ():
            self._add_tool_call(fragment)
        for key, value in delta.items():
            if key in _OWN_KEYS:
                continue
            if isinstance(value, str) and isinstance(self.extra.get(key), str):
                self.extra[key] += value
            else:
                self.extra[key] = value
        if finish_reason is not None:
            self.finish_reason = finish_reason

    def _add_tool_call(self, fragment: Mapping[str, Any]) -> None:
        index = int(fragment.get("index", len(self.tool_calls)))
        call = self.tool_calls.setdefault(index, {"index": index, "name": "", "arguments": ""})
        for key in ("id", "type"):
            if fragment.get(key):
                call[key] = fragment[key]
        function = fragment.get("function") or {}
        if function.get("name"):
            call["name"] += function["name"]
        if function.get("arguments"):
            call["arguments"] += function["arguments"]

    def delta(self) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if self.role is not None:
            delta["role"] = self.role
        if self.content is not None:
            delta["content"] = "".join(self.content)
        if self.tool_calls:
            delta["tool_calls"] = [
                _tool_call(self.tool_calls[index]) for index in sorted(self.tool_calls)
            ]
        delta.update(self.extra)
        return delta


def _tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    fragment: dict[str, Any] = {"index": call["index"]}
    for key in ("id", "type"):
        if key in call:
            fragment[key] = call[key]
    function: dict[str, Any] = {"name": call["name"]} if call["name"] else {}
    function["arguments"] = call["arguments"]
    fragment["function"] = function
    return fragment


class ChunkMerger:
    """Folds ``chat.completion.chunk`` objects into one chunk with the same effect.

    Unlike :class:`~tidings.llm.chunks.Completion`, which makes the final
    ``chat.completion``, the result is still a chunk: a client applies it
    like any other, then the chunks that follow.
    """

    def __init__(self) -> None:
        self.chunks = 0
        self._head: dict[str, Any] = {}
        self._choices: dict[int, _ChoiceDelta] = {}
        self._usage: Any = None

    def add(self, chunk: Mapping[str, Any]) -> None:
        """Add the next chunk."""
        self.chunks += 1
        self._head.update((k, v) for k, v in chunk.items() if k not in ("choices", "usage"))
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index", 0))
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = _ChoiceDelta()
            state.add(choice.get("delta") or {}, choice.get("finish_reason"))
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]

    def chunk(self) -> dict[str, Any] | None:
        """The merged chunk (the fields of the last chunk's head); None before any chunk."""
        if not self.chunks:
            return None
        merged: dict[str, Any] = {**self._head}
        merged["choices"] = [
            {
                "index": index,
                "delta": self._choices[index].delta(),
                "logprobs": None,
                "finish_reason": self._choices[index].finish_reason,
            }
            for index in sorted(self._choices)
        ]
        if self._usage is not None:
            merged["usage"] = self._usage
        return merged


def merge_chunks(chunks: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Fold ``chunks`` into one chunk (see :class:`ChunkMerger`); None when there are none."""
    merger = ChunkMerger()
    for chunk in chunks:
        merger.add(chunk)
    return merger.chunk()


class Snapshot(NamedTuple):
    """A generation's events after some position, folded.

    Attributes:
        chunk: The merged chunk of the events taken; None when none was.
        position: The cut: the position of the last event taken (``since``
            when none was). Subscribe from it for the rest.
        events: How many ``message``/``usage`` events ``chunk`` replaces.
        end: The ``end`` event right after the cut, when the generation had
            ended by then (a subscription from the cut would replay it).
    """

    chunk: dict[str, Any] | None
    position: Position
    events: int
    end: Event | None = None

    @property
    def event(self) -> str:
        """The event type for ``chunk``: ``message``, or ``usage`` for a usage-only chunk."""
        return "message" if self.chunk is None or self.chunk["choices"] else "usage"


async def take_snapshot(hub: Hub, channel: str, *, since: Position, page: int = PAGE) -> Snapshot:
    """Fold the events of ``channel`` after ``since`` into one chunk, up to an exact cut.

    Args:
        hub: The hub that holds the generation's channel.
        channel: The generation's channel (``llm:{id}``).
        since: Where to start: the generation's origin for the whole answer,
            or a client's cursor for what it has not seen.
        page: Events read per history request.

    Returns:
        The snapshot; subscribe ``since=snapshot.position`` for the rest.

    Raises:
        BackendUnavailable: the backend cannot be reached.
        ValueError: ``page`` is not positive.
    """
    if page < 1:
        raise ValueError(f"page must be >= 1, not {page}")
    merger = ChunkMerger()
    position = since
    target: int | None = None
    while target is None or position.offset < target:
        history = await hub.history(channel, since=position, limit=page)
        if history.reset is not None:
            break  # the subscription from ``position`` reports it
        if target is None:
            target = history.position.offset
        for event in history.events:
            if event.event == "end":
                return Snapshot(merger.chunk(), position, merger.chunks, event)
            data = None if event.is_text or event.event not in FOLDED else event.data
            if not isinstance(data, dict):
                return Snapshot(merger.chunk(), position, merger.chunks)
            merger.add(data)
            position = event.position
        if len(history.events) < page:
            break
    return Snapshot(merger.chunk(), position, merger.chunks)
