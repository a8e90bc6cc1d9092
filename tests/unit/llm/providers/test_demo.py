"""llm/providers/demo.py: deterministic, bounded, closable."""

from __future__ import annotations

import contextlib

from tidings.llm.chunks import Delta
from tidings.llm.providers.demo import DemoProvider
from tidings.llm.request import validate_request


def request(**fields: object):  # type: ignore[no-untyped-def]
    body = {"model": "demo", "messages": [{"role": "user", "content": "Why?"}], **fields}
    return validate_request(body)


async def collect(provider: DemoProvider, **fields: object) -> list[Delta]:
    return [delta async for delta in provider.stream(request(**fields))]


async def test_the_answer_is_deterministic_and_ends_with_stop_and_usage() -> None:
    provider = DemoProvider(first_token_delay=0, token_interval=0)
    first, second = await collect(provider), await collect(provider)
    assert first == second
    assert first[0] == Delta(role="assistant", content="")
    text = "".join(delta.content or "" for delta in first)
    assert text.startswith('You asked: "Why?".')
    assert first[-2].finish_reason == "stop"
    usage = first[-1].usage
    assert usage is not None
    assert usage["completion_tokens"] == len(provider.tokens(request()))


async def test_max_tokens_truncates_with_length() -> None:
    deltas = await collect(DemoProvider(first_token_delay=0, token_interval=0), max_tokens=3)
    assert sum(1 for delta in deltas if delta.content) == 3
    assert deltas[-2].finish_reason == "length"


async def test_closing_the_iterator_stops_it() -> None:
    provider = DemoProvider(first_token_delay=0, token_interval=0)
    async with contextlib.aclosing(provider.stream(request())) as deltas:
        async for delta in deltas:
            if delta.content:
                break
    assert delta.content == "You"
