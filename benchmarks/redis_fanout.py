"""Publish throughput and end-to-end fan-out latency: Redis (1 and 3 nodes) vs memory.

Two parts, both bounded in count and time:

* ``hub``: one process, no HTTP. ``Hub.publish`` on a MemoryBackend and on a
  RedisBackend: publishes per second with 1 and with 64 concurrent
  publishers (each Redis publish is one Lua script; concurrent ones share
  pipelined batches), and the latency from ``publish()`` to a subscriber of
  another hub (another "node") receiving the event, one event at a time.
* ``cluster``: real ``tidings serve`` processes: memory x 1, redis x 1 and
  redis x 3. SSE subscribers are spread over the nodes, messages are POSTed
  to ``/api/publish`` round-robin over the nodes by concurrent publishers.
  Each message carries its number and send time; every subscriber counts
  missing, duplicate and out-of-order messages and times every delivery.

    python benchmarks/redis_fanout.py                      # both parts, defaults
    python benchmarks/redis_fanout.py --part cluster -n 300 -m 5000
    python benchmarks/redis_fanout.py --redis-url redis://127.0.0.1:6379/0 --json

Needs a Redis at ``--redis-url``; keys go under a fresh ``bench-…:`` prefix
and are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import orjson

from tidings import Hub, MemoryBackend
from tidings.hub.backends.redis import RedisBackend
from tidings.testing import free_port

STAMP = re.compile(rb'id: [^\n]*:(\d+)\ndata: \{"n":(\d+),"t":([0-9.]+)')


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies, default=float("nan")) * 1000, 2),
    }


# -- part 1: the hub in one process --------------------------------------------------


async def publish_rate(hub: Hub, channel: str, messages: int, concurrency: int) -> float:
    numbers = iter(range(messages))

    async def publisher() -> None:
        for n in numbers:
            await hub.publish(channel, n)

    started = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    return messages / (time.perf_counter() - started)


async def delivery_latency(
    publisher: Hub, subscriber: Hub, channel: str, count: int
) -> list[float]:
    latencies = []
    async with subscriber.subscribe(channel) as subscription:
        for n in range(count):
            started = time.perf_counter()
            await publisher.publish(channel, n)
            async with asyncio.timeout(10):
                item = await anext(subscription)
            latencies.append(time.perf_counter() - started)
            assert item.data == n  # type: ignore[union-attr]
    return latencies


async def hub_part(args: argparse.Namespace, prefix: str) -> list[dict[str, Any]]:
    rows = []
    factories: list[tuple[str, Callable[[], Any]]] = [
        ("memory", lambda: None),
        ("redis", lambda: RedisBackend(args.redis_url, prefix=prefix)),
    ]
    for name, make in factories:
        async with AsyncExitStack() as stack:
            if name == "memory":
                shared = MemoryBackend()
                first = await stack.enter_async_context(Hub(shared))
                second = first  # one process: the "other node" is the same hub
            else:
                first = await stack.enter_async_context(Hub(make()))
                second = await stack.enter_async_context(Hub(make()))
            row: dict[str, Any] = {"backend": name}
            for concurrency in (1, 64):
                channel = f"bench:{secrets.token_hex(4)}"
                row[f"publishes_per_s_c{concurrency}"] = round(
                    await publish_rate(first, channel, args.hub_messages, concurrency)
                )
            latencies = await delivery_latency(
                first, second, f"bench:{secrets.token_hex(4)}", args.latency_samples
            )
            row.update(summary(latencies))
            rows.append(row)
            print(f"hub  {row}", file=sys.stderr)
    return rows


# -- part 2: tidings serve processes -----------------------------------------------------


class Node:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--port", str(self.port), "--no-demo"],
            env={
                **os.environ,
                "TIDINGS_LOG_LEVEL": "warning",
                # Every publisher shares the loopback address: lift the limit per address.
                "TIDINGS_PUBLISH_RATE_PER_ADDRESS": "0",
                **env,
            },
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"node on {self.port} did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Subscriber:
    """One SSE connection that parses stamps out of the raw stream."""

    def __init__(self, messages: int, timed: bool) -> None:
        self.seen = bytearray(messages)
        self.received = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.last = -1
        self.timed = timed
        self.latencies: list[float] = []
        self.done = asyncio.Event()
        self.messages = messages

    async def run(self, url: str, channel: str, connected: asyncio.Event) -> None:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET /sse/{channel} HTTP/1.1\r\nHost: {host}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        buffer = b""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head[:100]
            connected.set()
            while self.received < self.messages:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError("the server closed the stream")
                now = time.time()
                buffer += chunk
                end = buffer.rfind(b"\n\n")
                if end < 0:
                    continue
                complete, buffer = buffer[: end + 2], buffer[end + 2 :]
                for match in STAMP.finditer(complete):
                    self.record(int(match[1]), int(match[2]), float(match[3]), now)
        finally:
            writer.close()
            self.done.set()

    def record(self, offset: int, n: int, sent: float, now: float) -> None:
        if self.seen[n]:
            self.duplicates += 1
            return
        self.seen[n] = 1
        self.received += 1
        if self.last >= 0 and offset != self.last + 1:
            self.out_of_order += 1  # offsets must be consecutive on one channel
        self.last = offset
        if self.timed:
            self.latencies.append(now - sent)


class RawPublisher:
    """A keep-alive HTTP/1.1 connection posting to /api/publish (cheaper than an HTTP client)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.head = (
            f"POST /api/publish HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()

    @classmethod
    async def open(cls, url: str) -> RawPublisher:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, host)

    async def post(self, body: bytes) -> int:
        self.writer.write(self.head + b"%d\r\n\r\n" % len(body) + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
        await self.reader.readexactly(length)
        return int(head[9:12])

    def close(self) -> None:
        self.writer.close()


async def cluster_run(
    name: str,
    nodes: list[Node],
    args: argparse.Namespace,
    subscribers_count: int,
    rate: float | None,
) -> dict[str, Any]:
    channel = f"bench:{secrets.token_hex(4)}"
    subscribers = [Subscriber(args.messages, timed=i < 32) for i in range(subscribers_count)]
    connected = [asyncio.Event() for _ in subscribers]
    tasks = [
        asyncio.create_task(sub.run(nodes[i % len(nodes)].url, channel, connected[i]))
        for i, sub in enumerate(subscribers)
    ]
    try:
        async with asyncio.timeout(30):
            for event in connected:
                await event.wait()
        numbers = iter(range(args.messages))
        errors = 0
        interval = args.publishers / rate if rate else 0.0

        async def publisher(index: int) -> None:
            nonlocal errors
            connections = [await RawPublisher.open(node.url) for node in nodes]
            next_at = time.perf_counter() + interval * index / args.publishers
            try:
                for n in numbers:
                    if interval:
                        next_at += interval
                        delay = next_at - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    body = b'{"channel":"%s","data":{"n":%d,"t":%.6f}}' % (
                        channel.encode(),
                        n,
                        time.time(),
                    )
                    if await connections[n % len(nodes)].post(body) != 200:
                        errors += 1
            finally:
                for connection in connections:
                    connection.close()

        started = time.perf_counter()
        async with asyncio.timeout(args.time_limit):
            await asyncio.gather(*(publisher(i) for i in range(args.publishers)))
            published = time.perf_counter() - started
            await asyncio.gather(*(sub.done.wait() for sub in subscribers))
        finished = time.perf_counter() - started
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [value for sub in subscribers for value in sub.latencies]
    received = sum(sub.received for sub in subscribers)
    row = {
        "setup": name,
        "rate": rate or "max",
        "subscribers": subscribers_count,
        "messages": args.messages,
        "publishes_per_s": round(args.messages / published),
        "deliveries_per_s": round(received / finished),
        **summary(latencies),
        "missing": args.messages * subscribers_count - received,
        "duplicates": sum(sub.duplicates for sub in subscribers),
        "out_of_order": sum(sub.out_of_order for sub in subscribers),
        "publish_errors": errors,
    }
    print(f"cluster {row}", file=sys.stderr)
    return row


async def cluster_part(args: argparse.Namespace, prefix: str) -> list[dict[str, Any]]:
    setups = [
        ("memory x1", {"TIDINGS_BACKEND": "memory"}, 1),
        ("redis x1", {"TIDINGS_BACKEND": "redis"}, 1),
        ("redis x3", {"TIDINGS_BACKEND": "redis"}, 3),
    ]
    rows = []
    for name, env, count in setups:
        env = {**env, "TIDINGS_REDIS_URL": args.redis_url, "TIDINGS_REDIS_PREFIX": prefix}
        nodes = [Node(env) for _ in range(count)]
        try:
            for node in nodes:
                node.wait_ready()
            rows.append(await cluster_run(name, nodes, args, args.max_subscribers, None))
            rows.append(await cluster_run(name, nodes, args, args.subscribers, args.rate))
        finally:
            for node in nodes:
                node.stop()
    return rows


async def cleanup(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench-{secrets.token_hex(4)}:"
    result: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPU {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}",
    }
    parts: list[tuple[str, Callable[[argparse.Namespace, str], Awaitable[Any]]]] = []
    if args.part in ("hub", "all"):
        parts.append(("hub", hub_part))
    if args.part in ("cluster", "all"):
        parts.append(("cluster", cluster_part))
    try:
        for name, part in parts:
            result[name] = await part(args, prefix)
    finally:
        await cleanup(args.redis_url, prefix)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = []
    if "hub" in result:
        lines += [
            "| backend | publishes/s (1 publisher) | publishes/s (64) "
            "| publish → other node p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in result["hub"]:
            lines.append(
                f"| {row['backend']} | {row['publishes_per_s_c1']:,} "
                f"| {row['publishes_per_s_c64']:,} "
                f"| {row['p50_ms']} | {row['p99_ms']} |"
            )
        lines.append("")
    if "cluster" in result:
        lines += [
            "| setup | publish rate | subscribers | messages | publishes/s | deliveries/s "
            "| p50 ms | p99 ms | max ms | missing | dup | out of order |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in result["cluster"]:
            lines.append(
                f"| {row['setup']} | {row['rate']} | {row['subscribers']} | {row['messages']:,} "
                f"| {row['publishes_per_s']:,} | {row['deliveries_per_s']:,} | {row['p50_ms']} "
                f"| {row['p99_ms']} | {row['max_ms']} | {row['missing']} | {row['duplicates']} "
                f"| {row['out_of_order']} |"
            )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("hub", "cluster", "all"), default="all")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--hub-messages", type=int, default=5000, help="per hub measurement")
    parser.add_argument("--latency-samples", type=int, default=500)
    parser.add_argument(
        "-n", "--subscribers", type=int, default=200, help="SSE subscribers of the paced run"
    )
    parser.add_argument("--rate", type=float, default=500.0, help="messages/s of the paced run")
    parser.add_argument(
        "--max-subscribers",
        type=int,
        default=10,
        help="SSE subscribers of the as-fast-as-possible run",
    )
    parser.add_argument("-m", "--messages", type=int, default=5000, help="messages per run")
    parser.add_argument("--publishers", type=int, default=16)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per cluster run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    try:
        import uvloop
    except ImportError:
        outcome = asyncio.run(main(arguments))
    else:
        outcome = uvloop.run(main(arguments))
    print(
        orjson.dumps(outcome, option=orjson.OPT_INDENT_2).decode()
        if arguments.json
        else markdown(outcome)
    )
