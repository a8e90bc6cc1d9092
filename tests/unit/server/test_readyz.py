"""GET /readyz: ready when the backend answers in time and the server is not draining."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tidings.hub import Hub, MemoryBackend
from tidings.server import create_app
from tidings.server.state import ServerState
from tidings.settings import Settings, SettingsError


class SilentBackend(MemoryBackend):
    """Never answers a ping, as a Redis that hangs does."""

    async def ping(self) -> None:
        await asyncio.Event().wait()


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub() as hub:
        yield hub


async def test_ready_with_the_memory_backend_and_unready_while_draining(hub: Hub) -> None:
    app = create_app(hub, Settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"status": "ready", "backend": "memory"}
        state: ServerState = app.state.tidings
        await state.drain()  # what a stopping server does first
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert response.json()["reason"] == "draining"
        # The process still answers: liveness is not readiness.
        assert (await client.get("/healthz")).status_code == 200


async def test_a_backend_that_does_not_answer_in_time_is_not_ready() -> None:
    async with Hub(SilentBackend()) as hub:
        app = create_app(hub, Settings(ready_timeout=0.05))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["reason"] == "backend"
    assert "0.05" in body["message"]


def test_ready_timeout_must_be_positive() -> None:
    with pytest.raises(SettingsError, match="ready_timeout"):
        Settings(ready_timeout=0)
