"""One client cannot hurt the others: well-behaved latency with and without abusive clients.

Starts ``tidings serve`` (memory backend) on a free loopback port and runs two
measured phases of ``--seconds`` each against the same server:

- **clean**: ``--subscribers`` raw-mode WebSocket subscribers (the
  ``websockets`` library, ``/ws?channel=calm``: one text frame per event) and
  a paced publisher (``--rate`` events/s over HTTP, its own httpx client),
  each event carrying the time it was due in ``data``; latency is counted
  from that time to each subscriber's receipt, so a publish the server holds
  up counts its wait. A probe opens a fresh connection for ``GET /healthz``
  twice a second.
- **abused**: the same, while a second process runs four abusers at once,
  each in its own task: a publisher flooding ``abuse:flood`` over keep-alive
  connections as fast as the server answers; a client opening SSE and
  WebSocket connections and dropping them (TCP reset, no close handshake);
  a slowloris of ``--loris`` sockets each sending a request head one byte
  at a time; and ``--readers`` sockets asking ``GET /api/history/abuse:big
  ?limit=10000`` (a channel filled beforehand with ``--big-events`` events of
  ``--big-bytes`` bytes) that never read the answer. The abusers share one
  process, so they use at most one core, apart from the measuring clients,
  and connect from ``--abuser-address`` (127.0.0.2) while the well-behaved
  clients connect from 127.0.0.1, so limits per client address tell them apart.

The server's RSS (``/proc/PID/status`` VmRSS) is sampled through both phases.
Every loop is bounded by count and time; every socket and process it opens is
closed or killed by PID at the end, also on Ctrl-C or error (the server and
the abusers run in sessions of their own, so Ctrl-C reaches this process only,
and the server gets SIGTERM if this process dies). It exits 0 whatever the
verdict: it is a measurement, not a test (1 only when the run itself failed,
2 on bad arguments). ``--server-setting NAME=VALUE`` (repeatable) is
passed as ``TIDINGS_NAME``; names this server does not know are ignored by it.

    .venv/bin/python benchmarks/abuse.py --seconds 20
    .venv/bin/python benchmarks/abuse.py --seconds 10 --no-fast-write --json /tmp/abuse.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import uvloop
import websockets
from rich.console import Console
from rich.table import Table

from tidings.testing import free_port

CALM = "calm"
FLOOD = "abuse:flood"
CHURN = "abuse:churn"
LORIS = "abuse:loris"
BIG = "abuse:big"
HOST = "127.0.0.1"
#: The address the calm publisher gives in X-Forwarded-For (a documentation range).
CALM_ADDRESS = "198.51.100.7"
#: How long a phase may take beyond ``--seconds`` (connects, drains, stops).
GRACE = 30.0
PR_SET_PDEATHSIG = 1
RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.1f} ms"


# --------------------------------------------------------------------------- server


def server_env(args: argparse.Namespace) -> dict[str, str]:
    env = {
        **os.environ,
        "TIDINGS_BACKEND": "memory",
        "TIDINGS_LOG_LEVEL": "warning",
        "TIDINGS_FAST_WRITE": "true" if args.fast_write else "false",
        # The big channel must outlive both phases (it is filled once, before them).
        "TIDINGS_HISTORY_TTL": str(max(300.0, 4 * args.seconds + 300)),
        # The calm publisher names its own address (CALM_ADDRESS), so that limits
        # per client address tell it from the abusers, who all come from loopback.
        "TIDINGS_TRUSTED_PROXIES": HOST,
    }
    env.pop("TIDINGS_CONFIG", None)
    for item in args.server_setting:
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise SystemExit(f"--server-setting takes NAME=VALUE, not {item!r}")
        env["TIDINGS_" + name.strip().upper()] = value
    return env


def die_with_parent() -> None:
    """In the server's process, before exec: SIGTERM it when this process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def serve(args: argparse.Namespace, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``tidings serve`` on a free port, stopped (by its PID) at the end."""
    port = free_port()
    command = [sys.executable, "-m", "tidings", "serve", "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            env=server_env(args),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the server did not start; see {log}")
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


