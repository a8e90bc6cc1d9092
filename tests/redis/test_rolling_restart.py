"""A rolling restart of two Redis-backed ``tidings serve`` nodes while 1,000 events are
published: every client ends with every event of its channels exactly once, in order.

Each node has a proxy in front of it (the load balancer of a real deployment).
Before a node gets SIGTERM its proxy is pointed at the other node, so the
clients it closes while draining come back there and resume from their
cursor. The node exits 0, starts again on the same port, and the next one
goes the same way. The publisher sends event ``n`` to alternate nodes with
the idempotency key ``event-n``; a node that is draining (503) or down sends
the same event, with the same key, to the other one.

Every step waits on what it needs (the publisher's acknowledgements, the
clients' counts, a process's exit), never on the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.env import TIMEOUT
from tests.support.proxy import FaultProxy
from tests.support.resuming import (
    Crowd,
    ResumingSocket,
    Tally,
    connection_state,
    follow_socket,
    follow_sse,
    running,
)
from tests.support.server import ServerProcess
from tidings.client import Backoff, Socket, listen

pytestmark = pytest.mark.slow

TOTAL = 1000
CHANNELS = [f"roll:{n}" for n in range(4)]
#: Clients of each kind; SSE and raw WebSocket clients alternate between one and two channels.
SSE_CLIENTS = WS_CLIENTS = 20
SOCKET_CLIENTS = 4
DRAIN = TIMEOUT * 2
#: What the interpreter may take past the deadline to exit.
EXIT_SLACK = 3.0
#: The longest wait for one step (a node to start, a batch to be published or received):
#: generous, for a machine whose cores are all taken.
STEP = TIMEOUT * 8
#: Events published before the first restart, and the publisher's allowance at each step
#: of a node's restart: from its SIGTERM (while it drains), then while it is down.
FIRST = 150
STEPS = ((400, 500), (750, 850))


def channels_of(n: int) -> list[str]:
    first = CHANNELS[n % len(CHANNELS)]
    return [first] if n % 2 else [first, CHANNELS[(n + 1) % len(CHANNELS)]]


class Publisher:
    """Publishes event ``n`` (data ``n``) to ``CHANNELS[n % 4]``, one at a time, up to
    what :meth:`allow` allows; see the module's docstring for where it sends them."""

    def __init__(self, http: httpx.AsyncClient, nodes: list[str]) -> None:
        self.http = http
        self.nodes = nodes
        #: Per channel, the acknowledged ``(offset, data)`` in publish order.
        self.acked: dict[str, list[tuple[int, int]]] = {channel: [] for channel in CHANNELS}
        self.sent = 0
        #: Publishes sent again elsewhere: refused by a draining node, or a node down.
        self.redirected = 0
        self._allowed = 0
        self._changed = asyncio.Event()

    def allow(self, count: int) -> None:
        self._allowed = count
        self._changed.set()

    def offsets(self) -> dict[str, int]:
        """The last acknowledged offset of each channel."""
        return {channel: acked[-1][0] for channel, acked in self.acked.items() if acked}

    async def until(self, count: int) -> None:
        async with asyncio.timeout(STEP):
            while self.sent < count:
                self._changed.clear()
                await self._changed.wait()

    async def run(self) -> None:
        while self.sent < TOTAL:
            while self.sent >= self._allowed:
                self._changed.clear()
                await self._changed.wait()
            await self._publish(self.sent)
            self.sent += 1
            self._changed.set()

    async def _publish(self, n: int) -> None:
        channel = CHANNELS[n % len(CHANNELS)]
        for attempt in range(1000):
            node = self.nodes[(n + attempt) % len(self.nodes)]
            try:
                response = await self.http.post(
                    f"{node}/api/publish",
                    json={"channel": channel, "data": n},
                    headers={"idempotency-key": f"event-{n}"},
                )
            except httpx.TransportError:
                self.redirected += 1
                continue
            if response.status_code == 503:
                self.redirected += 1
                continue
            assert response.status_code == 200, response.text
            self.acked[channel].append((response.json()["offset"], n))
            return
        raise AssertionError(f"event {n} was never published")


@contextlib.asynccontextmanager
async def clients(crowd: Crowd, proxies: list[FaultProxy]) -> AsyncIterator[list[Any]]:
    """Open every client through the proxies in turn; yield the coroutines that record."""
    followers: list[Any] = []
    async with contextlib.AsyncExitStack() as stack:
        for n in range(SSE_CLIENTS):
            tally = crowd.tally(f"sse-{n}", channels_of(n))
            listener = await stack.enter_async_context(
                listen(
                    proxies[n % 2].url,
                    tally.channels,
                    backoff=Backoff(base=0.05, cap=0.2),
                    on_state=connection_state(tally),
                )
            )
            followers.append(follow_sse(listener, tally))
        for n in range(WS_CLIENTS):
            url = proxies[n % 2].url.replace("http://", "ws://") + "/ws"
            followers.append(ResumingSocket(url, crowd.tally(f"ws-{n}", channels_of(n))).run())
        for n in range(SOCKET_CLIENTS):
            tally = crowd.tally(f"socket-{n}", [CHANNELS[n]])
            socket = await stack.enter_async_context(
                Socket(
                    proxies[n % 2].url,
                    backoff=Backoff(base=0.05, cap=0.2),
                    on_state=connection_state(tally),
                )
            )
            followers.append(follow_socket(await socket.subscribe(CHANNELS[n]), tally))
        yield followers


