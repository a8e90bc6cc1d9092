"""Helpers for tests of tidings.client: states, leak checks, recorded backoff, plain HTTP."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tests.support.env import TIMEOUT
from tidings.client import Backoff, ConnectionState, SocketSubscription


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@asynccontextmanager
async def no_leaks() -> AsyncIterator[None]:
    """No task and no file descriptor opened inside the block outlives it."""
    tasks = asyncio.all_tasks()
    fds = len(open_fds())
    yield
    # A closed socket's fd goes a loop turn after its transport closes.
    for _ in range(10):
        leftover = [task for task in asyncio.all_tasks() - tasks if not task.done()]
        if not leftover and len(open_fds()) <= fds:
            break
        await asyncio.sleep(0)
    assert not leftover, f"tasks left running: {leftover}"
    assert len(open_fds()) <= fds, "a file descriptor leaked"


class States:
    """Records a socket's state changes; wait for the n-th occurrence of a state."""

    def __init__(self) -> None:
        self.seen: list[ConnectionState] = []
        self._changed = asyncio.Event()

    def __call__(self, state: ConnectionState) -> None:
        self.seen.append(state)
        self._changed.set()

    async def reach(self, state: ConnectionState, count: int = 1) -> None:
        async with asyncio.timeout(TIMEOUT * 2):
            while self.seen.count(state) < count:
                self._changed.clear()
                await self._changed.wait()


class RecordingBackoff(Backoff):
    """A Backoff that remembers every delay and its bound."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.delays: list[tuple[float, float]] = []

    def next_delay(self) -> float:
        upper = self.upper(self.attempt)
        delay = super().next_delay()
        self.delays.append((delay, upper))
        return delay


async def take(subscription: SocketSubscription, count: int) -> list[Any]:
    """The next ``count`` items of a subscription."""
    async with asyncio.timeout(TIMEOUT * 2):
        return [await anext(subscription) for _ in range(count)]


def http(url: str) -> httpx.AsyncClient:
    """An HTTP client that keeps no connection open between requests (for the fd checks)."""
    return httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_keepalive_connections=0))


async def history(client: httpx.AsyncClient, channel: str) -> list[Any]:
    response = await client.get(f"/api/history/{channel}", params={"limit": 10000})
    return [event["data"] for event in response.json()["events"]]
