"""Shared fixtures. See tests/support/ for helpers and README's "Tests" for the layout."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.env import TIMEOUT


@pytest.fixture
def timeout() -> float:
    """The scalable timeout unit (seconds)."""
    return TIMEOUT


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> None:
    """Every task a test starts is finished when it ends (only for async tests)."""
    yield
    current = asyncio.current_task()
    leftover: list[asyncio.Task[object]] = []
    # A few loop turns let finalizers of closed async generators (httpx's
    # response iterators, for one) finish; a real leak is still there after.
    for _ in range(5):
        leftover = [
            task
            for task in asyncio.all_tasks()
            if task is not current and not task.done() and not task.get_name().startswith("pytest")
        ]
        if not leftover:
            return
        await asyncio.sleep(0)
    assert not leftover, f"tasks left running: {leftover}"
