"""Publisher: numbered events over the HTTP API of several nodes, each exactly once.

::

    publisher = Publisher(http, [a.url, b.url], ["c:0", "c:1"], total=300, step=TIMEOUT * 8)
    async with running(publisher.run()):
        publisher.allow(100)
        await publisher.until(100)

Event ``n`` (data ``n``) goes to ``channels[n % len(channels)]``, one at a
time, up to what :meth:`Publisher.allow` allows. It is sent to the nodes in
turn (``n`` to node ``n % len(nodes)``) with the idempotency key
``event-n``; a node that is draining (503) or down sends the same event,
with the same key, to the next one, so a publish that reached Redis before
its node went away is not published twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

__all__ = ["Publisher"]

#: Nodes tried, in turn, for one event before the publisher gives up.
ATTEMPTS = 1000


class Publisher:
    def __init__(
        self,
        http: httpx.AsyncClient,
        nodes: Sequence[str],
        channels: Sequence[str],
        *,
        total: int,
        step: float,
    ) -> None:
        self.http = http
        self.nodes = list(nodes)
        self.channels = list(channels)
        self.total = total
        #: The longest :meth:`until` waits.
        self.step = step
        #: Per channel, the acknowledged ``(offset, data)`` in publish order.
        self.acked: dict[str, list[tuple[int, int]]] = {channel: [] for channel in channels}
        self.sent = 0
        #: Publishes sent again elsewhere: refused by a draining node, or a node down.
        self.redirected = 0
        self._allowed = 0
        self._changed = asyncio.Event()

    def allow(self, count: int) -> None:
        self._allowed = count
        self._changed.set()

    def offsets(self) -> dict[str, int]:
        """The last acknowledged offset of each channel."""
        return {channel: acked[-1][0] for channel, acked in self.acked.items() if acked}

    def check(self) -> None:
        """Every event was acknowledged once, at consecutive offsets of its channel from 1
        (those sent again to another node included)."""
        for channel, acked in self.acked.items():
            offsets = [offset for offset, _ in acked]
            assert offsets == list(range(1, len(acked) + 1)), (channel, offsets)
        assert sum(len(acked) for acked in self.acked.values()) == self.total

    async def until(self, count: int) -> None:
        """Wait until ``count`` events are acknowledged (at most ``step`` seconds)."""
        async with asyncio.timeout(self.step):
            while self.sent < count:
                self._changed.clear()
                await self._changed.wait()

    async def run(self) -> None:
        while self.sent < self.total:
            while self.sent >= self._allowed:
                self._changed.clear()
                await self._changed.wait()
            await self._publish(self.sent)
            self.sent += 1
            self._changed.set()

    async def _publish(self, n: int) -> None:
        channel = self.channels[n % len(self.channels)]
        for attempt in range(ATTEMPTS):
            node = self.nodes[(n + attempt) % len(self.nodes)]
            try:
                response = await self.http.post(
                    f"{node}/api/publish",
                    json={"channel": channel, "data": n},
                    headers={"idempotency-key": f"event-{n}"},
                )
            except httpx.TransportError:
                self.redirected += 1
                continue
            if response.status_code == 503:
                self.redirected += 1
                continue
            assert response.status_code == 200, response.text
            self.acked[channel].append((response.json()["offset"], n))
            return
        raise AssertionError(f"event {n} was never published")
