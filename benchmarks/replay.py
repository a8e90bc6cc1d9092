"""A paced replay through the hub: the time to catch up with a long history.

In one process, with the memory backend: ``--events`` events of ``--size``
bytes are published to one channel (kept whole), then a subscription resumes
from offset 0 with an outbox of ``--outbox-bytes`` and drains it as fast as
it can with ``take()`` (as the ASGI transports do), page after page, until it
has every event. Prints the median of ``--repeat`` catch-ups and the largest
outbox seen while draining.

    python benchmarks/replay.py [--events 200000] [--size 160] [--outbox-bytes 1048576]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time

from tidings import Hub, Position
from tidings.hub.names import NamespaceOptions, Namespaces


async def catch_up(hub: Hub, since: Position, events: int, outbox: int) -> tuple[float, int]:
    subscription = hub.subscription(max_bytes=outbox)
    started = time.perf_counter()
    await subscription.add("bench", since=since)
    received = most = 0
    while received < events:
        most = max(most, subscription.pending_bytes)
        items = subscription.take()
        if not items:
            if subscription.closed:
                raise RuntimeError(f"closed ({subscription.close_reason}) after {received} events")
            await subscription.wait()
        received += len(items)
    elapsed = time.perf_counter() - started
    subscription.close()
    return elapsed, most


async def main(args: argparse.Namespace) -> None:
    options = NamespaceOptions(history_size=args.events, history_max_bytes=1 << 40)
    async with Hub(namespaces=Namespaces(default=options)) as hub:
        text = "x" * args.size
        for _ in range(args.events):
            await hub.publish("bench", text=text)
        since = Position((await hub.position("bench")).epoch, 0)
        runs = [
            await catch_up(hub, since, args.events, args.outbox_bytes) for _ in range(args.repeat)
        ]
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    print(f"{when} UTC, Python {platform.python_version()}")
    median = statistics.median(elapsed for elapsed, _ in runs)
    most = max(largest for _, largest in runs)
    print(
        f"{args.events:,} events of {args.size} bytes, outbox {args.outbox_bytes:,}: "
        f"caught up in {median * 1000:.1f} ms (median of {args.repeat}), "
        f"largest outbox {most:,} bytes"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--outbox-bytes", type=int, default=1024 * 1024)
    parser.add_argument("--repeat", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
