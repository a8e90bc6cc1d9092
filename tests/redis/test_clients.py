"""tidings.client on `tidings serve --backend redis`: after kill -9 and a restart,
both clients resume exactly (Redis kept the history and the epoch)."""

from __future__ import annotations

import asyncio

from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess
from tests.support.socket_client import RecordingBackoff, States, history, http, no_leaks, take
from tidings.client import ConnectionState, Message, Reset, Socket, SocketEvent, listen


async def test_a_killed_node_resumes_exactly_with_redis(redis_url: str, redis_prefix: str) -> None:
    args = ["--backend", "redis", "--redis-url", redis_url, "--redis-prefix", redis_prefix]
    node = ServerProcess(args=args).start()
    try:
        with ServerProcess(args=args) as other:
            async with http(other.url) as client, no_leaks():
                states = States()
                backoff = RecordingBackoff(base=0.05, cap=0.2)
                async with Socket(node.url, backoff=backoff, on_state=states) as socket:
                    orders = await socket.subscribe("orders")
                    sent = [await socket.publish("orders", n) for n in range(3)]
                    before = await take(orders, 3)

                    node.kill()
                    await states.reach(ConnectionState.RECONNECTING)
                    offline = asyncio.create_task(socket.publish("orders", "while down"))
                    for n in (3, 4):  # published through the other node meanwhile
                        await client.post("/api/publish", json={"channel": "orders", "data": n})
                    await asyncio.to_thread(node.start)
                    landed = await asyncio.wait_for(offline, TIMEOUT * 2)
                    after = await take(orders, 3)
                assert await history(client, "orders") == [0, 1, 2, 3, 4, "while down"]
    finally:
        node.close()
    items = before + after
    assert all(isinstance(item, SocketEvent) for item in items), "no reset: history kept it all"
    assert [item.data for item in items] == [0, 1, 2, 3, 4, "while down"]
    assert [item.offset for item in items] == [1, 2, 3, 4, 5, 6]
    assert {item.epoch for item in items} == {sent[0].epoch}
    assert landed == items[-1].position
    assert all(0 <= delay <= upper <= 0.2 for delay, upper in backoff.delays)


async def test_the_sse_client_resumes_exactly_after_kill_with_redis(
    redis_url: str, redis_prefix: str
) -> None:
    args = ["--backend", "redis", "--redis-url", redis_url, "--redis-prefix", redis_prefix]
    node = ServerProcess(args=args, env={"TIDINGS_SSE_RETRY": "0.05"}).start()
    backoff = RecordingBackoff(base=0.05, cap=0.2)
    states: list[ConnectionState] = []
    received: list[Message | Reset] = []
    try:
        with ServerProcess(args=args) as other:
            async with (
                http(other.url) as client,
                no_leaks(),
                listen(node.url, ["orders"], backoff=backoff, on_state=states.append) as events,
            ):
                got = {n: asyncio.Event() for n in (3, 8)}

                async def collect() -> None:
                    async for item in events:  # keeps reading; the client reconnects
                        received.append(item)
                        if len(received) in got:
                            got[len(received)].set()
                        if len(received) == 8:
                            return

                collector = asyncio.create_task(collect())
                for n in range(3):
                    await client.post("/api/publish", json={"channel": "orders", "data": n})
                await asyncio.wait_for(got[3].wait(), TIMEOUT)
                node.kill()
                for n in range(3, 6):  # published through the other node while it is down
                    await client.post("/api/publish", json={"channel": "orders", "data": n})
                await asyncio.to_thread(node.start)
                for n in range(6, 8):
                    await client.post("/api/publish", json={"channel": "orders", "data": n})
                await asyncio.wait_for(collector, TIMEOUT * 2)
    finally:
        node.close()
    assert all(isinstance(item, Message) for item in received), "no reset: Redis kept it all"
    assert [item.json() for item in received] == list(range(8))  # type: ignore[union-attr]
    assert [item.offset for item in received] == list(range(1, 9))  # type: ignore[union-attr]
    assert len({item.position.epoch for item in received}) == 1  # type: ignore[union-attr]
    assert ConnectionState.RECONNECTING in states
    assert all(0 <= delay <= upper <= 0.2 for delay, upper in backoff.delays)
