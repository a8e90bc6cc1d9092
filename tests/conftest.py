"""Shared fixtures. See tests/support/ for helpers and README's "Tests" for the layout."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.env import CPU_BURN, TIMEOUT

#: Seconds after which a burner stops by itself, after this long, should the run never stop it.
BURN_SECONDS = 3600


@pytest.fixture(scope="session", autouse=True)
def _cpu_burners() -> Iterator[None]:
    """With ``TIDINGS_TEST_CPU_BURN=N``, N busy processes run for the whole session.

    They prove the suite waits on events, not on an idle machine. Each one ends
    after :data:`BURN_SECONDS` on its own and is stopped by PID when the run ends.
    """
    loop = f"import time\nend = time.monotonic() + {BURN_SECONDS}\nwhile time.monotonic() < end: 0"
    burners = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(CPU_BURN)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


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
