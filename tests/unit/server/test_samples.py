"""The demo dashboard's sample metrics: published only while watched, stopped on close."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.env import TIMEOUT
from tidings import Hub
from tidings.errors import BackendUnavailable
from tidings.hub.event import Event
from tidings.server import create_app
from tidings.server.samples import CHANNEL, SampleMetrics, sample
from tidings.settings import Settings


def test_a_sample_has_the_time_and_three_bounded_series() -> None:
    rng = random.Random(7)
    for now in (0.0, 1_764_790_000.25, 1_764_790_100.0):
        values = sample(now, rng)
        assert values["time"] == now
        assert set(values) == {"time", "cpu", "requests", "latency_ms"}
        assert 0 <= values["cpu"] <= 100
        assert values["requests"] >= 0
        assert values["latency_ms"] >= 1


def test_an_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval must be > 0 seconds, not 0"):
        SampleMetrics(Hub(), interval=0)


@contextlib.asynccontextmanager
async def running(hub: Hub, interval: float) -> AsyncIterator[SampleMetrics]:
    samples = SampleMetrics(hub, interval=interval)
    samples.start()
    samples.start()  # a second start does nothing
    try:
        yield samples
    finally:
        await samples.aclose()


async def test_samples_flow_only_while_someone_watches() -> None:
    async with Hub() as hub, running(hub, interval=0.01):
        # Many ticks with nobody subscribed: none may publish.
        await asyncio.sleep(0.1)
        assert (await hub.position(CHANNEL)).offset == 0
        async with hub.subscribe(CHANNEL) as subscription:
            async with asyncio.timeout(TIMEOUT):
                first = await anext(aiter(subscription))
        assert isinstance(first, Event)
        assert first.offset == 1
        assert set(first.data) == {"time", "cpu", "requests", "latency_ms"}


async def test_close_stops_the_task_and_a_second_close_is_harmless() -> None:
    async with Hub() as hub:
        samples = SampleMetrics(hub, interval=0.01)
        samples.start()
        await samples.aclose()
        await samples.aclose()
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert "tidings-sample-metrics" not in names


async def test_a_failed_publish_is_logged_and_the_next_tick_tries_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[str] = []
    second = asyncio.Event()

    async def unavailable(channel: str, data: object) -> None:
        attempts.append(channel)
        if len(attempts) == 2:
            second.set()
        raise BackendUnavailable("memory", "down for the test")

    async with Hub() as hub, hub.subscribe(CHANNEL):
        monkeypatch.setattr(hub, "publish", unavailable)
        async with running(hub, interval=0.01):
            await asyncio.wait_for(second.wait(), TIMEOUT)
    assert "sample metrics not published: backend memory is unavailable" in caplog.text


@pytest.mark.parametrize("demo", [True, False])
async def test_the_app_runs_the_samples_with_the_demo_only(demo: bool) -> None:
    async with Hub() as hub:
        app = create_app(hub, Settings(demo=demo))
        async with app.router.lifespan_context(app):
            names = {task.get_name() for task in asyncio.all_tasks()}
            assert ("tidings-sample-metrics" in names) is demo
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                icon = await client.get("/favicon.ico")
        assert icon.status_code == (200 if demo else 404)
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert "tidings-sample-metrics" not in names
