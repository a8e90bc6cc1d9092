"""What metrics cost the delivery path, in instructions rather than seconds.

A fan-out benchmark on a shared machine moves by tens of percent between
repetitions, far more than the few percent a metrics change may cost. This
counts instructions instead: ``valgrind --tool=callgrind`` runs ``tidings
serve`` (memory backend, fast write path) with instrumentation off while it
starts and while ``--subscribers`` SSE clients connect, turns it on
(``callgrind_control -i on``) for the measured phase only, and off again after.

The measured phase publishes ``--events`` events over one keep-alive HTTP
connection, one at a time, each only once every subscriber has read the one
before, so the server does the same work in every run whatever the machine's
load: one publish request and one write per subscriber per event. The count
is divided by the number of deliveries.

Each ``--checkout NAME=DIR`` is a source tree of Tidings (``DIR/src`` comes
first on ``PYTHONPATH``, so one virtualenv serves every checkout); give the
commit before a change and the commit after it, and ``--repeat`` shows how
far two runs of one checkout differ. Clients run in this process, outside
valgrind. Every loop is bounded by count and by ``--timeout``; the server is
stopped by PID. It exits 0 with the table, 1 when a run failed.

    git worktree add /tmp/before f34848f && git worktree add /tmp/after b1de316
    .venv/bin/python benchmarks/metrics_cost.py \\
        --checkout before=/tmp/before --checkout after=/tmp/after --repeat 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class Run:
    name: str
    instructions: int
    deliveries: int

    @property
    def per_delivery(self) -> float:
        return self.instructions / self.deliveries


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Subscriber:
    """One SSE stream on a raw socket, counting the ``data:`` lines it reads."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Event()
        self._tail = b""
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self, port: int, channel: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self._writer = writer
        writer.write(f"GET /sse?channel={channel} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"subscribe failed: {head[:80]!r}")
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(65536):
            data = self._tail + chunk
            self.count += data.count(b"\ndata: ")
            self._tail = data[-7:]
            self.changed.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()


async def wait_all(subscribers: list[Subscriber], count: int, deadline: float) -> None:
    for subscriber in subscribers:
        while subscriber.count < count:
            subscriber.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"a subscriber has {subscriber.count} of {count} events")
            await asyncio.wait_for(subscriber.changed.wait(), remaining)


def control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def start(tree: Path, port: int, out: Path) -> subprocess.Popen[bytes]:
    """``tidings serve`` from ``tree`` under callgrind, instrumentation off."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree / "src"),
        "PYTHONHASHSEED": "0",
        # Nothing on a timer during the measured phase.
        "TIDINGS_SSE_KEEPALIVE": "3600",
    }
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        sys.executable, "-m", "tidings", "serve", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip


def stop(server: subprocess.Popen[bytes], timeout: float) -> bytes:
    """Stop the server (SIGINT: callgrind writes its counts at exit); its stderr."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
    try:
        return server.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        server.kill()
        return server.communicate()[1]


def totals(out: Path) -> int | None:
    found = re.findall(rb"^totals: (\d+)", out.read_bytes(), re.M)
    return int(found[0]) if found else None


async def measure(name: str, tree: Path, args: argparse.Namespace, workdir: Path) -> Run:
    port = free_port()
    out = workdir / f"{name}.{time.monotonic_ns()}.callgrind"
    server = start(tree, port, out)
    subscribers = [Subscriber() for _ in range(args.subscribers)]
    deadline = time.monotonic() + args.timeout
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: the server did not start")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz", timeout=5)).status_code == 200:
                        break
                await asyncio.sleep(0.5)
            for subscriber in subscribers:
                await subscriber.open(port, "metrics-cost")
            # The first event warms every path (imports, caches) outside the count.
            warm = {"channel": "metrics-cost", "data": "warm"}
            (await http.post("/api/publish", json=warm)).raise_for_status()
            await wait_all(subscribers, 1, deadline)
            control("-i", "on", str(server.pid))
            for number in range(2, args.events + 2):
                body = {"channel": "metrics-cost", "data": f"event {number}"}
                (await http.post("/api/publish", json=body)).raise_for_status()
                await wait_all(subscribers, number, deadline)
            control("-i", "off", str(server.pid))
    finally:
        for subscriber in subscribers:
            await subscriber.close()
        stderr = stop(server, args.timeout)
    instructions = totals(out)
    if instructions is None:
        raise RuntimeError(f"{name}: no totals in {out}: {stderr[-500:]!r}")
    return Run(name, instructions, args.events * args.subscribers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    args = parser.parse_args()
    trees: list[tuple[str, Path]] = []
    for item in args.checkout:
        name, _, directory = item.partition("=")
        if not directory or not (Path(directory) / "src" / "tidings").is_dir():
            parser.error(f"--checkout {item}: expected NAME=DIR with DIR/src/tidings")
        trees.append((name, Path(directory).resolve()))
    with tempfile.TemporaryDirectory(prefix="metrics-cost-") as workdir:
        runs = asyncio.run(measure_all(trees, args, Path(workdir)))
    base = runs[0]
    print(f"\n| checkout | instructions | per delivery | vs {base.name} |")
    print("|---|---:|---:|---:|")
    for run in runs:
        ratio = run.instructions / base.instructions
        print(f"| {run.name} | {run.instructions:,} | {run.per_delivery:,.0f} | {ratio:.4f} |")
    return 0


async def measure_all(
    trees: list[tuple[str, Path]], args: argparse.Namespace, workdir: Path
) -> list[Run]:
    runs: list[Run] = []
    for _ in range(args.repeat):
        for name, tree in trees:
            run = await measure(name, tree, args, workdir)
            print(f"{run.name}: {run.instructions:,} instructions, "
                  f"{run.per_delivery:,.0f} per delivery", flush=True)  # fmt: skip
            runs.append(run)
    return runs


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, TimeoutError) as exc:
        print(f"metrics_cost: {exc}", file=sys.stderr)
        sys.exit(1)
