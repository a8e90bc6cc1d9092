"""The load generator behind ``tidings bench``: N subscribers, M publishes, exact counts.

Every published message carries its sequence number and the publish time, so
each subscriber can count what arrived, what is missing, what came twice or
out of order, and how long each message took. Runs are bounded in count and
time; the CLI draws the progress and the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httpx

from tidings.wire.sse import SSEDecoder

__all__ = ["BenchConfig", "BenchProgress", "BenchResult", "run_bench"]

logger = logging.getLogger(__name__)

MAX_SUBSCRIBERS = 20000
MAX_MESSAGES = 10_000_000
#: Subscribers whose every delivery is timed (the others are only counted).
LATENCY_SAMPLES = 16


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to measure.

    Args:
        url: The Tidings server (``http://host:port``).
        transport: ``sse`` or ``ws``.
        subscribers: Connections that subscribe to the channel.
        messages: Messages to publish.
        rate: Messages per second, or ``None`` for as fast as possible.
        size: Bytes of each message's data (at least what the stamp needs).
        publishers: Concurrent HTTP publishers.
        time_limit: Seconds after which the run stops, whatever is left.
        channel: The channel; a fresh ``bench:…`` one by default.
    """

    url: str = "http://127.0.0.1:8000"
    transport: str = "sse"
    subscribers: int = 100
    messages: int = 1000
    rate: float | None = None
    size: int = 128
    publishers: int = 4
    time_limit: float = 60.0
    channel: str = field(default_factory=lambda: f"bench:{secrets.token_hex(4)}")

    def __post_init__(self) -> None:
        if self.transport not in ("sse", "ws"):
            raise ValueError("transport must be 'sse' or 'ws'")
        if not 1 <= self.subscribers <= MAX_SUBSCRIBERS:
            raise ValueError(f"subscribers must be 1-{MAX_SUBSCRIBERS}")
        if not 1 <= self.messages <= MAX_MESSAGES:
            raise ValueError(f"messages must be 1-{MAX_MESSAGES}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be > 0 messages per second")
        if not 1 <= self.publishers <= 256:
            raise ValueError("publishers must be 1-256")
        if self.time_limit <= 0:
            raise ValueError("time_limit must be > 0 seconds")
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError("url must be http:// or https://")


@dataclass(slots=True)
class BenchProgress:
    """A snapshot for the progress display."""

    connected: int = 0
    published: int = 0
    delivered: int = 0
    expected: int = 0
    phase: str = "connecting"