class RssSampler:
    """The server's VmRSS every ``interval`` seconds, in MiB."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.path = Path(f"/proc/{pid}/status")
        self.interval = interval
        self.samples: list[float] = []

    def read(self) -> float | None:
        try:
            for line in self.path.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None  # the server is gone
        return None

    async def run(self) -> None:
        while True:
            value = self.read()
            if value is not None:
                self.samples.append(value)
            await asyncio.sleep(self.interval)

    def mark(self) -> int:
        return len(self.samples)

    def peak_since(self, mark: int) -> float | None:
        return max(self.samples[mark:], default=None)


# --------------------------------------------------------------------------- well-behaved clients


class Subscribers:
    """Raw-mode WebSocket subscribers; latency from each event's due time to receipt."""

    def __init__(self, ws_url: str, count: int) -> None:
        self.ws_url = ws_url
        self.count = count
        self.connections: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.latencies: list[float] = []
        self.seen: list[set[int]] = []
        self.warm: set[int] = set()
        self.closed_early: Counter[str] = Counter()
        self.connect_failed = 0

    async def open(self) -> None:
        limit = asyncio.Semaphore(20)

        async def connect() -> Any:
            async with limit:
                return await websockets.connect(
                    self.ws_url, compression=None, open_timeout=20, max_queue=None
                )

        results = await asyncio.gather(
            *(connect() for _ in range(self.count)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                self.connect_failed += 1
                continue
            index = len(self.connections)
            self.connections.append(result)
            self.seen.append(set())
            self.tasks.append(asyncio.create_task(self.receive(index, result)))

    async def receive(self, index: int, connection: Any) -> None:
        seen = self.seen[index]
        try:
            async for message in connection:
                now = time.time()
                data = orjson.loads(message)
                if "n" in data:
                    seen.add(data["n"])
                    self.latencies.append(now - data["t"])
                else:
                    self.warm.add(index)
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else "no close frame"
            self.closed_early[str(code)] += 1

    def delivered(self) -> int:
        return sum(len(seen) for seen in self.seen)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(
            *(asyncio.wait_for(c.close(), 5) for c in self.connections), return_exceptions=True
        )


async def wait_until(condition: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def publish_paced(
    client: httpx.AsyncClient, rate: float, seconds: float
) -> tuple[list[int], list[float], Counter[str]]:
    """Publish ``rate`` events/s for ``seconds``, each stamped with the time it was due."""
    count = int(rate * seconds)
    accepted: list[int] = []
    round_trips: list[float] = []
    refused: Counter[str] = Counter()
    in_flight = asyncio.Semaphore(64)
    start_wall, start = time.time(), time.monotonic()

    async def one(n: int) -> None:
        try:
            sent = time.monotonic()
            body = {"channel": CALM, "data": {"n": n, "t": start_wall + n / rate}}
            response = await client.post("/api/publish", json=body)
            round_trips.append(time.monotonic() - sent)
            if response.status_code == 200:
                accepted.append(n)
            else:
                refused[str(response.status_code)] += 1
        except httpx.HTTPError as exc:
            refused[type(exc).__name__] += 1
        finally:
            in_flight.release()

    tasks = []
    for n in range(count):
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        await in_flight.acquire()
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.wait_for(asyncio.gather(*tasks), GRACE)
    return accepted, round_trips, refused


async def probe(url: str, results: list[float], failures: Counter[str]) -> None:
    """A fresh connection for ``GET /healthz`` twice a second (no keep-alive)."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:
        while True:
            started = time.monotonic()
            try:
                response = await client.get("/healthz")
                if response.status_code == 200:
                    results.append(time.monotonic() - started)
                else:
                    failures[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] += 1
            await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - started)))


async def fill_big(url: str, events: int, size: int) -> Counter[str]:
    """Publish ``events`` events of ``size`` bytes of text to the big channel."""
    body = orjson.dumps({"channel": BIG, "data": "x" * size})
    statuses: Counter[str] = Counter()
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        queue = iter(range(events))

        async def worker() -> None:
            for _ in queue:
                response = await client.post("/api/publish", content=body, headers=headers)
                statuses[str(response.status_code)] += 1

        await asyncio.gather(*(worker() for _ in range(4)))
    return statuses


# --------------------------------------------------------------------------- abusers (child)


def head(port: int, target: str, upgrade: bool) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {HOST}:{port}"]
    if upgrade:
        key = base64.b64encode(os.urandom(16)).decode()
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (head and Content-Length body); return its status."""
    response_head = await reader.readuntil(b"\r\n\r\n")
    status = int(response_head[9:12])
    length = 0
    for line in response_head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def flooder(port: int, source: str, counters: Counter[str], stop: asyncio.Event) -> None:
    """One keep-alive connection publishing back to back; reconnects when closed."""
    body = orjson.dumps({"channel": FLOOD, "data": {"flood": True}})
    request = (
        f"POST /api/publish HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        except OSError:
            counters["connect failed"] += 1
            await asyncio.sleep(0.1)
            continue
        try:
            while not stop.is_set():
                writer.write(request)
                status = await read_response(reader)
                if status == 200:
                    counters["accepted"] += 1
                elif status == 429:
                    counters["refused 429"] += 1
                else:
                    counters[f"status {status}"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            counters["closed by server"] += 1
        finally:
            writer.transport.abort()


async def churner(port: int, source: str, counters: Counter[str], stop: asyncio.Event) -> None:
    """Open SSE and WebSocket subscriptions and drop them with a reset, in turn."""
    kinds = (("sse", f"/sse?channel={CHURN}", False), ("ws", f"/ws?channel={CHURN}", True))
    turn = 0
    while not stop.is_set():
        kind, target, upgrade = kinds[turn % 2]
        turn += 1
        try:
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        except OSError:
            counters["connect failed"] += 1
            await asyncio.sleep(0.1)
            continue
        try:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
            writer.write(head(port, target, upgrade))
            async with asyncio.timeout(5):
                response_head = await reader.readuntil(b"\r\n\r\n")
            status = int(response_head[9:12])
            if status in (101, 200):
                counters[f"{kind} opened and dropped"] += 1
            else:
                counters[f"{kind} refused {status}"] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            counters[f"{kind} closed by server"] += 1
        except TimeoutError:
            counters[f"{kind} no answer in 5 s"] += 1
        finally:
            writer.transport.abort()


class LorisProtocol(asyncio.Protocol):
    def __init__(self, counters: Counter[str]) -> None:
        self.counters = counters
        self.transport: asyncio.Transport | None = None
        self.sent = 0
        self.answered = False
        self.gone = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            self.counters["answered by server"] += 1

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone:
            self.gone = True
            self.counters["closed by server"] += 1


async def slowloris(
    port: int, source: str, count: int, interval: float, counters: Counter[str]
) -> None:
    """``count`` sockets, each sending its request head one byte every ``interval`` seconds."""
    loop = asyncio.get_running_loop()
    prefix = f"GET /sse?channel={LORIS} HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-Slow: ".encode()
    protocols: list[LorisProtocol] = []
    try:
        for start in range(0, count, 50):
            for _ in range(start, min(count, start + 50)):
                try:
                    _, protocol = await loop.create_connection(
                        lambda: LorisProtocol(counters), HOST, port, local_addr=(source, 0)
                    )
                except OSError:
                    counters["connect failed"] += 1
                    continue
                counters["opened"] += 1
                protocols.append(protocol)
            await asyncio.sleep(0.05)
        counters["ramped"] = 1
        while True:
            for protocol in protocols:
                if protocol.gone or protocol.transport is None:
                    continue
                index = protocol.sent
                protocol.transport.write(prefix[index : index + 1] if index < len(prefix) else b"a")
                protocol.sent += 1
                counters["bytes sent"] += 1
            await asyncio.sleep(interval)
    finally:
        counters["still open at end"] = sum(not p.gone for p in protocols)
        for protocol in protocols:
            protocol.gone = True
            if protocol.transport is not None:
                protocol.transport.abort()


async def history_readers(
    port: int, source: str, count: int, limit: int, counters: Counter[str], stop: asyncio.Event
) -> None:
    """``count`` sockets asking for the big channel's history, never reading the answer."""
    loop = asyncio.get_running_loop()
    request = head(port, f"/api/history/{BIG}?limit={limit}", upgrade=False)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.bind((source, 0))
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (HOST, port))
                await loop.sock_sendall(sock, request)
            except OSError:
                counters["connect failed"] += 1
                continue
            counters["requests sent"] += 1
        await stop.wait()
    finally:
        for sock in sockets:
            # Peek (read nothing) to see whether the answer started or the server closed.
            try:
                if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    counters["closed by server"] += 1
                else:
                    counters["answer started"] += 1
            except BlockingIOError:
                counters["no answer yet"] += 1
            except OSError:
                counters["reset by server"] += 1
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
            sock.close()


async def run_abusers(config: dict[str, Any]) -> None:
    """The child process: run every abuser until stdin closes, then print counters as JSON."""
    port, source = config["port"], config["source"]
    # The counters a limit would move are listed from the start, at 0.
    counters: dict[str, Counter[str]] = {
        "flood": Counter({"accepted": 0, "refused 429": 0}),
        "churn": Counter(),
        "slowloris": Counter({"opened": 0, "closed by server": 0}),
        "history": Counter({"requests sent": 0, "closed by server": 0}),
    }
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(flooder(port, source, counters["flood"], stop))
        for _ in range(config["flood"])
    ]
    tasks += [
        asyncio.create_task(churner(port, source, counters["churn"], stop))
        for _ in range(config["churn"])
    ]
    tasks.append(
        asyncio.create_task(
            slowloris(
                port, source, config["loris"], config["loris_interval"], counters["slowloris"]
            )
        )
    )
    readers = asyncio.create_task(
        history_readers(port, source, config["readers"], config["limit"], counters["history"], stop)
    )
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    started = time.monotonic()
    try:
        await wait_until(
            lambda: (
                counters["slowloris"]["ramped"] > 0
                and counters["history"].total() >= config["readers"]
            ),
            60,
        )
        counters["slowloris"].pop("ramped", None)
        sys.stdout.write(json.dumps({"ready": round(time.monotonic() - started, 2)}) + "\n")
        sys.stdout.flush()
        # Until the measuring process closes our stdin (or dies), bounded in any case.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(config["max_life"]):
                await stdin.read()
    finally:
        # The loops also check ``stop``: in Python 3.11 a cancellation can be lost in
        # a wait that completes at the same moment.
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.wait([*tasks, readers], timeout=10)
        counters["slowloris"].pop("ramped", None)
        sys.stdout.write(json.dumps({name: dict(c) for name, c in counters.items()}) + "\n")
        sys.stdout.flush()


class Abusers:
    """The abusers' process, started and stopped (killed by PID if need be) by the measurer."""

    def __init__(self, args: argparse.Namespace, port: int) -> None:
        self.config = {
            "port": port,
            "source": args.abuser_address,
            "flood": args.flood_connections,
            "churn": args.churners,
            "loris": args.loris,
            "loris_interval": args.loris_interval,
            "readers": args.readers,
            "limit": args.history_limit,
            "max_life": args.seconds + 2 * GRACE,
        }
        self.process: asyncio.subprocess.Process | None = None
        self.ready: dict[str, Any] = {}

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--abusers-child",
            json.dumps(self.config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 90)
        self.ready = json.loads(line) if line else {"ready": None}

    async def stop(self) -> dict[str, Any]:
        process = self.process
        if process is None:
            return {}
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            process.stdin.close()
            output = await asyncio.wait_for(process.stdout.read(), GRACE)
            await asyncio.wait_for(process.wait(), GRACE)
            lines = output.decode().strip().splitlines()
            return dict(json.loads(lines[-1])) if lines else {}
        except (TimeoutError, ValueError) as exc:
            return {"error": {f"no counters ({type(exc).__name__})": 1}}
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- phases


async def phase(
    args: argparse.Namespace, url: str, sampler: RssSampler, abused: bool
) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    mark = sampler.mark()
    subscribers = Subscribers(f"ws://{HOST}:{port}/ws?channel={CALM}", args.subscribers)
    abusers = Abusers(args, port) if abused else None
    probes: list[float] = []
    probe_failures: Counter[str] = Counter()
    background: list[asyncio.Task[None]] = []
    result: dict[str, Any] = {"abused": abused}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    try:
        async with httpx.AsyncClient(
            base_url=url,
            timeout=GRACE,
            limits=limits,
            headers={"x-forwarded-for": CALM_ADDRESS},
        ) as publisher:
            await subscribers.open()
            # Subscribed once a first event arrives: publish until every subscriber saw one.
            for _ in range(20):
                await publisher.post("/api/publish", json={"channel": CALM, "data": {"warm": 1}})
                if await wait_until(lambda: len(subscribers.warm) == len(subscribers.tasks), 0.5):
                    break
            if abusers is not None:
                await abusers.start()
                result["abusers ready after s"] = abusers.ready.get("ready")
            background.append(asyncio.create_task(probe(url, probes, probe_failures)))
            accepted, round_trips, refused = await publish_paced(publisher, args.rate, args.seconds)
            expected = len(accepted) * len(subscribers.tasks)
            await wait_until(lambda: subscribers.delivered() >= expected, 5)
            for task in background:
                task.cancel()
            if abusers is not None:
                result["abusers"] = await abusers.stop()
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if abusers is not None:
            abusers.kill()
        await subscribers.close()
    peak = sampler.peak_since(mark)
    await asyncio.sleep(1.0)  # let the server release what the phase's clients held
    latencies = subscribers.latencies
    result.update(
        {
            "subscribers": len(subscribers.tasks),
            "subscribers failed to connect": subscribers.connect_failed,
            "subscribers closed early": dict(subscribers.closed_early),
            "published": len(accepted),
            "publish refused": dict(refused),
            "publish round trip p50 s": percentile(round_trips, 0.5),
            "publish round trip p99 s": percentile(round_trips, 0.99),
            "delivered": subscribers.delivered(),
            "expected": int(args.rate * args.seconds) * args.subscribers,
            "latency p50 s": percentile(latencies, 0.5),
            "latency p99 s": percentile(latencies, 0.99),
            "latency max s": max(latencies, default=None),
            "probes ok": len(probes),
            "probe p99 s": percentile(probes, 0.99),
            "probe max s": max(probes, default=None),
            "probe failures": dict(probe_failures),
            "rss peak MiB": peak,
            "rss end MiB": sampler.read(),
        }
    )
    return result


def report(args: argparse.Namespace, results: dict[str, Any], console: Console) -> None:
    clean, abused = results["clean"], results["abused"]

    def ratio(run: dict[str, Any]) -> str:
        return (
            f"{run['delivered']:,} / {run['expected']:,} ({run['delivered'] / run['expected']:.3f})"
        )

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f} MiB"

    table = Table(
        title=f"{args.subscribers} subscribers, {args.rate:g} events/s, {args.seconds:g} s"
    )
    table.add_column("")
    table.add_column("clean", justify="right")
    table.add_column("abused", justify="right")
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("latency p50", lambda r: ms(r["latency p50 s"])),
        ("latency p99", lambda r: ms(r["latency p99 s"])),
        ("latency max", lambda r: ms(r["latency max s"])),
        ("delivered / expected", ratio),
        ("subscribers closed early", lambda r: str(sum(r["subscribers closed early"].values()))),
        ("publish round trip p99", lambda r: ms(r["publish round trip p99 s"])),
        ("publishes refused", lambda r: str(sum(r["publish refused"].values()))),
        (
            "new-connection probe p99 / max",
            lambda r: f"{ms(r['probe p99 s'])} / {ms(r['probe max s'])}",
        ),
        ("probe failures", lambda r: str(sum(r["probe failures"].values()))),
        ("server RSS peak", lambda r: mib(r["rss peak MiB"])),
        ("server RSS end", lambda r: mib(r["rss end MiB"])),
    ]
    for label, cell in rows:
        table.add_row(label, cell(clean), cell(abused))
    console.print(table)
    counters = Table(title="abusers")
    counters.add_column("abuser")
    counters.add_column("counters")
    for name, values in abused.get("abusers", {}).items():
        counters.add_row(name, ", ".join(f"{key} {value:,}" for key, value in values.items()))
    console.print(counters)
    console.print(f"server: {results['server']}")
    p99_ratio, ceiling = results["p99 ratio"], args.rss_ceiling_mib
    peak = max(clean["rss peak MiB"] or 0, abused["rss peak MiB"] or 0)
    ratio_text = "-" if p99_ratio is None else f"{p99_ratio:.2f}x"
    console.print(f"p99 ratio abused/clean: {ratio_text}; peak RSS {peak:,.0f} MiB")
    console.print(
        f"p99 within 2x: {'yes' if p99_ratio is not None and p99_ratio <= 2 else 'no'}; "
        f"RSS under ceiling {ceiling:g} MiB: {'yes' if peak < ceiling else 'no'}"
    )


async def measure(args: argparse.Namespace, url: str, pid: int) -> dict[str, Any]:
    sampler = RssSampler(pid)
    sampling = asyncio.create_task(sampler.run())
    results: dict[str, Any] = {}
    try:
        started = time.monotonic()
        statuses = await fill_big(url, args.big_events, args.big_bytes)
        results["big channel"] = {
            "published": dict(statuses),
            "seconds": round(time.monotonic() - started, 1),
            "rss after MiB": sampler.read(),
        }
        results["clean"] = await phase(args, url, sampler, abused=False)
        results["abused"] = await phase(args, url, sampler, abused=True)
    finally:
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
    clean, abused = results["clean"]["latency p99 s"], results["abused"]["latency p99 s"]
    results["p99 ratio"] = abused / clean if clean and abused is not None else None
    return results


def raise_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--abusers-child":
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(run_abusers(json.loads(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase (default 20)")
    parser.add_argument("--subscribers", type=int, default=100, help="default 100")
    parser.add_argument("--rate", type=float, default=50.0, help="events/s (default 50)")
    parser.add_argument(
        "--fast-write", action=argparse.BooleanOptionalAction, default=True, help="default on"
    )
    parser.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="passed to the server as TIDINGS_NAME=VALUE (repeatable)",
    )
    parser.add_argument(
        "--abuser-address",
        default="127.0.0.2",
        help="loopback address the abusers connect from (default 127.0.0.2; the "
        "well-behaved clients use 127.0.0.1)",
    )
    parser.add_argument("--flood-connections", type=int, default=4, help="default 4")
    parser.add_argument("--churners", type=int, default=2, help="concurrent loops (default 2)")
    parser.add_argument("--loris", type=int, default=1000, help="slowloris sockets (default 1000)")
    parser.add_argument("--loris-interval", type=float, default=1.0, help="s per byte (default 1)")
    parser.add_argument("--readers", type=int, default=10, help="history readers (default 10)")
    parser.add_argument("--history-limit", type=int, default=10000, help="default 10000")
    parser.add_argument("--big-events", type=int, default=1000, help="default 1000")
    parser.add_argument("--big-bytes", type=int, default=60000, help="per event (default 60000)")
    parser.add_argument("--rss-ceiling-mib", type=float, default=512.0, help="default 512")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args()
    if not (0 < args.seconds <= 600 and 0 < args.rate <= 1000 and 0 < args.subscribers <= 5000):
        parser.error(
            "--seconds must be in (0, 600], --rate in (0, 1000], --subscribers in (0, 5000]"
        )
    if args.loris > 10000 or args.readers > 1000 or args.big_events > 100000:
        parser.error("--loris at most 10000, --readers at most 1000, --big-events at most 100000")
    raise_file_limit(2 * (args.loris + args.subscribers + args.readers) + 1000)
    console = Console()
    load = [round(x, 2) for x in os.getloadavg()]
    console.print(f"load average at the start: {load[0]} {load[1]} {load[2]}")
    results: dict[str, Any] = {"load average at the start": load}
    with tempfile.TemporaryDirectory(prefix="tidings-abuse-") as directory:
        log = Path(directory) / "server.log"
        with serve(args, log) as (url, process):
            console.print(
                f"tidings serve at {url} (pid {process.pid}), fast_write={args.fast_write}"
            )
            try:
                results.update(uvloop.run(measure(args, url, process.pid)))
            except KeyboardInterrupt:
                console.print("interrupted")
                return
            code = process.poll()
            results["server"] = (
                "running at the end" if code is None else f"exited with {code} during the run"
            )
        lines = log.read_text(errors="replace").splitlines()
        results["server log lines"] = len(lines)
        results["server log tail"] = lines[-5:]
    results["load average at the end"] = [round(x, 2) for x in os.getloadavg()]
    results["settings"] = {
        "fast_write": args.fast_write,
        "server settings": args.server_setting,
        "rss ceiling MiB": args.rss_ceiling_mib,
    }
    report(args, results, console)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
