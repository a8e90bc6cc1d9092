"""ServerState: what the routes of one app share (hub, settings, counters), and the
order in which a server stops."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tidings.hub import Hub
from tidings.llm import Relay
from tidings.server.auth import Authority
from tidings.server.limits import ConnectionSlots
from tidings.server.rates import PublishGate
from tidings.server.sse import SSEKeepalive
from tidings.settings import Settings

if TYPE_CHECKING:
    from tidings.server.metrics import Metrics

__all__ = ["ServerState"]


@dataclass(slots=True)
class ServerState:
    """Shared by every route of an app built by ``create_app``."""

    hub: Hub
    settings: Settings
    keepalive: SSEKeepalive
    authority: Authority
    slots: ConnectionSlots
    connections: Counter[str] = field(default_factory=Counter)
    relay: Relay | None = None
    #: Admits publishes: rate limits, and ``draining`` once the server stops.
    gate: PublishGate = field(default_factory=PublishGate)
    #: The app's Prometheus registry and histograms (``GET /metrics``).
    metrics: Metrics | None = None

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

    async def shutdown(self, *, close_hub: bool) -> None:
        """Stop in order: drain publishes; end running generations (their end event
        reaches their listeners); then close every subscriber (``close_hub``).

        The one place that orders a stop; ``tidings serve`` calls :meth:`drain`
        before its server closes connections, and the app's lifespan calls this.
        """
        await self.drain()
        if self.relay is not None:
            await self.relay.aclose()  # publishes each running generation's end first
        if close_hub:
            await self.hub.aclose()

    def counter(self, transport: str) -> _Count:
        """Return a callable that adds to the open-connection count of ``transport``."""
        return _Count(self.connections, transport)


class _Count:
    __slots__ = ("connections", "transport")

    def __init__(self, connections: Counter[str], transport: str) -> None:
        self.connections = connections
        self.transport = transport
        connections.setdefault(transport, 0)

    def __call__(self, delta: int) -> None:
        self.connections[self.transport] += delta
