"""SIGTERM a Redis-backed ``tidings serve`` while 500 SSE and WebSocket clients are
connected to it: it exits 0 within ``drain_timeout``, and every client reconnects to the
other node and ends with exactly the events of its channels, in order, each once.

Two nodes share one Redis. All clients come through the load balancer (a
:class:`~tests.support.proxy.FaultProxy`, a TCP relay, so every connection reaches a
node from 127.0.0.1); it points at node A, then, just before A gets SIGTERM, at node B.
The clients speak the protocols themselves and record every event as it comes:
250 SSE clients (:class:`~tests.support.resuming_sse.ResumingSSE`, which resume with
``Last-Event-ID`` after the ``retry:`` the drain spreads) and 250 WebSocket clients
(:class:`~tests.support.resuming.ResumingSocket`, which resubscribe ``since`` their
last event), over five channels, one or two each. The publisher sends events to A and
B in turn, before the signal, while A drains and its clients come back, and after A
has exited; one refused by A (503, draining) or sent to A once it is gone goes to B
with the same idempotency key.

Each node allows 1,000 connections per client address
(``TIDINGS_MAX_CONNECTIONS_PER_CLIENT``), where the default 500 would refuse the
balancer's 500 streams plus the publisher's requests: a TCP balancer sends no
``X-Forwarded-For`` for ``trusted_proxies`` to go by.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import time

import httpx
import pytest

from tests.support.env import TIMEOUT, eventually, unavailable
from tests.support.proxy import FaultProxy
from tests.support.publisher import Publisher
from tests.support.resuming import Crowd, ResumingSocket, channels_of, running
from tests.support.resuming_sse import ResumingSSE
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

logger = logging.getLogger(__name__)

CHANNELS = [f"many:{n}" for n in range(5)]
SSE_CLIENTS = WS_CLIENTS = 250
CLIENTS = SSE_CLIENTS + WS_CLIENTS
#: Events published before the SIGTERM, up to the end of the drain, and in all.
BEFORE, DURING, TOTAL = 100, 200, 300
DRAIN = TIMEOUT * 2
#: What the interpreter may take past the deadline to exit.
EXIT_SLACK = 3.0
#: The longest wait for one step (500 connections, a batch of events to reach them all):
#: generous, for a machine whose cores are all taken.
STEP = TIMEOUT * 8
#: File descriptors this process holds at most: per client its own socket and the
#: balancer's two, for the old connection and the new one, with room to spare.
FDS = 4 * 3 * CLIENTS


def room_for_files(count: int) -> None:
    """Raise this process's open-file limit to ``count`` if it is lower (the nodes,
    started later, inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= count:
        return
    if hard != resource.RLIM_INFINITY and hard < count:
        unavailable(f"{count} open files are needed and the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


async def streams_on(
    http: httpx.AsyncClient, node: ServerProcess, expected: dict[str, int]
) -> None:
    """Wait until ``node`` holds ``expected`` streams by transport (its ``/api/stats``)."""

    async def holds() -> bool:
        response = await http.get(f"{node.url}/api/stats")
        assert response.status_code == 200, response.text
        transports = response.json()["transports"]
        return {name: count for name, count in transports.items() if count} == expected

    await eventually(holds, timeout=STEP)


async def test_sigterm_with_500_clients_exits_in_time_and_each_resumes_on_the_other_node(
    redis_url: str, redis_prefix: str
) -> None:
    room_for_files(FDS)
    args = ["--backend", "redis", "--redis-url", redis_url, "--redis-prefix", redis_prefix]
    env = {
        "TIDINGS_DRAIN_TIMEOUT": str(DRAIN),
        "TIDINGS_SSE_RETRY": "0.05",
        "TIDINGS_MAX_CONNECTIONS_PER_CLIENT": str(2 * CLIENTS),
    }
    expected = {"sse": SSE_CLIENTS, "ws": WS_CLIENTS}
    with contextlib.ExitStack() as stack:
        a, b = ServerProcess(args=args, env=env), ServerProcess(args=args, env=env)
        for node in (a, b):
            stack.callback(node.close)
            node.start(timeout=STEP)
        assert a.process is not None
        crowd = Crowd()
        async with (
            FaultProxy(a.port) as balancer,
            httpx.AsyncClient(timeout=TIMEOUT) as http,
        ):
            sse = [
                ResumingSSE(balancer.url, crowd.tally(f"sse-{n}", channels_of(n, CHANNELS)))
                for n in range(SSE_CLIENTS)
            ]
            ws_url = balancer.url.replace("http://", "ws://") + "/ws"
            sockets = [
                ResumingSocket(ws_url, crowd.tally(f"ws-{n}", channels_of(n, CHANNELS)))
                for n in range(WS_CLIENTS)
            ]
            publisher = Publisher(http, [a.url, b.url], CHANNELS, total=TOTAL, step=STEP)
            clients = [client.run() for client in [*sse, *sockets]]
            async with running(publisher.run(), *clients):
                await crowd.until(crowd.all_connected, timeout=STEP, what="500 clients on A")
                await streams_on(http, a, expected)
                publisher.allow(BEFORE)
                await publisher.until(BEFORE)
                await crowd.caught_up(publisher.offsets(), timeout=STEP, what="the first events")

                balancer.upstream = ("127.0.0.1", b.port)
                a.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                publisher.allow(DURING)
                returncode = await asyncio.to_thread(a.process.wait, DRAIN + EXIT_SLACK)
                took = time.monotonic() - signalled
                while_draining = publisher.sent - BEFORE
                assert returncode == 0, a.log()
                await publisher.until(DURING)
                publisher.allow(TOTAL)
                await publisher.until(TOTAL)
                await crowd.caught_up(publisher.offsets(), timeout=STEP, what="every event, on B")
                back = time.monotonic() - signalled
                await streams_on(http, b, expected)

    logger.info(
        "A exited %.2f s after SIGTERM; all 500 clients had every event on B after %.2f s; "
        "%d of %d SSE streams ended with their last chunk; %d events published while A "
        "drained, %d publishes redirected",
        took,
        back,
        sum(client.ended for client in sse),
        SSE_CLIENTS,
        while_draining,
        publisher.redirected,
    )
    assert took < DRAIN + EXIT_SLACK
    publisher.check()
    # The publishes sent to A once it was gone, at least, went to B.
    assert publisher.redirected >= (TOTAL - DURING) // 2
    failures = crowd.failures(publisher.acked)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:10])
    # Every client lost its connection to A and connected again (the balancer's count).
    assert all(tally.dropped >= 1 for tally in crowd.tallies), crowd.summary()
    assert balancer.accepted >= 2 * CLIENTS
