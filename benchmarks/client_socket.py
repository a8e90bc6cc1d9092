"""Python WebSocket client throughput: publishes acknowledged and events received per second.

One ``Socket`` publishes ``--count`` events (all calls in flight at once, each
awaiting its ack) while another ``Socket`` subscribed to the channel receives
them, against ``tidings serve`` in a subprocess with the rate limits lifted.
Both sockets run without pacing (``rate_limit=None``). Bounded by ``--count``
and a two-minute deadline per format.

    .venv/bin/python benchmarks/client_socket.py --count 10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Literal

import httpx

from tidings.client import Socket
from tidings.testing import free_port


@contextlib.contextmanager
def serve() -> Iterator[str]:
    """``tidings serve`` on a free port, stopped (by its PID) at the end."""
    port = free_port()
    env = {
        **os.environ,
        "TIDINGS_WS_RATE_LIMIT": "1000000",
        "TIDINGS_PUBLISH_RATE_PER_CONNECTION": "0",
        "TIDINGS_PUBLISH_RATE_PER_ADDRESS": "0",
        "TIDINGS_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-m", "tidings", "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("the server did not start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


async def measure(url: str, fmt: Literal["json", "msgpack"], count: int) -> None:
    channel = f"bench-{fmt}"
    async with (
        Socket(url, format=fmt, rate_limit=None) as subscriber,
        Socket(url, format=fmt, rate_limit=None, queue_limit=count) as publisher,
    ):
        feed = await subscriber.subscribe(channel)

        async def receive() -> float:
            received = 0
            async for _ in feed:
                received += 1
                if received == count:
                    break
            return time.perf_counter()

        started = time.perf_counter()
        receiver = asyncio.create_task(receive())
        positions = await asyncio.gather(
            *(publisher.publish(channel, {"n": n}) for n in range(count))
        )
        acked = time.perf_counter() - started
        received = await asyncio.wait_for(receiver, 120) - started
    assert len({position.offset for position in positions}) == count
    print(
        f"{fmt:8} {count} publishes acked in {acked:.2f} s ({count / acked:,.0f}/s); "
        f"all received in {received:.2f} s ({count / received:,.0f}/s)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10000)
    args = parser.parse_args()
    with serve() as url:
        for fmt in ("json", "msgpack"):
            await measure(url, fmt, args.count)


if __name__ == "__main__":
    asyncio.run(main())
