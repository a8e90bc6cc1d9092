"""Fixtures for tests against the real Redis at 127.0.0.1:6379, each under its own key prefix."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.support.env import unavailable
from tests.support.redis_server import redis_answers

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of the shared test Redis; skips (fails under TIDINGS_STRICT=1) without one."""
    if importlib.util.find_spec("redis") is None:
        unavailable("redis-py is not installed (pip install 'tidings[redis]')")
    if not redis_answers(REDIS_HOST, REDIS_PORT, timeout=1):
        unavailable(f"no Redis answers at {REDIS_HOST}:{REDIS_PORT}")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix only this test uses; every key under it is deleted afterwards."""
    import redis

    prefix = f"tidings-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Any]:
    """A plain async redis-py client for looking at (and breaking) what the backend keeps."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
