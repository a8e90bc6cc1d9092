"""Two ``tidings serve`` nodes on one Redis: the clients of a node that drains at
SIGTERM reconnect to the other and miss nothing (compared by offsets)."""

from __future__ import annotations

import asyncio
import signal

from tests.support.env import TIMEOUT
from tests.support.proxy import FaultProxy
from tests.support.server import ServerProcess
from tests.support.socket_client import RecordingBackoff, http, take
from tidings.client import Message, Socket, SocketEvent, listen

BEFORE, AFTER = 20, 20


async def test_clients_of_a_draining_node_resume_on_the_other_without_a_gap(
    redis_url: str, redis_prefix: str
) -> None:
    args = ["--backend", "redis", "--redis-url", redis_url, "--redis-prefix", redis_prefix]
    env = {"TIDINGS_DRAIN_TIMEOUT": "5", "TIDINGS_SSE_RETRY": "0.05"}
    with (
        ServerProcess(args=args, env=env) as draining,
        ServerProcess(args=args, env=env) as other,
    ):
        # The load balancer: new connections go where it points.
        async with (
            FaultProxy(draining.port) as balancer,
            http(other.url) as client,
            Socket(balancer.url, backoff=RecordingBackoff(base=0.05, cap=0.2)) as socket,
            listen(balancer.url, ["rolling"], backoff=RecordingBackoff(base=0.05, cap=0.2)) as sse,
        ):
            subscription = await socket.subscribe("rolling")
            received: list[Message] = []

            async def collect(count: int) -> None:
                async with asyncio.timeout(TIMEOUT * 4):
                    async for item in sse:
                        assert isinstance(item, Message), item
                        received.append(item)
                        if len(received) == count:
                            return

            for n in range(BEFORE):
                await client.post("/api/publish", json={"channel": "rolling", "data": n})
            before = await take(subscription, BEFORE)
            await collect(BEFORE)
            balancer.upstream = ("127.0.0.1", other.port)
            assert draining.process is not None
            draining.process.send_signal(signal.SIGTERM)
            for n in range(BEFORE, BEFORE + AFTER):
                await client.post("/api/publish", json={"channel": "rolling", "data": n})
            after = await take(subscription, AFTER)
            await collect(BEFORE + AFTER)
            returncode = await asyncio.to_thread(draining.process.wait, TIMEOUT * 2)
        assert returncode == 0, draining.log()
    items = before + after
    assert all(isinstance(item, SocketEvent) for item in items)
    expected = list(range(1, BEFORE + AFTER + 1))
    assert [item.offset for item in items] == expected
    assert [item.data for item in items] == list(range(BEFORE + AFTER))
    assert [item.offset for item in received] == expected
