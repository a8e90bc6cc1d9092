"""Backpressure by construction: publish until the server itself reports it.

How much a client that stops reading can absorb is not ours to know: the
kernel's socket buffers autotune up to ``net.ipv4.tcp_rmem`` / ``tcp_wmem``
(from kilobytes to tens of megabytes, by machine), and a client library
queues frames on top. A test that publishes a fixed count and expects an
overflow passes on one machine and times out on the next. Instead, publish
until the server's own counters say the outbox overflowed, bounded by bytes
(far above any kernel buffer) and by time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tests.support.env import TIMEOUT

#: More than any kernel and client buffering could hold: reaching it is a failure.
MAX_BACKLOG_BYTES = 256 * 1024 * 1024
#: Events published between two looks at the server's counters.
BATCH = 16


async def publish_until(
    publish: Callable[[int], Awaitable[object]],
    reached: Callable[[], bool],
    *,
    event_bytes: int,
    max_bytes: int = MAX_BACKLOG_BYTES,
    timeout: float = TIMEOUT * 6,
) -> int:
    """Call ``publish(n)`` for n = 1, 2, 3 … until ``reached()``; return the last n.

    ``event_bytes`` is about what one publish puts on the wire; the loop fails
    once ``max_bytes`` went out without ``reached()`` becoming true.
    """
    count = 0
    async with asyncio.timeout(timeout):
        while not reached():
            assert count * event_bytes < max_bytes, (
                f"{count} events ({count * event_bytes >> 20} MiB) and no overflow yet"
            )
            for _ in range(BATCH):
                count += 1
                await publish(count)
            await asyncio.sleep(0)  # the server writes what the transport takes
    return count
