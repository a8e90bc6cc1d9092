"""Test environment: strict mode, the timeout unit, and skip-or-fail."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable
from typing import NoReturn

import pytest

#: Under TIDINGS_STRICT=1 (CI), a test that would skip for a missing service fails.
STRICT = os.environ.get("TIDINGS_STRICT") == "1"
#: The unit of every wait in the tests, in seconds; scale it on slow machines.
TIMEOUT = 5.0 * float(os.environ.get("TIDINGS_TEST_TIMEOUT_FACTOR", "1"))
#: Busy processes the run keeps going beside the tests (``TIDINGS_TEST_CPU_BURN``):
#: the suite must pass on a machine whose every core is taken.
CPU_BURN = int(os.environ.get("TIDINGS_TEST_CPU_BURN", "0"))


def unavailable(reason: str) -> NoReturn:
    """Skip (one-line reason) or, in strict mode, fail: CI never goes green by skipping."""
    if STRICT:
        pytest.fail(f"TIDINGS_STRICT=1 and {reason}", pytrace=False)
    pytest.skip(reason)


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = TIMEOUT,
    interval: float = 0.02,
) -> None:
    """Wait until ``check()`` is true, for state that can only be observed by asking.

    The one polling helper of the suite: use it for another process's state
    (stats over HTTP, RSS); inside one process, wait on an event instead.
    """
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval)
