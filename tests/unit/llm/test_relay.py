"""llm/relay.py: generations published to the hub, cancelled, failed, counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
import pytest

from tests.support.env import TIMEOUT
from tidings.errors import BackendUnavailable, QueueFull, UpstreamError, UpstreamTimeout
from tidings.hub import Hub
from tidings.llm.chunks import Delta
from tidings.llm.config import ProviderRouter
from tidings.llm.relay import Relay, Status, upstream_status
from tidings.llm.request import ChatRequest, validate_request


class Scripted:
    """A provider that yields its script, can block at a step, and records being closed."""

    def __init__(self, name: str = "scripted") -> None:
        self.name = name
        self.script: list[Delta | BaseException] = [
            Delta(role="assistant", content=""),
            Delta(content="a"),
            Delta(content="b"),
            Delta(finish_reason="stop"),
            Delta(usage={"total_tokens": 2}),
        ]
        self.block_at: int | None = None
        self.blocked = asyncio.Event()
        self.release = asyncio.Event()
        self.closed = asyncio.Event()
        self.started = 0
        self.provider_closed = False

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        self.started += 1
        try:
            for index, step in enumerate(self.script):
                if index == self.block_at:
                    self.blocked.set()
                    await self.release.wait()
                if isinstance(step, BaseException):
                    raise step
                yield step
        finally:
            self.closed.set()

    async def aclose(self) -> None:
        self.provider_closed = True


def chat(model: str = "m") -> ChatRequest:
    return validate_request({"model": model, "messages": [{"role": "user", "content": "q"}]})


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub() as hub:
        yield hub


@pytest.fixture
def provider() -> Scripted:
    return Scripted()


@pytest.fixture
async def relay(hub: Hub, provider: Scripted) -> AsyncIterator[Relay]:
    router = ProviderRouter({"scripted": provider}, {}, default="scripted")
    relay = Relay(hub, router, grace=30.0)
    try:
        yield relay
    finally:
        await relay.aclose()


async def events(hub: Hub, channel: str) -> list[tuple[str, Any]]:
    return [(event.event, event.data) for event in (await hub.history(channel)).events]


async def wait(relay: Relay, generation_id: str) -> Status:
    generation = relay.get(generation_id)
    assert generation is not None
    async with asyncio.timeout(TIMEOUT):
        return await generation.wait()


async def test_a_generation_is_published_whole(relay: Relay, hub: Hub) -> None:
    generation = await relay.start(chat())
    assert generation.channel == f"llm:{generation.id}"
    assert generation.id.startswith("chatcmpl-")
    assert generation.origin.offset == 0
    assert await wait(relay, generation.id) is Status.COMPLETED
    published = await events(hub, generation.channel)
    assert [kind for kind, _ in published] == ["message"] * 4 + ["usage", "end"]
    assert published[1][1]["choices"][0]["delta"] == {"content": "a"}
    assert {data["id"] for kind, data in published[:-1]} == {generation.id}
    assert published[-1][1] == {"status": "completed"}
    stats = relay.stats()
    assert (stats.active, stats.started, stats.completed, stats.tokens) == (0, 1, 1, 2)
    assert stats.ttft_ms_p50 is not None


async def test_ids_are_unguessable(relay: Relay) -> None:
    ids = {(await relay.start(chat())).id for _ in range(3)}
    assert len(ids) == 3
    for generation_id in ids:
        random = generation_id.removeprefix("chatcmpl-")
        assert len(random) == 32  # 128 bits, hex
        int(random, 16)


async def test_the_owner_is_known_to_every_relay_on_the_hub(hub: Hub, provider: Scripted) -> None:
    here = Relay(hub, ProviderRouter({"p": provider}, {}, default="p"))
    there = Relay(hub, ProviderRouter({"p": Scripted()}, {}, default="p"))
    try:
        provider.block_at = 1
        generation = await here.start(chat(), owner="user:alice")
        assert generation.owner == "user:alice"
        assert await here.owner(generation.id) == "user:alice"
        assert await there.owner(generation.id) == "user:alice"  # from the hub, while it runs
        provider.release.set()
        assert await wait(here, generation.id) is Status.COMPLETED
        assert await there.owner(generation.id) == "user:alice"  # and after its end
        assert await there.owner("chatcmpl-unknown") is None
        # The owner is in no event of the generation's channel.
        assert "alice" not in orjson.dumps(await events(hub, generation.channel)).decode()
        anonymous = await there.start(chat())
        assert await here.owner(anonymous.id) == "anonymous"
    finally:
        await here.aclose()
        await there.aclose()


async def test_cancel_closes_the_provider_and_says_so_last(
    relay: Relay, hub: Hub, provider: Scripted
) -> None:
    provider.block_at = 2
    generation = await relay.start(chat())
    async with asyncio.timeout(TIMEOUT):
        await provider.blocked.wait()
    assert relay.cancel(generation.id) is generation
    assert await wait(relay, generation.id) is Status.CANCELLED
    assert provider.closed.is_set()
    kind, end = (await events(hub, generation.channel))[-1]
    assert kind == "end"
    assert (end["status"], end["reason"], end["error"]["code"]) == (
        "cancelled",
        "deleted",
        "cancelled",
    )
    assert not generation.cancel("again")
    assert relay.stats().cancelled == 1
    assert relay.cancel("chatcmpl-unknown") is None


async def test_cancel_before_the_task_runs(relay: Relay, hub: Hub, provider: Scripted) -> None:
    generation = await relay.start(chat())
    relay.cancel(generation.id)
    assert await wait(relay, generation.id) is Status.CANCELLED
    assert provider.started == 0
    assert [kind for kind, _ in await events(hub, generation.channel)] == ["end"]


async def test_an_unheard_generation_is_cancelled(hub: Hub, provider: Scripted) -> None:
    provider.block_at = 1
    router = ProviderRouter({"scripted": provider}, {}, default="scripted")
    relay = Relay(hub, router, grace=0.01)
    try:
        generation = await relay.start(chat())
        assert await wait(relay, generation.id) is Status.CANCELLED
        assert generation.cancel_reason == "unheard"
        assert provider.closed.is_set()
    finally:
        await relay.aclose()


async def test_listeners_and_subscribers_keep_a_generation_alive(hub: Hub) -> None:
    held, subscribed, clock = Scripted("held"), Scripted("subscribed"), Scripted("clock")
    for provider in (held, subscribed, clock):
        provider.block_at = 1
    router = ProviderRouter(
        {"held": held, "subscribed": subscribed, "clock": clock},
        {"held": "held", "subscribed": "subscribed"},
        default="clock",
    )
    relay = Relay(hub, router, grace=0.01)
    try:
        first = await relay.start(chat("held"))
        second = await relay.start(chat("subscribed"))
        with first.listening():
            async with hub.subscribe(second.channel):
                # The unheard one, started last, is cancelled after the grace
                # period; by then the other two have outlived theirs.
                third = await relay.start(chat("clock"))
                assert await wait(relay, third.id) is Status.CANCELLED
                assert not first.done
                assert not second.done
                held.release.set()
                subscribed.release.set()
                assert await wait(relay, first.id) is Status.COMPLETED
                assert await wait(relay, second.id) is Status.COMPLETED
    finally:
        await relay.aclose()


async def test_cancel_unheard_can_be_turned_off(hub: Hub) -> None:
    kept, clock = Scripted("kept"), Scripted("clock")
    kept.block_at = clock.block_at = 1
    relay_off = Relay(
        hub, ProviderRouter({"kept": kept}, {}, default="kept"), grace=0.0, cancel_unheard=False
    )
    relay_on = Relay(hub, ProviderRouter({"clock": clock}, {}, default="clock"), grace=0.0)
    try:
        kept_generation = await relay_off.start(chat())
        clock_generation = await relay_on.start(chat())
        assert await wait(relay_on, clock_generation.id) is Status.CANCELLED
        assert not kept_generation.done
    finally:
        await relay_off.aclose()
        await relay_on.aclose()
    assert kept_generation.cancel_reason == "shutdown"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UpstreamError("no", status=429), 429, "upstream_error"),
        (UpstreamError("no", status=401), 502, "upstream_error"),
        (UpstreamTimeout("slow"), 504, "timeout"),
        (RuntimeError("bug"), 500, "internal"),
    ],
)
async def test_failures_end_the_stream_with_an_error(
    relay: Relay, hub: Hub, provider: Scripted, error: BaseException, status: int, code: str
) -> None:
    provider.script.insert(2, error)
    generation = await relay.start(chat())
    assert await wait(relay, generation.id) is Status.FAILED
    kind, end = (await events(hub, generation.channel))[-1]
    assert kind == "end"
    assert (end["status"], end["http_status"], end["error"]["code"]) == ("failed", status, code)
    assert relay.stats().failed == 1


class ChunkLosingHub(Hub):
    """A hub whose backend stops answering after a generation's first chunk."""

    async def publish(self, channel: str, data: Any = None, **options: Any) -> Any:
        lost = channel.startswith("llm:chatcmpl-") and options.get("event") != "end"
        if lost and (await self.position(channel)).offset >= 1:
            raise BackendUnavailable("redis", "Timeout reading from 127.0.0.1:6379")
        return await super().publish(channel, data, **options)


