"""llm/snapshot.py: chunks fold into one chunk, and a snapshot cuts the channel exactly."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.env import TIMEOUT
from tidings.hub import Event, Hub, Reset
from tidings.llm.chunks import Completion
from tidings.llm.snapshot import ChunkMerger, merge_chunks, take_snapshot
from tidings.types import Position

CHANNEL = "llm:chatcmpl-snap"
HEAD = {"id": "chatcmpl-snap", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def chunk(delta: dict[str, Any], index: int = 0, finish: str | None = None) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**HEAD, "choices": [choice]}


def usage(total: int) -> dict[str, Any]:
    return {**HEAD, "choices": [], "usage": {"total_tokens": total}}


def fold(chunks: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """The final answer a client makes of ``chunks`` (None: no chunk)."""
    completion = Completion("chatcmpl-snap", 7, "m")
    for item in chunks:
        if item is not None:
            completion.add(item)
    return completion.result()


# -- strategies ---------------------------------------------------------------------------

pieces = st.text(max_size=6)  # any unicode, the empty string included
fragments = st.fixed_dictionaries(
    {"index": st.integers(0, 2)},
    optional={
        "id": st.sampled_from(["call_a", "call_b"]),
        "type": st.just("function"),
        "function": st.fixed_dictionaries({}, optional={"name": pieces, "arguments": pieces}),
    },
)
deltas = st.fixed_dictionaries(
    {},
    optional={
        "role": st.just("assistant"),
        "content": pieces,
        "tool_calls": st.lists(fragments, min_size=1, max_size=2),
        "refusal": pieces,
    },
)
choice_chunks = st.builds(
    chunk,
    deltas,
    index=st.integers(0, 2),
    finish=st.none() | st.sampled_from(["stop", "length", "tool_calls"]),
)
usage_chunks = st.builds(usage, st.integers(0, 10**6))
#: The first draw of unicode text builds Hypothesis' character tables, slowly on a busy machine.
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
streams = st.lists(
    st.one_of(choice_chunks, choice_chunks, choice_chunks, usage_chunks), max_size=12
)


# -- merge --------------------------------------------------------------------------------


@relaxed
@given(streams, st.data())
def test_snapshot_of_any_prefix_then_the_tail_is_the_whole_answer(
    chunks: list[dict[str, Any]], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(chunks)), label="cut")
    assert fold([merge_chunks(chunks[:cut]), *chunks[cut:]]) == fold(chunks)


@relaxed
@given(streams, st.data())
def test_merging_is_associative(chunks: list[dict[str, Any]], data: st.DataObject) -> None:
    # A snapshot from a cursor, applied after an earlier snapshot, is the same as one snapshot.
    cut = data.draw(st.integers(0, len(chunks)), label="cut")
    head = merge_chunks(chunks[:cut])
    assert merge_chunks([*([head] if head else []), *chunks[cut:]]) == merge_chunks(chunks)


@relaxed
@given(streams)
def test_merged_content_is_each_choices_text_so_far(chunks: list[dict[str, Any]]) -> None:
    merged = merge_chunks(chunks)
    texts: dict[int, str] = {}
    for item in chunks:
        for choice in item["choices"]:
            if "content" in choice["delta"]:
                texts[choice["index"]] = texts.get(choice["index"], "") + choice["delta"]["content"]
    choices = merged["choices"] if merged is not None else []
    assert {c["index"]: c["delta"]["content"] for c in choices if "content" in c["delta"]} == texts


def test_a_merged_chunk_has_role_content_tool_calls_finish_and_usage() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hé"}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                               "function": {"name": "get", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk({"content": "llo"}, index=1),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk({}, finish="tool_calls"),
        usage(9),
    ]  # fmt: skip
    assert merge_chunks(chunks) == {
        **HEAD,
        "choices": [
            {
                "index": 0,
                "delta": {
                    "role": "assistant",
                    "content": "Hé",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get", "arguments": '{"a":1}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            },
            {"index": 1, "delta": {"content": "llo"}, "logprobs": None, "finish_reason": None},
        ],
        "usage": {"total_tokens": 9},
    }


def test_nothing_merges_into_none_and_the_merger_counts_chunks() -> None:
    assert merge_chunks([]) is None
    merger = ChunkMerger()
    merger.add(usage(1))
    assert merger.chunks == 1
    assert merger.chunk() == usage(1)


# -- take_snapshot ------------------------------------------------------------------------


async def publish(hub: Hub, chunks: Sequence[dict[str, Any]]) -> None:
    for item in chunks:
        await hub.publish(CHANNEL, item, event="message" if item["choices"] else "usage")


async def rest(hub: Hub, since: Position) -> list[dict[str, Any]]:
    """The chunks after ``since``, up to the ``end`` event."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT), hub.subscribe(CHANNEL, since=since) as subscription:
        async for item in subscription:
            assert isinstance(item, Event)
            if item.event == "end":
                return out
            out.append(item.data)
    raise AssertionError("no end")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams, st.data())
