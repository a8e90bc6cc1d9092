"""Integration fixtures: real ``tidings serve`` processes, fast path and plain ASGI path."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.server import ServerProcess


@pytest.fixture(scope="module", params=["fast", "asgi"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A server shared by a module's tests, once per write path."""
    env = {"TIDINGS_FAST_WRITE": "1" if request.param == "fast" else "0"}
    with ServerProcess(env=env) as process:
        yield process


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
def channel() -> str:
    """A channel name no other test uses (servers are shared within a module)."""
    return f"t{uuid.uuid4().hex[:10]}"