async def test_a_backend_failure_mid_generation_ends_it_as_unavailable(
    provider: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    async with ChunkLosingHub() as hub:
        relay = Relay(hub, ProviderRouter({"scripted": provider}, {}, default="scripted"))
        try:
            generation = await relay.start(chat())
            assert await wait(relay, generation.id) is Status.FAILED
            kind, end = (await events(hub, generation.channel))[-1]
        finally:
            await relay.aclose()
    assert kind == "end"
    assert (end["status"], end["http_status"], end["error"]["code"]) == (
        "failed",
        503,
        "unavailable",
    )
    assert "6379" not in end["error"]["message"]
    assert provider.closed.is_set()
    assert relay.stats().failed == 1
    # An outage is expected: a warning, no traceback.
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


def test_upstream_status_passes_through_what_a_client_can_act_on() -> None:
    assert upstream_status(UpstreamError("x", status=404)) == 404
    assert upstream_status(UpstreamError("x", status=503)) == 502
    assert upstream_status(UpstreamError("x")) == 502


async def test_max_generations(hub: Hub, provider: Scripted) -> None:
    provider.block_at = 1
    relay = Relay(hub, ProviderRouter({"p": provider}, {}, default="p"), max_generations=1)
    try:
        await relay.start(chat())
        with pytest.raises(QueueFull):
            await relay.start(chat())
    finally:
        await relay.aclose()


async def test_max_per_client_bounds_one_client_and_frees_its_share(
    hub: Hub, provider: Scripted
) -> None:
    provider.block_at = 1
    relay = Relay(hub, ProviderRouter({"p": provider}, {}, default="p"), max_per_client=1)
    try:
        first = await relay.start(chat(), client="user:alice")
        with pytest.raises(QueueFull) as refused:
            await relay.start(chat(), client="user:alice")
        assert refused.value.per_client
        await relay.start(chat(), client="user:bob")
        await relay.start(chat())  # no client: only the server's bound
        first.cancel("deleted")
        async with asyncio.timeout(TIMEOUT):
            await first.wait()
        await relay.start(chat(), client="user:alice")
    finally:
        await relay.aclose()


async def test_aclose_cancels_running_generations_and_closes_providers(
    hub: Hub, provider: Scripted
) -> None:
    provider.block_at = 1
    relay = Relay(hub, ProviderRouter({"p": provider}, {}, default="p"))
    generation = await relay.start(chat())
    async with asyncio.timeout(TIMEOUT):
        await provider.blocked.wait()
    await relay.aclose()
    assert generation.status is Status.CANCELLED
    assert generation.cancel_reason == "shutdown"
    assert provider.provider_closed
    end = orjson.loads((await hub.history(generation.channel)).events[-1].raw)
    assert end["reason"] == "shutdown"


# Two relays on one hub stand for two servers on one backend (Redis).


async def test_a_delete_on_another_relay_cancels_where_it_runs(hub: Hub) -> None:
    provider = Scripted()
    provider.block_at = 2
    here = Relay(hub, ProviderRouter({"p": provider}, {}, default="p"))
    there = Relay(hub, ProviderRouter({"p": Scripted()}, {}, default="p"))
    try:
        generation = await here.start(chat())
        async with asyncio.timeout(TIMEOUT):
            await provider.blocked.wait()
        assert there.get(generation.id) is None
        end = await there.cancel_anywhere(generation.id)
        assert end is not None
        assert (end["status"], end["reason"]) == ("cancelled", "deleted")
        assert provider.closed.is_set()
        # Once ended, the answer comes from history; an unknown id is None.
        assert await there.cancel_anywhere(generation.id) == end
        assert await there.cancel_anywhere("chatcmpl-unknown") is None
    finally:
        await here.aclose()
        await there.aclose()


async def test_a_delete_that_gets_no_answer_says_cancelling(hub: Hub) -> None:
    relay = Relay(hub, ProviderRouter({"p": Scripted()}, {}, default="p"))
    try:
        # A generation whose server is gone: its events exist, nobody runs it.
        await hub.publish("llm:chatcmpl-orphan", {"choices": []})
        end = await relay.cancel_anywhere("chatcmpl-orphan", wait=0.05)
        assert end == {"status": "cancelling"}
    finally:
        await relay.aclose()


async def test_a_listener_on_another_relay_keeps_a_generation_alive(hub: Hub) -> None:
    watched, clock = Scripted("watched"), Scripted("clock")
    watched.block_at = clock.block_at = 1
    router = ProviderRouter({"watched": watched, "clock": clock}, {"w": "watched"}, default="clock")
    # "Heard" messages go every third of the grace period: scaled, so they
    # arrive in time on a loaded machine.
    grace = TIMEOUT / 15
    here = Relay(hub, router, grace=grace)
    there = Relay(hub, ProviderRouter({"p": Scripted()}, {}, default="p"), grace=grace)
    try:
        generation = await here.start(chat("w"))
        async with there.remote_listener(generation.id):
            for _ in range(3):  # each unheard generation outlives one grace period
                unheard = await here.start(chat("clock"))
                assert await wait(here, unheard.id) is Status.CANCELLED
            assert not generation.done
        assert await wait(here, generation.id) is Status.CANCELLED
        assert generation.cancel_reason == "unheard"
    finally:
        await here.aclose()
        await there.aclose()


async def test_a_failed_control_subscription_is_retried(provider: Scripted) -> None:
    class Flaky(Hub):
        failures = 1

        async def _attach(self, subscription: Any, channel: str, *args: Any) -> Any:
            if channel == "llm:_control" and self.failures:
                self.failures -= 1
                raise BackendUnavailable("test", "down")
            return await super()._attach(subscription, channel, *args)

    async with Flaky() as hub:
        relay = Relay(hub, ProviderRouter({"p": provider}, {}, default="p"))
        try:
            with pytest.raises(BackendUnavailable):
                await relay.start(chat())
            assert relay.stats().started == 0
            generation = await relay.start(chat())
            assert await wait(relay, generation.id) is Status.COMPLETED
        finally:
            await relay.aclose()


async def test_each_request_chooses_what_its_listeners_leaving_does(hub: Hub) -> None:
    names = ("continue", "cancel", "subscribed", "clock")
    providers = {name: Scripted(name) for name in names}
    for provider in providers.values():
        provider.block_at = 1
    router = ProviderRouter(providers, {name: name for name in names[:3]}, default="clock")
    relay = Relay(hub, router, grace=0.05)

    def request(model: str, **extension: Any) -> ChatRequest:
        return validate_request(
            {"model": model, "messages": [{"role": "user", "content": "q"}], "tidings": extension}
        )

    try:
        kept = await relay.start(request("continue", on_disconnect="continue"))
        cancelled = await relay.start(request("cancel", on_disconnect="cancel"))
        subscribed = await relay.start(request("subscribed", on_disconnect="cancel"))
        assert (kept.grace, cancelled.grace, subscribed.grace) == (None, 0.0, 0.0)
        async with hub.subscribe(subscribed.channel):
            for generation in (kept, cancelled, subscribed):
                with generation.listening():
                    pass
            # Cancelled on the next turn of the loop, not after the relay's grace.
            assert await wait(relay, cancelled.id) is Status.CANCELLED
            assert relay.get(kept.id) is kept
            clock = await relay.start(chat("clock"))  # unheard: gone after 0.05 s
            assert await wait(relay, clock.id) is Status.CANCELLED
            assert not kept.done
            assert not subscribed.done  # someone reads its channel
        providers["continue"].release.set()
        assert await wait(relay, kept.id) is Status.COMPLETED
    finally:
        await relay.aclose()