@dataclass(frozen=True, slots=True)
class BenchResult:
    """The summary of a run (all counts exact; latencies in milliseconds)."""

    transport: str
    subscribers: int
    connected: int
    messages: int
    published: int
    expected: int
    delivered: int
    missing: int
    duplicates: int
    out_of_order: int | None  # from offsets; None when the transport shows none
    seconds: float
    deliveries_per_second: float
    publishes_per_second: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    errors: list[str]
    timed_out: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Tally:
    """What one subscriber saw: a bitmap of sequence numbers, and its last offset."""

    __slots__ = ("duplicates", "last_offset", "out_of_order", "sampled", "seen", "unique")

    def __init__(self, messages: int, *, sampled: bool) -> None:
        self.seen = bytearray((messages + 7) // 8)
        self.unique = 0
        self.duplicates = 0
        self.last_offset = 0
        self.out_of_order = 0
        self.sampled = sampled

    def record(self, sequence: int, offset: int | None) -> None:
        index, bit = divmod(sequence, 8)
        if index >= len(self.seen):
            return  # not a sequence number of this run
        if self.seen[index] & (1 << bit):
            self.duplicates += 1
            return
        self.seen[index] |= 1 << bit
        self.unique += 1
        if offset is not None:
            if offset <= self.last_offset:
                self.out_of_order += 1
            self.last_offset = offset


class _Run:
    def __init__(self, config: BenchConfig, progress: BenchProgress) -> None:
        self.config = config
        self.progress = progress
        self.tallies: list[_Tally] = []
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        self.started = 0.0
        self.last_delivery = 0.0

    def deliver(self, tally: _Tally, data: bytes | str, offset: int | None = None) -> None:
        text = data if isinstance(data, str) else data.decode()
        sequence_text, _, rest = text.partition(" ")
        stamp_text, _, _ = rest.partition(" ")
        try:
            sequence, stamp = int(sequence_text), int(stamp_text)
        except ValueError:
            return  # not one of ours
        tally.record(sequence, offset)
        if tally.sampled:
            self.latencies.append((time.time_ns() - stamp) / 1e6)
        self.progress.delivered += 1
        self.last_delivery = time.monotonic()
        # Only once everything is published can "caught up" mean "done".
        if self.progress.phase == "draining" and self.progress.delivered >= self.progress.expected:
            self.done.set()


class _ChunkedDecoder:
    """Incremental HTTP/1.1 chunked transfer decoding (RFC 9112 section 7.1)."""

    __slots__ = ("buffer", "need", "state")

    def __init__(self) -> None:
        self.buffer = b""
        self.state = "size"
        self.need = 0

    def feed(self, data: bytes) -> bytes:
        buffer = self.buffer + data if self.buffer else data
        out = []
        position = 0
        while True:
            if self.state == "size":
                end = buffer.find(b"\r\n", position)
                if end < 0:
                    break
                self.need = int(buffer[position:end].split(b";", 1)[0], 16)
                position = end + 2
                if not self.need:
                    self.state = "done"
                    break
                self.state = "data"
            if self.state == "data":
                available = len(buffer) - position
                if available <= 0:
                    break
                take = min(available, self.need)
                out.append(buffer[position : position + take])
                position += take
                self.need -= take
                if self.need:
                    break
                self.state = "crlf"
            if self.state == "crlf":
                if len(buffer) - position < 2:
                    break
                position += 2
                self.state = "size"
            if self.state == "done":
                break
        self.buffer = buffer[position:]
        return b"".join(out)


class _SSEProtocol(asyncio.Protocol):
    """One lean SSE subscriber: HTTP/1.1 by hand, chunked decoding, SSEDecoder."""

    def __init__(self, run: _Run, tally: _Tally, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.run = run
        self.tally = tally
        self.request = request
        self.head = b""
        self.chunked: _ChunkedDecoder | None = None
        self.decoder = SSEDecoder()
        self.connected: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.chunked is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            if status.split(" ")[1:2] != ["200"]:
                self._fail(RuntimeError(f"GET /sse answered {status}"))
                return
            self.chunked = _ChunkedDecoder()
            if not self.connected.done():
                self.connected.set_result(None)
        for event in self.decoder.feed(self.chunked.feed(data)):
            offset = event.id.rpartition(":")[2]
            self.run.deliver(
                self.tally,
                event.data,
                int(offset) if offset.isascii() and offset.isdigit() else None,
            )

    def _fail(self, exc: BaseException) -> None:
        for future in (self.connected, self.closed):
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("the server closed the stream"))


async def _sse_subscriber(run: _Run, tally: _Tally, connected: asyncio.Event) -> None:
    parts = urlsplit(run.config.url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    request = (
        f"GET /sse?channel={run.config.channel} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(
        lambda: _SSEProtocol(run, tally, request),
        host,
        port,
        ssl=True if parts.scheme == "https" else None,
    )
    try:
        await protocol.connected
        connected.set()
        await protocol.closed
    finally:
        transport.close()


async def _ws_subscriber(run: _Run, tally: _Tally, connected: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    base = run.config.url.rstrip("/").replace("http", "ws", 1)
    async with connect(f"{base}/ws?channel={run.config.channel}", max_size=None) as socket:
        connected.set()
        async for message in socket:
            run.deliver(tally, message)


async def _subscribe_all(
    run: _Run, client: httpx.AsyncClient, tasks: list[asyncio.Task[None]]
) -> None:
    """Open every subscriber (200 handshakes in flight at most); return when each
    has connected or failed."""
    config = run.config
    gate = asyncio.Semaphore(200)
    counters: list[asyncio.Task[None]] = []
    for index in range(config.subscribers):
        tally = _Tally(config.messages, sampled=index < LATENCY_SAMPLES)
        run.tallies.append(tally)
        connected = asyncio.Event()
        await gate.acquire()
        if config.transport == "sse":
            coroutine = _sse_subscriber(run, tally, connected)
        else:
            coroutine = _ws_subscriber(run, tally, connected)
        task = asyncio.create_task(_guard(run, coroutine))
        tasks.append(task)

        async def count(event: asyncio.Event = connected, task: asyncio.Task[None] = task) -> None:
            waiter = asyncio.ensure_future(event.wait())
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            gate.release()
            if event.is_set():
                run.progress.connected += 1

        counters.append(asyncio.create_task(count()))
    await asyncio.gather(*counters)


async def _guard(run: _Run, coroutine: Any) -> None:
    try:
        await coroutine
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if len(run.errors) < 20:
            run.errors.append(f"subscriber: {exc!r}")


async def _wait_subscribed(run: _Run, client: httpx.AsyncClient, deadline: float) -> None:
    """Wait until the server counts every subscriber on the channel."""
    config = run.config
    while time.monotonic() < deadline:
        response = await client.get(f"{config.url.rstrip('/')}/api/channels")
        counts = {entry["channel"]: entry["subscribers"] for entry in response.json()["channels"]}
        if counts.get(config.channel, 0) >= run.progress.connected:
            return
        await asyncio.sleep(0.1)


class _Publisher(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection that sends one publish at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    async def post(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.answer

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].split(b"\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((int(head[0].split(b" ")[1]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc or ConnectionError("the server closed the connection"))


async def _publish_all(run: _Run, deadline: float) -> None:
    config = run.config
    parts = urlsplit(config.url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    prefix = (
        f"POST /api/publish HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()
    # Text published as JSON (a text/plain publish needs a credential header).
    # Channel names and the text (digits, spaces, "x") need no JSON escaping.
    document = b'{"channel":"%s","text":"%%b"}' % config.channel.encode()
    sequences = iter(range(config.messages))
    interval = 1 / config.rate if config.rate else 0.0
    start = time.monotonic()
    loop = asyncio.get_running_loop()

    async def publisher() -> None:
        transport, protocol = await loop.create_connection(
            _Publisher, host, port, ssl=True if parts.scheme == "https" else None
        )
        try:
            for sequence in sequences:
                if time.monotonic() >= deadline:
                    return
                if interval:
                    delay = start + sequence * interval - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                head = b"%d %d " % (sequence, time.time_ns())
                body = document % (head + b"x" * max(0, config.size - len(head)))
                status, answer = await protocol.post(prefix + b"%d\r\n\r\n%b" % (len(body), body))
                if status != 200:
                    if len(run.errors) < 20:
                        run.errors.append(f"publish answered {status}: {answer[:200]!r}")
                    continue
                run.progress.published += 1
                run.progress.expected = run.progress.published * run.progress.connected
        finally:
            transport.close()

    await asyncio.gather(*(publisher() for _ in range(config.publishers)))


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run_bench(
    config: BenchConfig, on_progress: Callable[[BenchProgress], None] | None = None
) -> BenchResult:
    """Run one bounded measurement against a live server."""
    progress = BenchProgress()
    run = _Run(config, progress)
    deadline = time.monotonic() + config.time_limit
    limits = httpx.Limits(max_connections=config.subscribers + config.publishers + 2)
    timeout = httpx.Timeout(30.0, read=None)
    tasks: list[asyncio.Task[None]] = []
    ticker: asyncio.Task[None] | None = None
    timed_out = False
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        try:
            if on_progress is not None:

                async def tick() -> None:
                    while True:
                        on_progress(progress)
                        await asyncio.sleep(0.2)

                ticker = asyncio.create_task(tick())
            await _subscribe_all(run, client, tasks)
            await _wait_subscribed(run, client, deadline)
            progress.phase = "publishing"
            run.started = time.monotonic()
            await _publish_all(run, deadline)
            progress.phase = "draining"
            progress.expected = progress.published * progress.connected
            if progress.delivered < progress.expected:
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    await asyncio.wait_for(run.done.wait(), remaining)
                except TimeoutError:
                    timed_out = True
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                progress.phase = "done"
                on_progress(progress)  # type: ignore[misc]
    elapsed = max(1e-9, (run.last_delivery or time.monotonic()) - (run.started or time.monotonic()))
    unique = sum(tally.unique for tally in run.tallies)
    return BenchResult(
        transport=config.transport,
        subscribers=config.subscribers,
        connected=progress.connected,
        messages=config.messages,
        published=progress.published,
        expected=progress.expected,
        delivered=progress.delivered,
        missing=max(0, progress.expected - unique),
        duplicates=sum(tally.duplicates for tally in run.tallies),
        out_of_order=sum(tally.out_of_order for tally in run.tallies)
        if config.transport == "sse"
        else None,
        seconds=round(elapsed, 3),
        deliveries_per_second=round(progress.delivered / elapsed, 1),
        publishes_per_second=round(progress.published / elapsed, 1),
        latency_p50_ms=round(_percentile(run.latencies, 0.50), 3),
        latency_p99_ms=round(_percentile(run.latencies, 0.99), 3),
        latency_max_ms=round(max(run.latencies, default=0.0), 3),
        errors=run.errors,
        timed_out=timed_out or time.monotonic() > deadline,
    )