async def test_snapshot_at_any_cut_then_the_subscription_is_the_whole_answer(
    chunks: list[dict[str, Any]], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(chunks)), label="cut")
    page = data.draw(st.integers(1, 4), label="page")
    async with Hub() as hub:
        origin = await hub.position(CHANNEL)
        await publish(hub, chunks[:cut])
        snapshot = await take_snapshot(hub, CHANNEL, since=origin, page=page)
        assert snapshot.events == cut
        assert snapshot.position.offset == origin.offset + cut
        assert snapshot.end is None
        await publish(hub, chunks[cut:])
        await hub.publish(CHANNEL, {"status": "completed"}, event="end")
        tail = await rest(hub, snapshot.position)
    assert len(tail) == len(chunks) - cut
    assert fold([snapshot.chunk, *tail]) == fold(chunks)


async def test_an_ended_generation_is_one_chunk_and_its_end() -> None:
    chunks = [chunk({"role": "assistant", "content": "a"}), chunk({"content": "b"}, finish="stop")]
    async with Hub() as hub:
        await publish(hub, chunks)
        await hub.publish(CHANNEL, {"status": "completed"}, event="end")
        snapshot = await take_snapshot(
            hub, CHANNEL, since=Position((await hub.position(CHANNEL)).epoch, 0)
        )
    assert snapshot.chunk == merge_chunks(chunks)
    assert snapshot.events == 2
    assert snapshot.position.offset == 2  # the end (offset 3) comes after the cut
    assert snapshot.end is not None
    assert snapshot.end.data == {"status": "completed"}
    assert snapshot.event == "message"


async def test_a_snapshot_from_a_cursor_folds_only_what_follows_it() -> None:
    async with Hub() as hub:
        await publish(hub, [chunk({"content": "seen "}), chunk({"content": "new"})])
        position = await hub.position(CHANNEL)
        cursor = Position(position.epoch, 1)
        snapshot = await take_snapshot(hub, CHANNEL, since=cursor)
        assert snapshot.chunk == merge_chunks([chunk({"content": "new"})])
        # Nothing new after the channel's position: no chunk, the cut stays.
        empty = await take_snapshot(hub, CHANNEL, since=position)
        assert (empty.chunk, empty.position, empty.events) == (None, position, 0)


async def test_the_snapshot_stops_before_an_event_it_cannot_fold() -> None:
    async with Hub() as hub:
        await publish(hub, [chunk({"content": "a"})])
        await hub.publish(CHANNEL, {"note": 1}, event="lease")
        await publish(hub, [chunk({"content": "b"})])
        await hub.publish(CHANNEL, "plain text")
        origin = Position((await hub.position(CHANNEL)).epoch, 0)
        snapshot = await take_snapshot(hub, CHANNEL, since=origin)
        assert snapshot.chunk == merge_chunks([chunk({"content": "a"})])
        assert snapshot.position.offset == 1
        second = await take_snapshot(hub, CHANNEL, since=Position(origin.epoch, 2))
        assert second.chunk == merge_chunks([chunk({"content": "b"})])
        assert second.position.offset == 3


async def test_a_cursor_outside_the_window_folds_nothing_and_the_subscription_resets() -> None:
    async with Hub() as hub:
        await publish(hub, [chunk({"content": "a"})])
        stale = Position("another-epoch", 1)
        snapshot = await take_snapshot(hub, CHANNEL, since=stale)
        assert (snapshot.chunk, snapshot.position, snapshot.events) == (None, stale, 0)
        async with asyncio.timeout(TIMEOUT), hub.subscribe(CHANNEL, since=stale) as subscription:
            assert isinstance(await anext(aiter(subscription)), Reset)


async def test_a_page_must_be_positive() -> None:
    async with Hub() as hub:
        with pytest.raises(ValueError, match="page must be >= 1"):
            await take_snapshot(hub, CHANNEL, since=Position("e", 0), page=0)
