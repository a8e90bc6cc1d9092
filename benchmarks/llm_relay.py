"""The LLM relay's cost: TTFT overhead, tokens relayed per core, generations held.

Runs the local OpenAI-compatible fake upstream (tests/support/fake_openai.py)
and the load client in this process (pinned to the last CPU), and
``tidings serve`` as a subprocess pinned to CPU 0 with the fake as its
upstream. Three bounded phases:

1. **TTFT overhead**: ``--requests`` sequential streamed requests, directly
   to the fake and through Tidings; time from sending the request to the
   first content token, p50 and p99; the difference is what the relay adds.
2. **Tokens relayed per core**: ``--streams`` concurrent generations of
   ``--tokens`` tokens each with no delay upstream; tokens received per wall
   second, and per CPU second of the server process (its utime + stime).
3. **Concurrent generations held**: ``--held`` generations open at once
   (each holds a client stream and an upstream request), all paused
   upstream; checks that each received its first token, records the server's
   RSS, then releases them and checks that each completed.

    python benchmarks/llm_relay.py [--requests 200] [--streams 20] [--tokens 2000] [--held 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.fake_openai import FakeUpstream, Scenario

from tidings.testing import free_port

TOKEN = b'"content":"tok'
MESSAGES = [{"role": "user", "content": "benchmark"}]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def stream_once(
    client: httpx.AsyncClient, url: str, model: str, first: asyncio.Event | None = None
) -> tuple[float, int]:
    """Stream one completion; return (seconds to the first token, tokens received)."""
    body = {"model": model, "messages": MESSAGES, "stream": True}
    started = time.perf_counter()
    ttft = -1.0
    tokens = 0
    tail = b""
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for raw in response.aiter_raw():
            data = tail + raw
            count = data.count(TOKEN)
            if count and ttft < 0:
                ttft = time.perf_counter() - started
                if first is not None:
                    first.set()
            tokens += count
            tail = data[-len(TOKEN) :]
            tokens -= tail.count(TOKEN)  # counted again with the next read
    tokens += tail.count(TOKEN)
    return ttft, tokens


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def ttft_phase(client: httpx.AsyncClient, direct: str, relay: str, requests: int) -> None:
    for label, url in (("direct", direct), ("relay", relay)):
        for _ in range(10):  # warm up connections and code paths
            await stream_once(client, url, "ttft")
        samples = [(await stream_once(client, url, "ttft"))[0] * 1000 for _ in range(requests)]
        print(
            f"ttft {label:6} n={requests} p50={statistics.median(samples):.2f} ms "
            f"p99={percentile(samples, 0.99):.2f} ms mean={statistics.fmean(samples):.2f} ms"
        )


async def throughput_phase(
    client: httpx.AsyncClient, direct: str, relay: str, streams: int, tokens: int, pid: int
) -> None:
    for label, url in (("direct", direct), ("relay", relay)):
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        async with asyncio.timeout(300):
            results = await asyncio.gather(
                *(stream_once(client, url, "bulk") for _ in range(streams))
            )
        wall = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
        received = sum(count for _, count in results)
        assert received == streams * tokens, (received, streams * tokens)
        line = f"tokens {label:6} {streams} streams x {tokens}: {received / wall:,.0f} tokens/s"
        if label == "relay":
            line += f", server CPU {cpu:.2f} s -> {received / cpu:,.0f} tokens per CPU-second"
        print(line)


async def held_phase(
    client: httpx.AsyncClient, relay: str, held: int, scenario: Scenario, pid: int
) -> None:
    firsts = [asyncio.Event() for _ in range(held)]
    rss_before = rss_mib(pid)
    tasks = [asyncio.ensure_future(stream_once(client, relay, "held", first)) for first in firsts]
    try:
        async with asyncio.timeout(120):
            await asyncio.gather(*(first.wait() for first in firsts))
        rss = rss_mib(pid)
        stats = (await client.get(relay.replace("/v1/chat/completions", "/api/stats"))).json()
        print(
            f"held   {held} generations streaming at once: active={stats['llm']['active']}, "
            f"server RSS {rss_before:.0f} -> {rss:.0f} MiB "
            f"({(rss - rss_before) * 1024 / held:.1f} KiB per generation)"
        )
        scenario.release.set()
        async with asyncio.timeout(120):
            results = await asyncio.gather(*tasks)
        assert all(count == len(scenario.tokens) for _, count in results)
        print(f"held   all {held} completed with every token")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def main(args: argparse.Namespace) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})
    bulk_tokens = [f"tok{index} " for index in range(args.tokens)]
    async with FakeUpstream() as upstream:
        upstream.scenario("ttft", Scenario(tokens=[f"tok{index} " for index in range(20)]))
        upstream.scenario("bulk", Scenario(tokens=bulk_tokens))
        held = upstream.scenario("held", Scenario(tokens=["tok0 ", "tok1 "], pause_after=1))
        port = free_port()
        env = {
            **os.environ,
            "TIDINGS_LOG_LEVEL": "warning",
            "TIDINGS_LLM_BASE_URL": upstream.base_url,
            "TIDINGS_LLM_MAX_GENERATIONS": str(max(args.held, args.streams) + 10),
            "TIDINGS_LLM_MAX_GENERATIONS_PER_CLIENT": str(max(args.held, args.streams) + 10),
            "TIDINGS_LLM_GRACE": "60",
        }
        command = [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--no-demo"]
        if len(cpus) > 1:
            command = ["taskset", "-c", str(cpus[0]), *command]
        server = await asyncio.create_subprocess_exec(*command, env=env)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=args.held + 100)
        try:
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                base = f"http://127.0.0.1:{port}"
                async with asyncio.timeout(30):
                    while True:
                        try:
                            if (await client.get(base + "/healthz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            await asyncio.sleep(0.1)
                relay = base + "/v1/chat/completions"
                direct = upstream.base_url + "/chat/completions"
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
                print(f"{when} UTC, Python {platform.python_version()}, CPUs {cpus}")
                await ttft_phase(client, direct, relay, args.requests)
                await throughput_phase(client, direct, relay, args.streams, args.tokens, server.pid)
                await held_phase(client, relay, args.held, held, server.pid)
        finally:
            server.terminate()
            async with asyncio.timeout(30):
                await server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--held", type=int, default=1000)
    asyncio.run(main(parser.parse_args()))
