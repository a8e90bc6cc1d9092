"""Connections: the live SSE streams and WebSockets of one app, by id.

Every streaming connection registers when it opens and leaves when it ends,
on both write paths (the fast path under ``tidings serve``, where a
connection outlives its ASGI call, and plain ASGI), so the admin page can
list them and close one. Registering costs a dictionary insert when a
connection opens and a delete when it ends, never anything per event. The
registry holds no more than the connections themselves: each holds a
connection slot, so ``max_connections`` bounds it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Protocol

from tidings.hub import Subscription

__all__ = ["Connections", "Listed"]


class Listed(Protocol):
    """What a registered connection tells about itself, and how it is closed."""

    #: Unique among the app's open connections (``sse-12``, a WebSocket's client id).
    @property
    def id(self) -> str: ...

    #: ``"sse"`` or ``"ws"``.
    @property
    def transport(self) -> str: ...

    #: The client address (``server/peer.py``).
    @property
    def peer(self) -> str: ...

    #: When it opened (Unix seconds).
    @property
    def opened_at(self) -> float: ...

    @property
    def subscription(self) -> Subscription: ...

    def disconnect(self) -> None:
        """Close the connection from the server side; its client may reconnect."""


class Connections:
    """The registry: open connections in the order they opened, and counts by transport.

    Args:
        transports: Transports counted (at zero) before any connection opens.
    """

    __slots__ = ("_by_id", "_counts", "_sequence")

    def __init__(self, transports: tuple[str, ...] = ("sse", "ws", "stream")) -> None:
        self._by_id: dict[str, tuple[int, Listed]] = {}
        self._counts: dict[str, int] = dict.fromkeys(transports, 0)
        self._sequence = itertools.count(1)

    def add(self, connection: Listed) -> None:
        """Register an open connection."""
        if connection.id in self._by_id:
            raise ValueError(f"connection {connection.id!r} is registered already")
        self._by_id[connection.id] = (next(self._sequence), connection)
        transport = connection.transport
        self._counts[transport] = self._counts.get(transport, 0) + 1

    def discard(self, connection: Listed) -> None:
        """Forget a connection that ended (nothing happens if it is not registered)."""
        entry = self._by_id.get(connection.id)
        if entry is None or entry[1] is not connection:
            return
        del self._by_id[connection.id]
        self._counts[connection.transport] -= 1

    def get(self, connection_id: str) -> Listed | None:
        """The open connection ``connection_id``, or None."""
        entry = self._by_id.get(connection_id)
        return entry[1] if entry is not None else None

    def count(self, transport: str) -> int:
        """Open connections of ``transport``."""
        return self._counts.get(transport, 0)

    def counts(self) -> dict[str, int]:
        """Open connections by transport."""
        return dict(self._counts)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Listed]:
        return (connection for _, connection in self._by_id.values())

    def page(self, *, after: int = 0, limit: int) -> tuple[list[tuple[int, Listed]], bool]:
        """At most ``limit`` connections opened after the one numbered ``after``
        (0: from the first), in the order they opened, each with its number;
        and whether more follow."""
        if limit <= 0:
            raise ValueError(f"limit must be > 0, not {limit}")
        items: list[tuple[int, Listed]] = []
        for sequence, connection in self._by_id.values():
            if sequence <= after:
                continue
            if len(items) == limit:
                return items, True
            items.append((sequence, connection))
        return items, False
