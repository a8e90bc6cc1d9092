"""A late viewer of a long answer, with and without ``?snapshot=1``: bytes and time.

Runs the local OpenAI-compatible fake upstream (tests/support/fake_openai.py)
and the clients in this process (pinned to the last CPU), and ``tidings
serve`` as a subprocess pinned to CPU 0 with the fake as its upstream. One
generation of ``--tokens`` + 1 tokens is started and paused upstream after
``--tokens``; then, ``--repeat`` times each, a late viewer ``GET
/v1/streams/{id}`` (chunk by chunk) and ``GET /v1/streams/{id}?snapshot=1``
reads until it has the text so far: bytes received, frames, and the time
from the request to the full text (median and p90), the client's SSE and
JSON decoding included. Then the generation is released and the same is
measured for the finished answer, up to its ``end``.

The server's ``outbox_max_bytes`` is ``--outbox-bytes`` (16 MiB, as in the
first figures of docs/benchmarks.md). Before replays were paced, a
chunk-by-chunk viewer of an answer whose chunks pass the outbox (1 MiB by
default: about 3,700 tokens) was closed as a slow consumer before its first
event, at every attempt, and the benchmark stopped with that error; now any
``--outbox-bytes`` works.

    python benchmarks/llm_snapshot.py [--tokens 10000] [--repeat 20] [--outbox-bytes 16777216]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.fake_openai import FakeUpstream, Scenario

from tidings.testing import free_port
from tidings.wire.sse import SSEDecoder, SSEEvent

MESSAGES = [{"role": "user", "content": "benchmark"}]


class View:
    """What one viewer received."""

    def __init__(self) -> None:
        self.bytes = 0
        self.frames = 0
        self.connections = 0
        self.text: list[str] = []
        self.length = 0
        self.ended = False
        self._frames = 0

    def add(self, event: SSEEvent) -> None:
        self.frames += 1
        self.ended = event.event == "end"
        if event.event != "message":
            return
        for choice in orjson.loads(event.data)["choices"]:
            content = choice["delta"].get("content") or ""
            self.text.append(content)
            self.length += len(content)

    def progress(self) -> bool:
        """Whether events came since the last call."""
        frames, self._frames = self._frames, self.frames
        return self.frames > frames

    def done(self, expected: str, *, until_end: bool) -> bool:
        return self.length >= len(expected) and (self.ended or not until_end)


async def view(
    client: httpx.AsyncClient, url: str, expected: str, *, until_end: bool
) -> tuple[float, View]:
    """Read ``url`` until the text is ``expected`` (and the ``end`` came, with ``until_end``).

    A connection the server closes is resumed with ``Last-Event-ID``, as an
    ``EventSource`` does (``connections`` counts them).
    """
    seen = View()
    decoder = SSEDecoder()
    started = time.perf_counter()
    while not seen.done(expected, until_end=until_end):
        seen.connections += 1
        headers = {"last-event-id": decoder.last_event_id} if decoder.last_event_id else {}
        with contextlib.suppress(httpx.RemoteProtocolError):
            async with client.stream("GET", url, headers=headers) as response:
                response.raise_for_status()
                async for raw in response.aiter_raw():
                    seen.bytes += len(raw)
                    for event in decoder.feed(raw):
                        seen.add(event)
                    if seen.done(expected, until_end=until_end):
                        break
        if seen.connections > 1 and not seen.progress():
            raise RuntimeError(f"{url}: closed before its first event, at every attempt")
        decoder = SSEDecoder(last_event_id=decoder.last_event_id)
    elapsed = time.perf_counter() - started
    assert "".join(seen.text) == expected, "the viewer's text differs from the answer"
    return elapsed, seen


async def measure(
    client: httpx.AsyncClient,
    base: str,
    stream_id: str,
    expected: str,
    repeat: int,
    *,
    until_end: bool,
) -> None:
    state = "finished, to its end" if until_end else "running, to the text so far"
    for label, query in (("chunk by chunk", ""), ("snapshot=1", "?snapshot=1")):
        url = f"{base}/v1/streams/{stream_id}{query}"
        await view(client, url, expected, until_end=until_end)  # warm up
        samples = []
        for _ in range(repeat):
            seconds, seen = await view(client, url, expected, until_end=until_end)
            samples.append(seconds * 1000)
        p90 = sorted(samples)[int(0.9 * len(samples))]
        print(
            f"{state:28} {label:15} {seen.bytes:>10,} bytes {seen.frames:>6,} frames "
            f"{seen.connections:>2} connections  "
            f"median {statistics.median(samples):8.2f} ms  p90 {p90:8.2f} ms"
        )


async def follow(
    client: httpx.AsyncClient, url: str, tokens: int, reached: asyncio.Future[str]
) -> None:
    """The original request: stream the answer; ``reached`` is its id once ``tokens`` arrived."""
    body = {"model": "long", "messages": MESSAGES, "stream": True}
    count = 0
    decoder = SSEDecoder()
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for raw in response.aiter_raw():
            for event in decoder.feed(raw):
                if event.data.startswith("{") and '"content":"tok' in event.data:
                    count += 1
            if count >= tokens and not reached.done():
                reached.set_result(response.headers["x-tidings-stream-id"])


async def main(args: argparse.Namespace) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})
    tokens = [f"tok{index} " for index in range(args.tokens + 1)]
    async with FakeUpstream() as upstream:
        scenario = upstream.scenario("long", Scenario(tokens=tokens, pause_after=args.tokens))
        port = free_port()
        env = {
            **os.environ,
            "TIDINGS_LOG_LEVEL": "warning",
            "TIDINGS_LLM_BASE_URL": upstream.base_url,
            "TIDINGS_LLM_GRACE": "600",
            "TIDINGS_OUTBOX_MAX_BYTES": str(args.outbox_bytes),
        }
        command = [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--no-demo"]
        if len(cpus) > 1:
            command = ["taskset", "-c", str(cpus[0]), *command]
        server = await asyncio.create_subprocess_exec(*command, env=env)
        try:
            async with httpx.AsyncClient(timeout=120) as client:
                base = f"http://127.0.0.1:{port}"
                async with asyncio.timeout(30):
                    while True:
                        try:
                            if (await client.get(base + "/healthz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            await asyncio.sleep(0.1)
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
                print(f"{when} UTC, Python {platform.python_version()}, CPUs {cpus}")
                reached: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                task = asyncio.ensure_future(
                    follow(client, base + "/v1/chat/completions", args.tokens, reached)
                )
                async with asyncio.timeout(120):
                    stream_id = await reached
                so_far = "".join(tokens[: args.tokens])
                await measure(client, base, stream_id, so_far, args.repeat, until_end=False)
                scenario.release.set()
                async with asyncio.timeout(120):
                    await task
                await measure(client, base, stream_id, "".join(tokens), args.repeat, until_end=True)
        finally:
            server.terminate()
            async with asyncio.timeout(30):
                await server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--outbox-bytes", type=int, default=16 * 1024 * 1024)
    asyncio.run(main(parser.parse_args()))
