"""Sample metrics for the demo dashboard: a few made-up series on one channel.

Theory of operation: while the ``demo`` setting is on, the app's lifespan
starts one :class:`SampleMetrics` task. Every ``interval`` seconds it looks
at the hub's local subscriber count of :data:`CHANNEL`; only when someone
watches does it publish one event::

    {"time": 1764790000.25, "cpu": 41.2, "requests": 812.0, "latency_ms": 23.9}

``time`` is the wall clock at publish, so a page computes its end-to-end lag
as ``Date.now() / 1000 - time``. Publishing only while watched keeps an idle
demo server (and every test that starts one) free of sample traffic. A
publish that fails (the backend is down, the server drains) is logged and
the next tick tries again. :meth:`SampleMetrics.aclose` cancels the task and
waits for it, so a shutdown leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time

from tidings.errors import TidingsError
from tidings.hub import Hub
from tidings.types import JSONValue

__all__ = ["CHANNEL", "INTERVAL", "SampleMetrics", "sample"]

logger = logging.getLogger(__name__)

#: The channel the dashboard page (``/static/dashboard.html``) subscribes to.
CHANNEL = "metrics:demo"
#: Seconds between two samples.
INTERVAL = 0.25


def sample(now: float, rng: random.Random) -> dict[str, JSONValue]:
    """One sample at wall-clock ``now``: three smooth series with some noise."""
    wave = math.sin(now / 7)
    return {
        "time": now,
        "cpu": round(min(100.0, max(0.0, 45 + 25 * wave + rng.gauss(0, 4))), 1),
        "requests": round(max(0.0, 800 + 300 * math.sin(now / 11 + 1) + rng.gauss(0, 40)), 1),
        "latency_ms": round(max(1.0, 24 + 10 * math.cos(now / 5) + rng.expovariate(0.3)), 1),
    }


class SampleMetrics:
    """Publish :func:`sample` on ``channel`` every ``interval`` seconds while it has subscribers."""

    def __init__(self, hub: Hub, *, channel: str = CHANNEL, interval: float = INTERVAL) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, not {interval}")
        self.hub = hub
        self.channel = channel
        self.interval = interval
        self._rng = random.Random()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start publishing (once; a second call does nothing)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tidings-sample-metrics")

    async def aclose(self) -> None:
        """Stop publishing and wait until the task has ended."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.hub.subscriber_count(self.channel):
                await self._publish()

    async def _publish(self) -> None:
        try:
            await self.hub.publish(self.channel, sample(time.time(), self._rng))
        except TidingsError as exc:
            logger.warning("sample metrics not published: %s", exc)
