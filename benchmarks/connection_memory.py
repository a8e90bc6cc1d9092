"""Where an idle connection's bytes go: a tracemalloc breakdown by component.

Starts ``tidings serve``'s configuration in this process with tracemalloc on,
opens N idle subscribers from a thread with plain blocking sockets (so the
clients allocate almost nothing in Python), and prints the Python memory each
connection costs, grouped by who allocated it. Memory outside Python's
allocator (libuv handles, kernel socket buffers) is not in these figures; the
harness's RSS-based "idle KiB per connection" includes the former.

    python benchmarks/connection_memory.py --transport sse -n 2000
    python benchmarks/connection_memory.py --transport ws -n 2000 [--no-fast-write] [--detail 12]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import socket
import tracemalloc
from collections import Counter

import uvloop

from tidings.server import create_app
from tidings.settings import Settings
from tidings.testing import run_server

GROUPS = (
    ("tidings/", "tidings"),
    ("uvicorn/", "uvicorn"),
    ("websockets/", "websockets (handshake, parser)"),
    ("starlette/", "starlette (routing frames)"),
    ("asyncio/", "asyncio (tasks, futures, events)"),
    ("httptools", "httptools"),
)


ASYNCIO = "asyncio (tasks, futures, events)"


def group_of(filename: str) -> str:
    for marker, name in GROUPS:
        if marker in filename:
            return name
    return "other"


def open_clients(port: int, count: int, transport: str) -> list[socket.socket]:
    key = base64.b64encode(os.urandom(16)).decode()
    if transport == "sse":
        request = b"GET /sse?channel=idle HTTP/1.1\r\nHost: x\r\n\r\n"
    else:
        request = (
            "GET /ws?channel=idle HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        sockets.append(sock)
    return sockets


async def measure(transport: str, count: int, fast_write: bool, detail: int) -> None:
    # Every client comes from one loopback address: no per-client connection cap.
    settings = Settings(log_level="warning", demo=False, max_connections_per_client=0)
    app = create_app(settings=settings)
    async with run_server(app, fast_write=fast_write) as url:
        port = int(url.rsplit(":", 1)[1])
        warm = await asyncio.to_thread(open_clients, port, 20, transport)
        await asyncio.sleep(0.5)
        gc.collect()
        tracemalloc.start(6)
        before = tracemalloc.take_snapshot()
        clients = await asyncio.to_thread(open_clients, port, count, transport)
        hub = app.state.tidings.hub
        for _ in range(400):  # bounded: at most 20 s for the last subscriptions
            if hub.subscriber_count("idle") >= count + len(warm):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        groups: Counter[str] = Counter()
        lines: Counter[str] = Counter()
        for stat in after.compare_to(before, "traceback"):
            # Charge each allocation to the innermost frame that is not the
            # standard library's, falling back to the innermost frame.
            # Charge each allocation to the library that asked for it: the
            # innermost frame outside the standard library (asyncio included).
            frames = list(stat.traceback)
            owner = next(
                (f for f in reversed(frames) if group_of(f.filename) not in ("other", ASYNCIO)),
                next((f for f in reversed(frames) if group_of(f.filename) != "other"), frames[-1]),
            )
            groups[group_of(owner.filename)] += stat.size_diff
            where = owner.filename.rsplit("site-packages/", 1)[-1]
            lines[f"{where}:{owner.lineno}"] += stat.size_diff
        total = sum(groups.values())
        mode = "fast write" if fast_write else "plain ASGI"
        print(
            f"{transport} ({mode}), {count} idle connections: {total / count / 1024:.2f} KiB each"
        )
        for name, size in groups.most_common():
            print(f"  {size / count:8.0f} B  {name}")
        if detail:
            print("  by line:")
            for line, size in lines.most_common(detail):
                print(f"    {size / count:8.0f} B  {line}")
        for sock in clients + warm:
            sock.close()
        await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transport", choices=("sse", "ws"), default="sse")
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--no-fast-write", dest="fast_write", action="store_false")
    parser.add_argument("--detail", type=int, default=0, help="also list the top DETAIL lines")
    args = parser.parse_args()
    uvloop.run(measure(args.transport, min(args.n, 10000), args.fast_write, args.detail))


if __name__ == "__main__":
    main()
