"""server/connections.py: the registry of open connections, its counts and its pages."""

from __future__ import annotations

import pytest

from tidings.hub import Hub, Subscription
from tidings.server.connections import Connections


class Fake:
    """A registered connection: what the registry reads, and whether it was closed."""

    def __init__(self, id: str, transport: str, subscription: Subscription) -> None:
        self.id = id
        self.transport = transport
        self.peer = "127.0.0.1"
        self.opened_at = 0.0
        self.subscription = subscription
        self.closed = False

    def disconnect(self) -> None:
        self.closed = True


async def test_counts_follow_adds_and_discards() -> None:
    hub = Hub()
    registry = Connections()
    assert registry.counts() == {"sse": 0, "ws": 0, "stream": 0}
    one, two = Fake("sse-1", "sse", hub.subscription()), Fake("w1", "ws", hub.subscription())
    registry.add(one)
    registry.add(two)
    assert (len(registry), registry.counts()) == (2, {"sse": 1, "ws": 1, "stream": 0})
    assert registry.get("w1") is two
    assert registry.get("nope") is None
    registry.discard(one)
    registry.discard(one)  # twice: nothing more happens
    assert (len(registry), registry.count("sse"), list(registry)) == (1, 0, [two])


async def test_an_id_is_registered_once_and_only_its_own_entry_leaves() -> None:
    hub = Hub()
    registry = Connections()
    first = Fake("dup", "ws", hub.subscription())
    registry.add(first)
    with pytest.raises(ValueError, match="registered already"):
        registry.add(Fake("dup", "ws", hub.subscription()))
    registry.discard(Fake("dup", "ws", hub.subscription()))  # another object, same id
    assert registry.get("dup") is first
    assert registry.count("ws") == 1


async def test_pages_go_in_opening_order_and_survive_departures() -> None:
    hub = Hub()
    registry = Connections()
    fakes = [Fake(f"sse-{n}", "sse", hub.subscription()) for n in range(5)]
    for fake in fakes:
        registry.add(fake)
    page, more = registry.page(limit=2)
    assert [c for _, c in page] == fakes[:2]
    assert more
    registry.discard(fakes[2])  # the next page's first leaves meanwhile
    after = page[-1][0]
    page, more = registry.page(after=after, limit=2)
    assert [c for _, c in page] == fakes[3:]
    assert not more
    with pytest.raises(ValueError, match="limit must be > 0"):
        registry.page(limit=0)
