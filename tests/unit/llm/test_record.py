"""llm/record.py and the relay's after-the-end path: the record, on_complete, the lease."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator

import pytest

from tests.support.env import TIMEOUT
from tests.unit.llm.test_relay import Scripted, chat
from tidings.errors import BackendUnavailable, UpstreamError
from tidings.hub import Hub
from tidings.llm import GenerationRecord, LLMConfig
from tidings.llm.chunks import Delta
from tidings.llm.config import ProviderRouter
from tidings.llm.relay import CHANNEL_PREFIX, OWNER_PREFIX, Relay, Status


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub() as hub:
        yield hub


@pytest.fixture
def provider() -> Scripted:
    return Scripted()


class Recorder:
    """An on_complete hook that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[GenerationRecord] = []
        self.called = asyncio.Event()

    async def __call__(self, record: GenerationRecord) -> None:
        self.records.append(record)
        self.called.set()


def make_relay(hub: Hub, provider: Scripted, **kwargs: object) -> Relay:
    router = ProviderRouter({"scripted": provider}, {}, default="scripted")
    return Relay(hub, router, grace=30.0, **kwargs)  # type: ignore[arg-type]


async def test_a_record_round_trips_through_json() -> None:
    record = GenerationRecord(
        id="chatcmpl-1",
        model="m",
        provider="p",
        created=1,
        status="completed",
        text="hi",
        tool_calls=({"id": "c", "type": "function"},),
        usage={"total_tokens": 2},
        tokens=1,
        time_to_first_token=0.5,
        duration=1.5,
    )
    document = record.to_json()
    assert document["object"] == "tidings.generation"
    assert GenerationRecord.from_json(document) == record
    assert record.ended
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.status = "failed"  # type: ignore[misc]
    with pytest.raises(ValueError, match="not a generation record"):
        GenerationRecord.from_json({"id": "x"})


async def test_on_complete_gets_the_final_record_once(hub: Hub, provider: Scripted) -> None:
    provider.script[1:1] = [
        Delta(tool_calls=[{"index": 0, "id": "t", "function": {"name": "f", "arguments": "{"}}])
    ]
    hook = Recorder()
    relay = make_relay(hub, provider, on_complete=hook)
    try:
        generation = await relay.start(chat())
        running = await relay.record(generation.id)
        assert running is not None
        assert running.status == "running"
        assert not running.ended
        async with asyncio.timeout(TIMEOUT):
            await generation.task  # type: ignore[misc]
        [record] = hook.records
        assert record.status == "completed"
        assert record.reason is None
        assert record.error is None
        assert record.text == "ab"
        assert record.tool_calls[0]["function"] == {"name": "f", "arguments": "{"}
        assert record.usage == {"total_tokens": 2}
        assert record.finish_reason == "stop"
        assert record.tokens == 3
        assert record.time_to_first_token is not None
        assert record.duration is not None
        assert 0 <= record.time_to_first_token <= record.duration
        assert await relay.record(generation.id) == record
        # Another relay on the hub (another server) reads the same record.
        other = make_relay(hub, provider)
        try:
            assert await other.record(generation.id) == record
            assert await other.record("chatcmpl-nope") is None
        finally:
            await other.aclose()
        # The lease is gone with the generation.
        assert await hub.backend.presence(OWNER_PREFIX + generation.id) == {}
    finally:
        await relay.aclose()


@pytest.mark.parametrize(
    ("ending", "status", "reason", "code"),
    [
        ("deleted", "cancelled", "deleted", "cancelled"),
        ("upstream", "failed", None, "upstream_error"),
        ("shutdown", "cancelled", "shutdown", "cancelled"),
    ],
)
async def test_on_complete_says_how_it_ended(
    hub: Hub, provider: Scripted, ending: str, status: str, reason: str | None, code: str
) -> None:
    provider.block_at = 2
    if ending == "upstream":
        provider.script[2] = UpstreamError("boom", status=500)
        provider.block_at = None
    hook = Recorder()
    relay = make_relay(hub, provider, on_complete=hook)
    try:
        generation = await relay.start(chat())
        async with asyncio.timeout(TIMEOUT):
            if ending == "deleted":
                await provider.blocked.wait()
                relay.cancel(generation.id, "deleted")
            elif ending == "shutdown":
                await provider.blocked.wait()
                await relay.aclose()
            await hook.called.wait()
    finally:
        await relay.aclose()
    [record] = hook.records
    assert (record.status, record.reason) == (status, reason)
    assert record.error is not None
    assert record.error["code"] == code
    assert record.text == "a"


