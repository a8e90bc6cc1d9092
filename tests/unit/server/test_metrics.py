"""GET /metrics: the app's own registry, series read from the hub at scrape time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.env import TIMEOUT
from tests.support.namespaces import restricted_namespaces
from tidings.errors import BackendUnavailable, Rejected
from tidings.hub import Hub, MemoryBackend
from tidings.server import PublishContext, create_app
from tidings.server.metrics import LATENCY_EVERY
from tidings.settings import Settings

API_KEY = "a-metrics-key-0123456789"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: httpx.AsyncClient, **headers: str) -> str:
    response = await client.get("/metrics", headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub() as hub:
        yield hub


@pytest.fixture
async def client(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(hub, Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
        yield client


async def test_the_series_follow_the_hub(hub: Hub, client: httpx.AsyncClient) -> None:
    before = samples(await scrape(client))
    assert before[("tidings_published_total", ())] == 0
    async with hub.subscribe("m:a") as subscription:
        for number in range(LATENCY_EVERY * 2):
            await hub.publish("m:a", number)
        after = samples(await scrape(client))
        assert after[("tidings_subscriptions", ())] == 1
        assert after[("tidings_channels", ())] == 1
        assert after[("tidings_outbox_bytes", ())] > 0  # nothing consumed yet
        subscription.take()
    assert after[("tidings_published_total", ())] == LATENCY_EVERY * 2
    assert after[("tidings_delivered_total", (("transport", "hub"),))] == LATENCY_EVERY * 2
    assert after[("tidings_dropped_total", (("reason", "overflow"),))] == 0
    assert after[("tidings_slow_consumer_disconnects_total", ())] == 0
    # One event in LATENCY_EVERY is observed, never one per subscriber.
    assert after[("tidings_publish_to_write_seconds_count", ())] == 2
    assert after[("tidings_draining", ())] == 0
    assert after[("tidings_open_requests", ())] == 1  # the scrape itself
    assert after[("tidings_open_clients", ())] == 1
    assert after[("tidings_history_events", ())] == LATENCY_EVERY * 2
    assert after[("tidings_history_bytes", ())] > 0
    names = {name for name, _ in after if name.startswith("tidings_")}
    assert len({name.removesuffix("_total") for name in names}) >= 10
    assert after[("process_open_fds", ())] > 0
    assert after[("process_resident_memory_bytes", ())] > 0


async def test_the_latency_is_sampled_per_event_not_per_subscriber(hub: Hub) -> None:
    seen: list[float] = []
    hub.observe_latency(seen.append, every=4)
    async with hub.subscribe("m:b"), hub.subscribe("m:b"), hub.subscribe("m:b"):
        for number in range(8):
            await hub.publish("m:b", number)
    assert len(seen) == 2
    assert all(0 <= value < 60 for value in seen)
    hub.observe_latency(None)
    async with hub.subscribe("m:b"):
        for number in range(8):
            await hub.publish("m:b", number)
    assert len(seen) == 2
    with pytest.raises(ValueError, match="every"):
        hub.observe_latency(seen.append, every=0)


async def test_two_apps_in_one_process_keep_their_own_registry() -> None:
    async with Hub() as first, Hub() as second:
        apps = [create_app(first, Settings()), create_app(second, Settings())]
        await first.publish("m:c", 1)
        texts = []
        for app in apps:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                texts.append(samples(await scrape(client)))
    assert texts[0][("tidings_published_total", ())] == 1
    assert texts[1][("tidings_published_total", ())] == 0


class DownBackend(MemoryBackend):
    """Refuses publishing and pinging as an unreachable backend does."""

    async def publish(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        raise BackendUnavailable("down", "refused")

    async def ping(self) -> None:
        raise BackendUnavailable("down", "refused")


async def test_backend_errors_are_counted_by_operation() -> None:
    async with Hub(DownBackend()) as hub:
        app = create_app(hub, Settings())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/api/publish", json={"channel": "m:d", "data": 1})
            assert response.status_code == 503
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["reason"] == "backend"
            values = samples(await scrape(client))
    assert values[("tidings_backend_errors_total", (("op", "publish"),))] == 1
    assert values[("tidings_backend_errors_total", (("op", "ping"),))] == 1
    assert values[("tidings_published_total", ())] == 0
    assert values[("tidings_publish_refused_total", (("reason", "backend"),))] == 1


def refused(values: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in values.items()
        if name == "tidings_publish_refused_total"
    }


async def test_refused_publishes_are_counted_by_reason() -> None:
    async with Hub(namespaces=restricted_namespaces()) as hub:
        counts = await refusals(hub)
    assert counts == {
        "rate": 1,
        "too_large": 1,
        "forbidden": 1,
        "invalid": 3,
        "hook": 0,
        "backend": 0,
        "draining": 1,
    }
    assert hub.stats().published == 1


async def test_publishes_the_on_publish_hook_refuses_are_counted_as_hook(hub: Hub) -> None:
    async def on_publish(context: PublishContext) -> None:
        if context.channel == "m:refused":
            raise Rejected("not_here", "no publishing here")
        if context.channel == "m:broken":
            raise RuntimeError("a bug in the hook")

    app = create_app(hub, Settings(), on_publish=on_publish)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for channel, status in (("m:refused", 403), ("m:broken", 500), ("m:fine", 200)):
            response = await client.post("/api/publish", json={"channel": channel, "data": 1})
            assert response.status_code == status, response.text
        counts = refused(samples(await scrape(client)))
    assert counts["hook"] == 2
    assert sum(counts.values()) == 2


async def refusals(hub: Hub) -> dict[str, float]:
    """Publish over HTTP in every way the server refuses; return the refusal counts."""
    settings = Settings(
        max_body_bytes=1024,
        publish_rate_per_address=0.01,  # one publish, then the next token in 100 s
    )
    app = create_app(hub, settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert set(refused(samples(await scrape(client))).values()) == {0}
        attempts: list[tuple[dict[str, Any], int]] = [
            ({"json": {"channel": "ro:a", "data": 1}}, 403),
            ({"json": {"channel": "not a channel", "data": 1}}, 400),
            ({"json": [{"channel": "m:a", "data": 1}]}, 400),
            ({"content": b"{", "headers": {"content-type": "application/json"}}, 400),
            ({"json": {"channel": "m:a", "data": "x" * 2000}}, 413),
            ({"json": {"channel": "m:a", "data": 1}}, 200),
            ({"json": {"channel": "m:a", "data": 2}}, 429),
        ]
        for request, status in attempts:
            response = await client.post("/api/publish", **request)
            assert response.status_code == status, (request, response.text)
        await app.state.tidings.drain(wait=0)
        draining = await client.post("/api/publish", json={"channel": "m:a", "data": 3})
        assert draining.status_code == 503
        return refused(samples(await scrape(client)))


async def test_metrics_need_the_api_key_once_authentication_is_configured(hub: Hub) -> None:
    app = create_app(hub, Settings(api_keys=f"ops:{API_KEY}"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        wrong = await client.get("/metrics", headers={"x-api-key": "not-the-key-0123456789"})
        assert wrong.status_code == 401
        assert "tidings_published_total" in await scrape(client, **{"x-api-key": API_KEY})
        # The refusals changed nothing; the public probes still answer.
        assert (await client.get("/readyz")).status_code == 200
