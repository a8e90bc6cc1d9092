"""Throughput of NDJSONResponse and StreamResponse against Starlette's StreamingResponse.

One server subprocess per write path (``--paths fast,asgi``: uvicorn with
Tidings' fast write path, as ``tidings serve``, and plain uvicorn ASGI), with
routes that stream the same content through each response class:

- NDJSON: ``--rows`` rows of about 1 KiB (a dict encoded per row), through
  ``NDJSONResponse`` and through ``StreamingResponse`` of ``orjson.dumps(row) + b"\\n"``;
- bytes: ``--mib`` MiB in 64 KiB blocks, through ``StreamResponse`` and
  ``StreamingResponse``.

The client is a raw socket in this process that reads and discards the body
until the last chunk (no HTTP library in the measured loop); each figure is
the median MiB/s of ``--repeat`` downloads, each bounded by ``--max-seconds``.
The ratio is the Tidings response over ``StreamingResponse`` on the same
server in the same run.

    python benchmarks/stream_throughput.py [--rows 200000] [--mib 1024] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROW = {"id": 0, "name": "row", "pad": "x" * 1000}
BLOCK = b"x" * 65536
END = b"\r\n0\r\n\r\n"
ROUTES = {
    "ndjson": ("/ndjson/starlette", "/ndjson/tidings"),
    "bytes": ("/bytes/starlette", "/bytes/tidings"),
}


def serve(path: str, rows: int, mib: int) -> None:
    """The server process: print the URL, serve until killed."""
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route
    from tests.support.stream_app import serve as serve_app

    from tidings.server import NDJSONResponse, StreamResponse

    async def row_items() -> AsyncIterator[dict[str, object]]:
        for _ in range(rows):
            yield ROW

    async def row_lines() -> AsyncIterator[bytes]:
        for _ in range(rows):
            yield orjson.dumps(ROW) + b"\n"

    async def blocks() -> AsyncIterator[bytes]:
        for _ in range(mib * 16):
            yield BLOCK

    def route(request: Request) -> Response:
        kind, impl = request.path_params["kind"], request.path_params["impl"]
        if kind == "ndjson":
            if impl == "tidings":
                return NDJSONResponse(row_items())
            return StreamingResponse(row_lines(), media_type="application/x-ndjson")
        if impl == "tidings":
            return StreamResponse(blocks())
        return StreamingResponse(blocks(), media_type="application/octet-stream")

    app = Starlette(routes=[Route("/{kind}/{impl}", route)])
    asyncio.run(serve_app(app, fast_write=path == "fast"))


def download(port: int, path: str, max_seconds: float) -> tuple[int, float]:
    """GET ``path`` over a fresh connection; return (bytes received, seconds)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        start = time.perf_counter()
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        received = 0
        tail = b""
        deadline = start + max_seconds
        buffer = bytearray(1 << 20)
        while True:
            count = sock.recv_into(buffer)
            if not count:
                break
            received += count
            tail = (tail + bytes(buffer[max(0, count - 16) : count]))[-16:]
            if tail.endswith(END) or time.perf_counter() > deadline:
                break
        return received, time.perf_counter() - start


def measure(port: int, path: str, repeat: int, max_seconds: float) -> float:
    rates = []
    for _ in range(repeat):
        received, seconds = download(port, path, max_seconds)
        rates.append(received / seconds / 2**20)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--paths", default="fast,asgi")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.rows, args.mib)
        return
    print(
        f"# stream throughput, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"# rows={args.rows} mib={args.mib} repeat={args.repeat} (median MiB/s)")
    print("| path | content | StreamingResponse | Tidings | ratio |")
    print("|---|---|---:|---:|---:|")
    for path in args.paths.split(","):
        command = [
            sys.executable,
            __file__,
            "--serve",
            path,
            "--rows",
            str(args.rows),
            "--mib",
            str(args.mib),
        ]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=ROOT)
        try:
            assert server.stdout is not None
            url = server.stdout.readline().decode().strip()
            port = int(url.rsplit(":", 1)[1])
            for content, (baseline_path, tidings_path) in ROUTES.items():
                measure(port, tidings_path, 1, args.max_seconds)  # warm up
                baseline = measure(port, baseline_path, args.repeat, args.max_seconds)
                ours = measure(port, tidings_path, args.repeat, args.max_seconds)
                print(
                    f"| {path} | {content} | {baseline:.0f} | {ours:.0f} | {ours / baseline:.2f} |",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
            if server.stdout is not None:
                server.stdout.close()


if __name__ == "__main__":
    main()