async def caught_up(crowd: Crowd, publisher: Publisher, what: str) -> None:
    """Wait until every client is connected and has every event acknowledged so far."""
    offsets = publisher.offsets()
    await crowd.until(
        lambda: crowd.all_connected() and crowd.all_have(offsets),
        timeout=STEP,
        what=what,
    )


async def restart(node: ServerProcess, publisher: Publisher, steps: tuple[int, int]) -> float:
    """SIGTERM ``node`` while events are published, check it drains and exits 0, publish
    more while it is down, start it again on its port; return how long it took to exit."""
    while_draining, while_down = steps
    assert node.process is not None
    node.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    publisher.allow(while_draining)
    returncode = await asyncio.to_thread(node.process.wait, DRAIN + EXIT_SLACK)
    took = time.monotonic() - started
    assert returncode == 0, node.log()
    await publisher.until(while_draining)
    publisher.allow(while_down)
    await publisher.until(while_down)  # half of them sent to the node that is down first
    await asyncio.to_thread(node.start, timeout=STEP)
    return took


async def test_a_rolling_restart_loses_and_repeats_no_event(
    redis_url: str, redis_prefix: str
) -> None:
    args = ["--backend", "redis", "--redis-url", redis_url, "--redis-prefix", redis_prefix]
    env = {"TIDINGS_DRAIN_TIMEOUT": str(DRAIN), "TIDINGS_SSE_RETRY": "0.05"}
    with contextlib.ExitStack() as stack:
        a, b = ServerProcess(args=args, env=env), ServerProcess(args=args, env=env)
        for node in (a, b):
            stack.callback(node.close)
            node.start(timeout=STEP)
        address_a, address_b = ("127.0.0.1", a.port), ("127.0.0.1", b.port)
        crowd = Crowd()
        async with (
            FaultProxy(a.port) as to_a,
            FaultProxy(b.port) as to_b,
            httpx.AsyncClient(timeout=TIMEOUT) as http,
            clients(crowd, [to_a, to_b]) as followers,
        ):
            publisher = Publisher(http, [a.url, b.url])
            async with running(publisher.run(), *followers):
                await crowd.until(crowd.all_connected, timeout=STEP, what="connections")
                publisher.allow(FIRST)
                await publisher.until(FIRST)
                await caught_up(crowd, publisher, "the events before the restarts")

                to_a.upstream = address_b
                took_a = await restart(a, publisher, STEPS[0])
                await caught_up(crowd, publisher, "resuming after A's restart")

                to_a.upstream = to_b.upstream = address_a
                took_b = await restart(b, publisher, STEPS[1])
                to_b.upstream = address_b
                await caught_up(crowd, publisher, "resuming after B's restart")

                publisher.allow(TOTAL)
                await publisher.until(TOTAL)
                await caught_up(crowd, publisher, "every event")

    assert took_a < DRAIN + EXIT_SLACK
    assert took_b < DRAIN + EXIT_SLACK
    # Every event was published exactly once, the retried ones included.
    for channel, acked in publisher.acked.items():
        assert [offset for offset, _ in acked] == list(range(1, len(acked) + 1)), channel
    assert sum(len(acked) for acked in publisher.acked.values()) == TOTAL
    # At least the publishes sent to a node that was down went to the other one.
    assert publisher.redirected >= sum(down - draining for draining, down in STEPS) // 2
    failures = [
        f"{tally.name} {channel}: {describe(tally, channel, publisher.acked[channel])}"
        for tally in crowd.tallies
        for channel in tally.channels
        if tally.problems or tally.events[channel] != publisher.acked[channel]
    ]
    assert not failures, "\n".join(failures[:10])
    # Every client was moved: none kept one connection through both restarts.
    assert all(tally.dropped >= 1 for tally in crowd.tallies), crowd.summary()


def describe(tally: Tally, channel: str, expected: list[tuple[int, int]]) -> str:
    """What is wrong with one client's events of ``channel``: problems, gaps, repeats."""
    offsets = [offset for offset, _ in tally.events[channel]]
    seen = set(offsets)
    missing = [offset for offset, _ in expected if offset not in seen]
    repeated = sorted({offset for offset in offsets if offsets.count(offset) > 1})
    return f"problems={tally.problems[:3]} missing={missing[:20]} repeated={repeated[:20]}"
