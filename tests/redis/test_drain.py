"""``tidings serve`` on Redis at SIGTERM: the clients of a node that drains reconnect to
the other node and miss nothing (compared by offsets); during a Redis outage the node
still drains and exits 0 within ``drain_timeout``, and a second SIGTERM ends it at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.env import TIMEOUT, eventually
from tests.support.fake_openai import FakeUpstream, Scenario
from tests.support.proxy import FaultProxy
from tests.support.redis_server import RedisServer, own_redis_server
from tests.support.server import ServerProcess
from tests.support.socket_client import RecordingBackoff, http, take
from tests.support.sse import SSEReader, open_sse
from tests.support.ws import Peer
from tidings.client import Message, Socket, SocketEvent, listen
from tidings.wire.codes import CloseCode

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


#: Clients of each transport connected when the signal comes during an outage.
OUTAGE_CLIENTS = 10
OUTAGE_DRAIN = 4.0
#: What the interpreter may take past the deadline to exit.
EXIT_SLACK = 3.0


@contextlib.asynccontextmanager
async def node_on_own_redis(redis: RedisServer, drain: float) -> AsyncIterator[Node]:
    """A ``tidings serve`` on ``redis`` with a fake LLM upstream, an SSE stream, a
    WebSocket and a streamed generation held by the upstream after one token."""
    async with FakeUpstream() as upstream:
        upstream.scenario("held", Scenario(tokens=["a ", "b "], pause_after=1))
        env = {
            "TIDINGS_BACKEND": "redis",
            "TIDINGS_REDIS_URL": redis.url,
            "TIDINGS_REDIS_PREFIX": f"drain-{uuid.uuid4().hex[:8]}:",
            "TIDINGS_LLM_BASE_URL": upstream.base_url,
            "TIDINGS_DRAIN_TIMEOUT": str(drain),
        }
        with ServerProcess(env=env) as server:
            async with (
                httpx.AsyncClient(base_url=server.url, timeout=drain + TIMEOUT * 2) as http,
                contextlib.AsyncExitStack() as stack,
            ):
                streams = [
                    await stack.enter_async_context(open_sse(http, "/sse/outage"))
                    for _ in range(OUTAGE_CLIENTS)
                ]
                sockets: list[ClientConnection] = []
                for _ in range(OUTAGE_CLIENTS):
                    ws = await stack.enter_async_context(
                        connect(
                            server.url.replace("http://", "ws://") + "/ws",
                            subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
                        )
                    )
                    assert (await Peer(ws).request("subscribe", channel="outage"))["ok"] is True
                    sockets.append(ws)
                body = {
                    "model": "held",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                }
                response = await stack.enter_async_context(
                    http.stream("POST", "/v1/chat/completions", json=body)
                )
                assert response.status_code == 200
                generation = SSEReader(response)
                await generation.until(b'"a "')  # relayed: nothing is on its way to Redis
                yield Node(server, http, streams, sockets, generation)


@dataclass
class Node:
    server: ServerProcess
    http: httpx.AsyncClient
    streams: list[SSEReader]
    sockets: list[ClientConnection]
    generation: SSEReader

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.server.process is not None
        return self.server.process

    async def exit_status(self, within: float) -> tuple[int, float]:
        """Wait for the process to exit; its status and how long it took."""
        started = time.monotonic()
        returncode = await asyncio.to_thread(self.process.wait, within)
        return returncode, time.monotonic() - started


def break_redis(redis: RedisServer, outage: str) -> None:
    assert redis.process is not None
    if outage == "paused":
        os.kill(redis.process.pid, signal.SIGSTOP)  # no answer at all; resumed by redis.kill()
    else:
        redis.kill()  # refused at once


@pytest.mark.parametrize("outage", ["paused", "killed"])
async def test_sigterm_during_a_redis_outage_drains_and_exits_0_within_the_deadline(
    outage: str,
) -> None:
    with own_redis_server() as redis:
        async with node_on_own_redis(redis, OUTAGE_DRAIN) as node:
            break_redis(redis, outage)
            node.process.send_signal(signal.SIGTERM)
            exiting = asyncio.ensure_future(node.exit_status(OUTAGE_DRAIN + EXIT_SLACK))
            async with asyncio.timeout(OUTAGE_DRAIN + EXIT_SLACK):
                # Each stream ends cleanly (its last chunk), with a retry: for its client.
                tails = [await reader.until_end() for reader in node.streams]
                codes = [await close_code(ws) for ws in node.sockets]
                generation = await node.generation.until_end()
            returncode, took = await exiting
            log = node.server.log()
        assert returncode == 0, log
        assert took < OUTAGE_DRAIN + EXIT_SLACK
        last_blocks = [tail.rstrip(b"\n").rsplit(b"\n\n", 1)[-1] for tail in tails]
        assert all(block.startswith(b"retry: ") for block in last_blocks), last_blocks
        assert set(codes) == {CloseCode.SHUTDOWN}, codes
        # Held by its upstream, the generation is cancelled at the deadline and says so,
        # though its end event cannot reach Redis.
        assert b'"code":"cancelled"' in generation, log
        assert b"shutdown" in generation, generation[-500:]


async def test_a_second_sigterm_during_a_redis_outage_exits_at_once() -> None:
    with own_redis_server() as redis:
        async with node_on_own_redis(redis, drain=600) as node:
            break_redis(redis, "paused")
            node.process.send_signal(signal.SIGTERM)

            async def draining() -> bool:
                metrics = (await node.http.get("/metrics")).text
                return "tidings_draining 1.0" in metrics

            await eventually(draining)
            node.process.send_signal(signal.SIGTERM)
            returncode, _ = await node.exit_status(TIMEOUT * 2)
            log = node.server.log()
        assert returncode == 128 + signal.SIGTERM, log


async def close_code(ws: ClientConnection) -> int | None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.recv()
    return ws.close_code