async def test_a_hook_that_raises_or_hangs_is_logged_and_breaks_nothing(
    hub: Hub, provider: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    async def raising(record: GenerationRecord) -> None:
        raise RuntimeError("billing is down")

    async def hanging(record: GenerationRecord) -> None:
        await asyncio.Event().wait()

    for hook, message in ((raising, "raised RuntimeError"), (hanging, "within 0.05 s")):
        relay = make_relay(hub, provider, on_complete=hook, hook_timeout=0.05)
        try:
            with caplog.at_level(logging.WARNING, logger="tidings.llm.relay"):
                generation = await relay.start(chat())
                async with asyncio.timeout(TIMEOUT):
                    await generation.task  # type: ignore[misc]
            assert message in caplog.text
            assert generation.status is Status.COMPLETED
            assert generation.end_published
            assert relay.stats().completed == 1
        finally:
            await relay.aclose()
        caplog.clear()


@pytest.mark.parametrize("lease", [0, -1.0, float("nan"), float("inf")])
async def test_an_invalid_lease_or_hook_timeout_is_refused(
    hub: Hub, provider: Scripted, lease: float
) -> None:
    with pytest.raises(ValueError, match="lease must be a number of seconds > 0"):
        make_relay(hub, provider, lease=lease)
    with pytest.raises(ValueError, match="hook_timeout must be"):
        make_relay(hub, provider, hook_timeout=lease)
    with pytest.raises(ValueError, match=r"llm.lease must be 0.1 to 3600 seconds"):
        LLMConfig(lease=lease if lease > 0 else 0.01)


async def test_the_running_relay_renews_its_lease(hub: Hub, provider: Scripted) -> None:
    provider.block_at = 2
    relay = make_relay(hub, provider, lease=0.2)
    try:
        generation = await relay.start(chat())
        lease = OWNER_PREFIX + generation.id
        async with asyncio.timeout(TIMEOUT):
            await provider.blocked.wait()
            await asyncio.sleep(0.5)  # past the lease: only renewals keep it
        assert list(await hub.backend.presence(lease)) == [relay.node]
        # A watcher on another relay sees it alive and declares nothing.
        other = make_relay(hub, provider, lease=0.2)
        try:
            assert not await other.check_lease(generation.id)
        finally:
            await other.aclose()
        provider.release.set()
        async with asyncio.timeout(TIMEOUT):
            await generation.task  # type: ignore[misc]
        assert await hub.backend.presence(lease) == {}
    finally:
        await relay.aclose()


async def test_an_expired_lease_is_declared_lost_once(hub: Hub, provider: Scripted) -> None:
    provider.block_at = 2
    relay = make_relay(hub, provider, lease=0.2)
    hook = Recorder()
    watchers = [make_relay(hub, provider, lease=0.2, on_complete=hook) for _ in range(2)]
    try:
        generation = await relay.start(chat())
        async with asyncio.timeout(TIMEOUT):
            await provider.blocked.wait()
        # The running server "dies": its lease is no longer renewed.
        assert relay._renewing is not None
        relay._renewing.cancel()
        await hub.backend.presence_remove(OWNER_PREFIX + generation.id, relay.node)
        results = await asyncio.gather(*(w.check_lease(generation.id) for w in watchers))
        assert results == [True, True]
        events = (await hub.history(CHANNEL_PREFIX + generation.id)).events
        ends = [event.data for event in events if event.event == "end"]
        assert len(ends) == 1
        assert ends[0]["status"] == "lost"
        assert ends[0]["error"]["code"] == "generation_lost"
        async with asyncio.timeout(TIMEOUT):
            await hook.called.wait()
        for watcher in watchers:
            assert await watcher.check_lease(generation.id)  # ended: nothing more
            await watcher.aclose()  # waits for its hook calls
        [record] = hook.records  # one watcher won the claim
        assert record.status == "lost"
        assert record.text == "a"
        other = make_relay(hub, provider)
        try:
            assert await other.record(generation.id) == record
        finally:
            await other.aclose()
    finally:
        generation.cancel("shutdown")
        for one in (relay, *watchers):
            await one.aclose()


async def test_a_failed_renewal_is_logged_and_the_generation_goes_on(
    hub: Hub, provider: Scripted, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    provider.block_at = 2
    relay = make_relay(hub, provider, lease=0.15)
    try:
        generation = await relay.start(chat())
        calls = 0
        twice = asyncio.Event()

        async def down(*args: object, **kwargs: object) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                twice.set()
            raise BackendUnavailable("memory", "down for the test")

        with caplog.at_level(logging.WARNING, logger="tidings.llm.relay"):
            monkeypatch.setattr(hub.backend, "presence_add", down)
            async with asyncio.timeout(TIMEOUT):
                await provider.blocked.wait()
                await twice.wait()
        assert caplog.text.count("could not renew the leases") == 1
        assert not generation.done
        monkeypatch.undo()
        provider.release.set()
        async with asyncio.timeout(TIMEOUT):
            assert await generation.wait() is Status.COMPLETED
    finally:
        await relay.aclose()
