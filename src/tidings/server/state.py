"""ServerState: what the routes of one app share (hub, settings, counters), and the
order in which a server stops."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tidings.hub import Hub
from tidings.jobs import Runner
from tidings.llm import Relay
from tidings.server.auth import Authority
from tidings.server.connections import Connections
from tidings.server.limits import ConnectionSlots
from tidings.server.rates import PublishGate
from tidings.server.sse import SSEKeepalive
from tidings.settings import Settings

if TYPE_CHECKING:
    from tidings.server.admin import Monitor
    from tidings.server.metrics import Metrics

__all__ = ["ServerState"]

logger = logging.getLogger(__name__)

#: Longest wait for publishes accepted before the drain to reach the hub.
_PUBLISH_WAIT = 5.0


@dataclass(slots=True)
class ServerState:
    """Shared by every route of an app built by ``create_app``."""

    hub: Hub
    settings: Settings
    keepalive: SSEKeepalive
    authority: Authority
    slots: ConnectionSlots
    #: The open SSE streams and WebSockets, by id (listed and closed by ``/admin``).
    connections: Connections = field(default_factory=Connections)
    relay: Relay | None = None
    #: Runs the jobs of ``create_app(jobs=…)``; None when there are none.
    runner: Runner | None = None
    #: Admits publishes: rate limits, and ``draining`` once the server stops.
    gate: PublishGate = field(default_factory=PublishGate)
    #: The app's Prometheus registry and histograms (``GET /metrics``).
    metrics: Metrics | None = None
    #: What the admin page reads (``server/admin.py``); None without an ``admin_key``.
    admin: Monitor | None = None
    #: Whether the app built its hub (then a stop closes it).
    owns_hub: bool = True
    _stopping: asyncio.Future[None] | None = field(default=None, init=False, repr=False)

    @property
    def draining(self) -> bool:
        """Whether the server is stopping and refuses publishes."""
        return self.gate.draining

    async def drain(self, *, wait: float = 5.0) -> None:
        """Stop accepting publishes (503 ``unavailable``) and wait, at most ``wait``
        seconds, for those accepted already to reach the hub. Idempotent.

        Call it before subscribers are closed: then every accepted publish
        is delivered to the subscribers connected when it was made.
        """
        await self.gate.drain(wait=wait)

    async def shutdown(self, *, close_hub: bool, wait: float | None = None) -> None:
        """Stop in order, within ``wait`` seconds (default ``drain_timeout``):

        1. drain publishes (503 ``unavailable``; ``/readyz`` says ``draining``);
        2. let running generations and jobs finish, refuse new ones, cancel
           queued jobs; at the deadline cancel the rest (their end event
           says ``cancelled``, reason ``shutdown``);
        3. with ``close_hub``, close every subscriber (SSE streams end with a
           jittered ``retry:``, WebSockets close with 4001) and stop the backend.

        The one place that orders a stop: ``tidings serve`` (``server/serve.py``,
        ``server/serve_h2.py``) calls it at SIGTERM before its server closes
        connections, and the app's lifespan calls it again, which then waits
        for the first call to end. The first call's arguments hold.
        """
        if self._stopping is None:
            seconds = self.settings.drain_timeout if wait is None else wait
            self._stopping = asyncio.ensure_future(self._stop(close_hub, seconds))
        await asyncio.shield(self._stopping)

    async def _stop(self, close_hub: bool, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        # Kept back from the generations: time for the cancelled ones to
        # publish their end and for the hub to close.
        reserve = min(2.0, seconds * 0.2)

        def left(until: float = deadline) -> float:
            return max(0.0, until - loop.time())

        await self.drain(wait=min(_PUBLISH_WAIT, left(deadline - reserve)))
        relay, runner = self.relay, self.runner
        jobs = (
            asyncio.ensure_future(runner.aclose(wait=left(deadline - reserve)))
            if runner is not None
            else None
        )
        if relay is not None:
            running = await relay.finish(wait=left(deadline - reserve))
            if running:
                logger.warning("drain deadline: cancelling %d running generations", running)
            await relay.aclose(wait=left(deadline - reserve / 2))  # their end goes out first
        if jobs is not None:
            await jobs
        if close_hub:
            try:
                async with asyncio.timeout(left()):
                    await self.hub.aclose()
            except TimeoutError:
                logger.warning("the hub's backend did not close within the drain deadline")
