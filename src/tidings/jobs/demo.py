"""The ``demo`` job that ``tidings serve`` offers with the demo pages: it sleeps
and reports its progress, so the job endpoints can be tried with nothing of your own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from tidings.jobs.registry import Jobs, Log, Progress

__all__ = ["MAX_INTERVAL", "MAX_STEPS", "demo_jobs"]

logger = logging.getLogger(__name__)

#: Bounds of the demo job's arguments: it never holds a worker for more than 5 minutes.
MAX_STEPS = 100
MAX_INTERVAL = 3.0


async def demo(steps: int = 10, interval: float = 0.5) -> AsyncIterator[Progress | Log]:
    """Count to ``steps``, one step every ``interval`` seconds; the result is the count."""
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be 1-{MAX_STEPS}")
    if not 0 <= interval <= MAX_INTERVAL:
        raise ValueError(f"interval must be 0-{MAX_INTERVAL:g} seconds")
    yield Log(f"counting to {steps}, one step every {interval:g} s")
    try:
        for step in range(1, steps + 1):
            await asyncio.sleep(interval)
            yield Progress(100 * step / steps, f"step {step} of {steps}", result={"count": step})
    finally:
        logger.debug("demo job stopped")


def demo_jobs() -> Jobs:
    """A registry with the ``demo`` job only."""
    jobs = Jobs()
    jobs.add("demo", demo)
    return jobs
