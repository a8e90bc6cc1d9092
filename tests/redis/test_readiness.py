"""GET /readyz and the backend-error series while a Redis of the test's own hangs and dies."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.env import TIMEOUT, eventually
from tests.support.redis_server import RedisServer, own_redis_server
from tidings.server import create_app
from tidings.settings import Settings


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with own_redis_server() as server:
        yield server


async def test_readyz_follows_redis(redis_server: RedisServer) -> None:
    settings = Settings(
        backend="redis",
        redis_url=redis_server.url,
        redis_prefix=f"ready-{uuid.uuid4().hex[:8]}:",
        ready_timeout=0.2,
    )
    app = create_app(settings=settings)
    assert redis_server.process is not None
    pid = redis_server.process.pid
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", timeout=TIMEOUT
        ) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json() == {"status": "ready", "backend": "redis"}

            os.kill(pid, signal.SIGSTOP)  # Redis hangs: no answer within ready_timeout
            try:
                hung = await client.get("/readyz")
            finally:
                os.kill(pid, signal.SIGCONT)
            assert hung.status_code == 503
            assert hung.json()["reason"] == "backend"
            assert "0.2 s" in hung.json()["message"]

            async def ready_again() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready_again)

            redis_server.kill()  # Redis is gone: refused at once
            down = await client.get("/readyz")
            assert down.status_code == 503
            assert down.json()["status"] == "unavailable"
            assert down.json()["reason"] == "backend"
            assert redis_server.url not in down.text
            published = await client.post("/api/publish", json={"channel": "r:a", "data": 1})
            assert published.status_code == 503
            metrics = (await client.get("/metrics")).text
            assert 'tidings_backend_errors_total{op="publish"} 1.0' in metrics
            assert 'tidings_backend_errors_total{op="ping"}' in metrics
            # Liveness is not readiness: the process still answers.
            assert (await client.get("/healthz")).status_code == 200
