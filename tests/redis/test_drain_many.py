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
last event), over five channels, one or two each.

The publisher sends events to A and B in turn, with idempotency keys: 100 before
the signal; 100 while A drains, held open by a streamed LLM generation its upstream
pauses, so its clients are still there and get them from Redis (A refuses the ones
sent to it, 503, and they go to B); then, once the generation is released and A
closes its subscribers, 100 more while the clients come back to B and after A
has exited (those sent to A, gone, go to B too).

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
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.env import TIMEOUT, eventually, unavailable
from tests.support.fake_openai import FakeUpstream, Scenario
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
#: Long enough for the events published while A drains to reach its 500 clients.
DRAIN = TIMEOUT * 4
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


@contextlib.asynccontextmanager
async def held_generation(
    upstream: FakeUpstream, node: ServerProcess
) -> AsyncIterator[tuple[Scenario, asyncio.Task[str]]]:
    """A streamed generation on ``node`` that ``upstream`` holds after its first token
    until the scenario's ``release`` is set: until then the node's drain keeps its
    subscribers open. Yields the scenario and the task that reads the whole answer."""
    held = upstream.scenario("held", Scenario(tokens=["a ", "b "], pause_after=1))
    body = {"model": "held", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=node.url, timeout=DRAIN + STEP) as http:

        async def generate() -> str:
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                return "".join([text async for text in response.aiter_text()])

        task = asyncio.create_task(generate())
        try:
            call = await upstream.next_call(1, STEP)
            async with asyncio.timeout(STEP):
                await call.paused.wait()
            yield held, task
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def until_draining(probe: httpx.AsyncClient) -> None:
    """Wait until the node ``probe`` has a connection open to says ``/readyz`` 503 (the
    node takes no new connection once it drains)."""

    async def draining() -> bool:
        return (await probe.get("/readyz")).status_code == 503

    await eventually(draining, timeout=STEP)


async def test_sigterm_with_500_clients_exits_in_time_and_each_resumes_on_the_other_node(
    redis_url: str, redis_prefix: str
) -> None:
    room_for_files(FDS)
    args = ["--backend", "redis", "--redis-url", redis_url, "--redis-prefix", redis_prefix]
    expected = {"sse": SSE_CLIENTS, "ws": WS_CLIENTS}
    crowd = Crowd()
    async with FakeUpstream() as upstream:
        env = {
            "TIDINGS_DRAIN_TIMEOUT": str(DRAIN),
            "TIDINGS_SSE_RETRY": "0.05",
            "TIDINGS_MAX_CONNECTIONS_PER_CLIENT": str(2 * CLIENTS),
            "TIDINGS_LLM_BASE_URL": upstream.base_url,
        }
        with contextlib.ExitStack() as stack:
            a, b = ServerProcess(args=args, env=env), ServerProcess(args=args, env=env)
            for node in (a, b):
                stack.callback(node.close)
                node.start(timeout=STEP)
            assert a.process is not None
            async with (
                FaultProxy(a.port) as balancer,
                httpx.AsyncClient(timeout=TIMEOUT) as http,
                httpx.AsyncClient(base_url=a.url, timeout=TIMEOUT) as probe,
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
                    await crowd.caught_up(publisher.offsets(), timeout=STEP, what="events before")

                    async with held_generation(upstream, a) as (held, generation):
                        # A drains; its clients stay until the generation ends, and get
                        # what B publishes (A refuses every publish now) through Redis.
                        assert (await probe.get("/readyz")).status_code == 200
                        balancer.upstream = ("127.0.0.1", b.port)
                        a.process.send_signal(signal.SIGTERM)
                        signalled = time.monotonic()
                        await until_draining(probe)
                        before_drain = publisher.redirected
                        publisher.allow(DURING)
                        await publisher.until(DURING)
                        await crowd.caught_up(publisher.offsets(), timeout=STEP, what="draining")
                        moved_early = [tally.name for tally in crowd.tallies if tally.dropped]
                        refused_by_a = publisher.redirected - before_drain

                        # The generation ends: A closes every subscriber and exits; the
                        # clients come back through the balancer, to B, while it publishes.
                        held.release.set()
                        publisher.allow(TOTAL)
                        returncode = await asyncio.to_thread(a.process.wait, DRAIN + EXIT_SLACK)
                        took = time.monotonic() - signalled
                        assert returncode == 0, a.log()
                        answer = await generation
                    await publisher.until(TOTAL)
                    await crowd.caught_up(publisher.offsets(), timeout=STEP, what="all, on B")
                    back = time.monotonic() - signalled
                    await streams_on(http, b, expected)

    logger.info(
        "A exited %.2f s after SIGTERM; all 500 clients had every event on B after %.2f s; "
        "%d of %d SSE streams ended with their last chunk; %d publishes refused by A while "
        "it drained, %d redirected in all",
        took,
        back,
        sum(client.ended for client in sse),
        SSE_CLIENTS,
        refused_by_a,
        publisher.redirected,
    )
    assert took < DRAIN + EXIT_SLACK
    publisher.check()
    # While A drained, it kept its clients and refused the publishes sent to it.
    assert not moved_early, moved_early
    assert refused_by_a >= (DURING - BEFORE) // 2
    # The generation A waited for finished; it was not cut short.
    assert "[DONE]" in answer, answer
    assert "cancelled" not in answer, answer
    failures = crowd.failures(publisher.acked)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:10])
    # Every client lost its connection to A and connected again (the balancer's count).
    assert all(tally.dropped >= 1 for tally in crowd.tallies), crowd.summary()
    assert balancer.accepted >= 2 * CLIENTS
