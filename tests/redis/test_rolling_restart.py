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
from tests.support.publisher import Publisher
from tests.support.resuming import (
    Crowd,
    ResumingSocket,
    channels_of,
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


@contextlib.asynccontextmanager
async def clients(crowd: Crowd, proxies: list[FaultProxy]) -> AsyncIterator[list[Any]]:
    """Open every client through the proxies in turn; yield the coroutines that record."""
    followers: list[Any] = []
    async with contextlib.AsyncExitStack() as stack:
        for n in range(SSE_CLIENTS):
            tally = crowd.tally(f"sse-{n}", channels_of(n, CHANNELS))
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
            followers.append(
                ResumingSocket(url, crowd.tally(f"ws-{n}", channels_of(n, CHANNELS))).run()
            )
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
            publisher = Publisher(http, [a.url, b.url], CHANNELS, total=TOTAL, step=STEP)
            async with running(publisher.run(), *followers):
                await crowd.until(crowd.all_connected, timeout=STEP, what="connections")
                publisher.allow(FIRST)
                await publisher.until(FIRST)
                await crowd.caught_up(
                    publisher.offsets(), timeout=STEP, what="the events before the restarts"
                )

                to_a.upstream = address_b
                took_a = await restart(a, publisher, STEPS[0])
                await crowd.caught_up(
                    publisher.offsets(), timeout=STEP, what="resuming after A's restart"
                )

                to_a.upstream = to_b.upstream = address_a
                took_b = await restart(b, publisher, STEPS[1])
                to_b.upstream = address_b
                await crowd.caught_up(
                    publisher.offsets(), timeout=STEP, what="resuming after B's restart"
                )

                publisher.allow(TOTAL)
                await publisher.until(TOTAL)
                await crowd.caught_up(publisher.offsets(), timeout=STEP, what="every event")

    assert took_a < DRAIN + EXIT_SLACK
    assert took_b < DRAIN + EXIT_SLACK
    publisher.check()
    # At least the publishes sent to a node that was down went to the other one.
    assert publisher.redirected >= sum(down - draining for draining, down in STEPS) // 2
    failures = crowd.failures(publisher.acked)
    assert not failures, "\n".join(failures[:10])
    # Every client was moved: none kept one connection through both restarts.
    assert all(tally.dropped >= 1 for tally in crowd.tallies), crowd.summary()
