"""The LLM relay's cost: TTFT overhead, tokens relayed per core, generations held.

Runs the local OpenAI-compatible fake upstream (tests/support/fake_openai.py)
and the load client in this process (pinned to the last CPU), and
``tidings serve`` as a subprocess pinned to CPU 0 with the fake as its
upstream. Three bounded phases:

1. **TTFT overhead**: ``--requests`` sequential streamed requests, directly
   to the fake and through Tidings, taken in turns; time from sending the
   request to the first content token, p50 and p99; the difference is what
   the relay adds.
2. **Tokens relayed per core**: ``--streams`` concurrent generations of
   ``--tokens`` tokens each, back to back upstream (or ``--interval``
   seconds apart, as a real model sends them: then each network read carries
   one token); tokens received per wall second, and per CPU second of the
   server process (its utime + stime), ``--rounds`` times; the median is
   reported.
3. **Concurrent generations held**: ``--held`` generations open at once
   (each holds a client stream and an upstream request), all paused
   upstream; checks that each received its first token, records the server's
   RSS, then releases them and checks that each completed.

``--baseline DIR`` compares with another version of Tidings in the same
run: a second server runs from ``DIR/src`` (say, ``git archive`` of an older
commit unpacked in ``DIR``), on the same CPU, and phases 1 and 2 take
turns between the two, so that the noise of a shared machine falls on both
alike; the ratios are printed.

    python benchmarks/llm_relay.py [--requests 200] [--streams 20] [--tokens 2000]
        [--held 1000] [--rounds 3] [--interval 0] [--baseline DIR]
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
ERROR = b'data: {"error"'
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
            if ERROR in data:  # the headers went out before the upstream answered
                raise RuntimeError(f"the stream ended with an error: {data[-300:]!r}")
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


async def ttft_phase(
    client: httpx.AsyncClient, targets: dict[str, str], requests: int, pids: dict[str, int]
) -> dict[str, float]:
    """Time to first token of each target, requests taken in turns; the p50s.

    Also the CPU time each server spends per request (20 tokens), which the
    load of a shared machine does not inflate as it does latency.
    """
    samples: dict[str, list[float]] = {label: [] for label in targets}
    cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
    for round_ in range(10 + requests):  # ten rounds warm up connections and code paths
        for label, url in targets.items():
            pid = pids.get(label)
            before = cpu_seconds(pid) if pid else 0.0
            ttft = (await stream_once(client, url, "ttft"))[0] * 1000
            if round_ >= 10:
                samples[label].append(ttft)
                if pid:
                    cpu[label] += cpu_seconds(pid) - before
    p50s = {}
    for label, values in samples.items():
        p50s[label] = statistics.median(values)
        print(
            f"ttft {label:8} n={requests} p50={p50s[label]:.2f} ms "
            f"p99={percentile(values, 0.99):.2f} ms mean={statistics.fmean(values):.2f} ms"
        )
    for label in targets:
        if label != "direct":
            print(
                f"ttft {label:8} adds {p50s[label] - p50s['direct']:.2f} ms at p50; "
                f"server CPU {cpu[label] * 1000 / requests:.2f} ms per request"
            )
    return p50s


async def throughput_once(
    client: httpx.AsyncClient, label: str, url: str, streams: int, tokens: int, pid: int | None
) -> float:
    """One round of ``streams`` generations; tokens per CPU-second of ``pid`` (0 without)."""
    cpu_before = cpu_seconds(pid) if pid else 0.0
    started = time.perf_counter()
    async with asyncio.timeout(300):
        results = await asyncio.gather(*(stream_once(client, url, "bulk") for _ in range(streams)))
    wall = time.perf_counter() - started
    received = sum(count for _, count in results)
    assert received == streams * tokens, (received, streams * tokens)
    line = f"tokens {label:8} {streams} streams x {tokens}: {received / wall:,.0f} tokens/s"
    if not pid:
        print(line)
        return 0.0
    cpu = max(cpu_seconds(pid) - cpu_before, 1 / os.sysconf("SC_CLK_TCK"))  # at least a tick
    print(f"{line}, server CPU {cpu:.2f} s -> {received / cpu:,.0f} tokens per CPU-second")
    return received / cpu


async def throughput_phase(
    client: httpx.AsyncClient,
    targets: dict[str, tuple[str, int | None]],
    streams: int,
    tokens: int,
    rounds: int,
) -> dict[str, float]:
    """Tokens per CPU-second of each server, ``rounds`` times in turns; the medians."""
    rates: dict[str, list[float]] = {label: [] for label in targets}
    for round_ in range(rounds):
        order = list(targets.items())
        if round_ % 2:
            order.reverse()  # neither server always runs first
        for label, (url, pid) in order:
            rates[label].append(await throughput_once(client, label, url, streams, tokens, pid))
    medians = {label: statistics.median(values) for label, values in rates.items() if values[0]}
    for label, median in medians.items():
        print(f"tokens {label:8} median of {rounds}: {median:,.0f} tokens per CPU-second")
    if "baseline" in medians:
        ratio = medians["relay"] / medians["baseline"]
        print(f"tokens relay / baseline: {ratio:.2f}x tokens per CPU-second")
    return medians


async def held_phase(
    client: httpx.AsyncClient, relay: str, held: int, scenario: Scenario, pid: int
) -> None:
    firsts = [asyncio.Event() for _ in range(held)]
    rss_before = rss_mib(pid)
    tasks = [asyncio.ensure_future(stream_once(client, relay, "held", first)) for first in firsts]
    try:
        all_first = asyncio.ensure_future(asyncio.gather(*(first.wait() for first in firsts)))
        try:
            # Until each has its first token, or one ends before (a failure, raised here).
            done, _ = await asyncio.wait(
                [all_first, *tasks], timeout=120, return_when="FIRST_COMPLETED"
            )
        finally:
            all_first.cancel()
        for task in done - {all_first}:
            raise RuntimeError(f"a held generation ended early: {task.result()}")
        if all_first not in done:
            raise TimeoutError("the held generations did not all start within 120 s")
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


async def start_server(
    upstream: FakeUpstream, args: argparse.Namespace, cpus: list[int], source: str | None
) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    env = {
        **os.environ,
        "TIDINGS_LOG_LEVEL": "warning",
        "TIDINGS_LLM_BASE_URL": upstream.base_url,
        "TIDINGS_LLM_MAX_GENERATIONS": str(max(args.held, args.streams) + 10),
        "TIDINGS_LLM_MAX_GENERATIONS_PER_CLIENT": str(max(args.held, args.streams) + 10),
        "TIDINGS_LLM_GRACE": "60",
        # Every held generation is one connection from this one client.
        "TIDINGS_MAX_CONNECTIONS_PER_CLIENT": str(args.held + 100),
    }
    if source is not None:
        env["PYTHONPATH"] = source
    command = [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--no-demo"]
    if len(cpus) > 1:
        command = ["taskset", "-c", str(cpus[0]), *command]
    return await asyncio.create_subprocess_exec(*command, env=env), port


async def wait_healthy(client: httpx.AsyncClient, base: str) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                if (await client.get(base + "/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


async def main(args: argparse.Namespace) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})
    bulk_tokens = [f"tok{index} " for index in range(args.tokens)]
    async with FakeUpstream() as upstream:
        upstream.scenario("ttft", Scenario(tokens=[f"tok{index} " for index in range(20)]))
        upstream.scenario("bulk", Scenario(tokens=bulk_tokens, interval=args.interval))
        held = upstream.scenario("held", Scenario(tokens=["tok0 ", "tok1 "], pause_after=1))
        servers = {"relay": await start_server(upstream, args, cpus, None)}
        if args.baseline:
            servers["baseline"] = await start_server(upstream, args, cpus, args.baseline)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=args.held + 100)
        try:
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                urls = {}
                for label, (_, port) in servers.items():
                    base = f"http://127.0.0.1:{port}"
                    await wait_healthy(client, base)
                    urls[label] = base + "/v1/chat/completions"
                direct = upstream.base_url + "/chat/completions"
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
                print(f"{when} UTC, Python {platform.python_version()}, CPUs {cpus}")
                pids = {label: process.pid for label, (process, _) in servers.items()}
                await ttft_phase(client, {"direct": direct, **urls}, args.requests, pids)
                targets: dict[str, tuple[str, int | None]] = {"direct": (direct, None)}
                for label, (process, _) in servers.items():
                    targets[label] = (urls[label], process.pid)
                await throughput_phase(client, targets, args.streams, args.tokens, args.rounds)
                await held_phase(client, urls["relay"], args.held, held, servers["relay"][0].pid)
        finally:
            for process, _ in servers.values():
                process.terminate()
            async with asyncio.timeout(30):
                for process, _ in servers.values():
                    await process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds between the tokens of phase 2 upstream (default: back to back)",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        type=lambda path: str(Path(path).resolve() / "src"),
        help="the source tree of another version (its src/ is imported)",
    )
    asyncio.run(main(parser.parse_args()))
