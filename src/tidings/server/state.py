"""ServerState: what the routes of one app share (hub, settings, counters)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tidings.hub import Hub
from tidings.llm import Relay
from tidings.server.auth import Authority
from tidings.server.sse import SSEKeepalive
from tidings.settings import Settings

__all__ = ["ServerState"]


@dataclass(slots=True)
class ServerState:
    """Shared by every route of an app built by ``create_app``."""

    hub: Hub
    settings: Settings
    keepalive: SSEKeepalive
    authority: Authority
    connections: Counter[str] = field(default_factory=Counter)
    relay: Relay | None = None

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
