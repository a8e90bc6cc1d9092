"""``tidings serve`` at SIGTERM: drain within ``drain_timeout``, then exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.env import TIMEOUT
from tests.support.fake_openai import FakeUpstream, Scenario
from tests.support.server import ServerProcess

#: Clients of each transport connected when the signal comes.
CLIENTS = 120
DRAIN = 8.0
#: What the interpreter may take past the deadline to exit.
EXIT_SLACK = 3.0


async def open_sse(port: int, channel: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /sse/{channel} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    async with asyncio.timeout(TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        await reader.readuntil(b"\n\n\r\n")  # the stream's first block, a whole chunk
    return reader, writer


def retry_before_end(body: bytes) -> int | None:
    """The ``retry:`` of the last block of a dechunked event stream; None if it has none."""
    text = body.decode()
    blocks = [block for block in text.split("\n\n") if block.strip()]
    fields = dict(line.split(": ", 1) for line in blocks[-1].splitlines() if ": " in line)
    return int(fields["retry"]) if "retry" in fields else None


def dechunk(raw: bytes) -> bytes:
    out = b""
    while raw:
        size, _, rest = raw.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            return out
        out += rest[:length]
        raw = rest[length + 2 :]
    raise AssertionError("the response did not end with its last chunk")


def wait_exit(server: ServerProcess, seconds: float) -> tuple[int, float]:
    assert server.process is not None
    started = time.monotonic()
    server.process.wait(timeout=seconds)
    return server.process.returncode, time.monotonic() - started


@pytest.mark.parametrize("fast_write", ["1", "0"], ids=["fast", "asgi"])
async def test_sigterm_ends_every_stream_with_a_spread_retry_and_closes_websockets_with_4001(
    fast_write: str,
) -> None:
    env = {
        "TIDINGS_FAST_WRITE": fast_write,
        "TIDINGS_DRAIN_TIMEOUT": str(DRAIN),
        "TIDINGS_SSE_RETRY": "1",
    }
    with ServerProcess(env=env) as server:
        streams = [await open_sse(server.port, "drain") for _ in range(CLIENTS)]
        url = server.url.replace("http://", "ws://") + "/ws"
        sockets: list[ClientConnection] = []
        for n in range(CLIENTS):
            ws = await connect(url, subprotocols=["tidings.v1.json"])  # type: ignore[list-item]
            sockets.append(ws)
            await ws.send(json.dumps({"id": n, "op": "subscribe", "channel": "drain"}))
        for ws in sockets:
            async with asyncio.timeout(TIMEOUT):
                assert json.loads(await ws.recv())["ok"] is True
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        exiting = asyncio.ensure_future(asyncio.to_thread(wait_exit, server, DRAIN + EXIT_SLACK))

        async def rest_of(reader: asyncio.StreamReader) -> bytes:
            async with asyncio.timeout(DRAIN + TIMEOUT):
                return await reader.read()

        async def close_code(ws: ClientConnection) -> int | None:
            with contextlib.suppress(ConnectionClosed):
                async with asyncio.timeout(DRAIN + TIMEOUT):
                    while True:
                        await ws.recv()
            return ws.close_code

        bodies = await asyncio.gather(*(rest_of(reader) for reader, _ in streams))
        codes = await asyncio.gather(*(close_code(ws) for ws in sockets))
        returncode, _ = await exiting
        for _, writer in streams:
            writer.close()
        assert returncode == 0, server.log()
        retries = [retry_before_end(dechunk(body)) for body in bodies]
        assert None not in retries, retries
        assert all(1000 <= retry <= 6000 for retry in retries if retry is not None), retries
        assert len(set(retries)) > 1, retries
        assert set(codes) == {4001}, codes


async def until_draining(http: httpx.AsyncClient) -> httpx.Response:
    """Ask ``/readyz`` on the open connection until it answers 503 (the signal is async)."""
    async with asyncio.timeout(TIMEOUT):
        for _ in range(10_000):
            answer = await http.get("/readyz")
            if answer.status_code == 503:
                return answer
            await asyncio.sleep(0.02)
    raise AssertionError("/readyz never turned 503")


LLM_CONFIG = """
[llm]
base_url = "{base}"
grace = 60.0
[llm.providers.fake]
kind = "openai"
base_url = "{base}"
timeout = 60.0
[llm.models]
"held-*" = "fake"
"""


async def test_a_running_generation_finishes_and_one_that_cannot_is_cancelled() -> None:
    async with FakeUpstream() as upstream:
        finishing = upstream.scenario(
            "held-finish", Scenario(tokens=["a ", "b ", "c "], pause_after=1)
        )
        upstream.scenario("held-stuck", Scenario(tokens=["x ", "y "], pause_after=1))
        env = {"TIDINGS_DRAIN_TIMEOUT": "4"}
        with ServerProcess(env=env, config=LLM_CONFIG.format(base=upstream.base_url)) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT * 2) as http:

                async def generate(model: str) -> str:
                    body = {
                        "model": model,
                        "stream": True,
                        "messages": [{"role": "user", "content": "hi"}],
                    }
                    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                        assert response.status_code == 200
                        return "".join([text async for text in response.aiter_text()])

                tasks = [
                    asyncio.create_task(generate(model)) for model in ("held-finish", "held-stuck")
                ]
                for count in (1, 2):
                    call = await upstream.next_call(count, TIMEOUT)
                    async with asyncio.timeout(TIMEOUT):
                        await call.paused.wait()
                assert (await http.get("/readyz")).status_code == 200
                assert server.process is not None
                server.process.send_signal(signal.SIGTERM)
                # On a connection already open, /readyz says draining at once.
                ready = await until_draining(http)
                assert ready.json()["reason"] == "draining"
                refused = await http.post(
                    "/v1/chat/completions",
                    json={"model": "held-finish", "messages": [{"role": "user", "content": "x"}]},
                )
                assert refused.status_code == 503
                finishing.release.set()  # this one can end before the deadline
                finished, stuck = await asyncio.gather(*tasks)
            returncode, _ = await asyncio.to_thread(wait_exit, server, 4 + EXIT_SLACK)
        assert returncode == 0, server.log()
        assert "[DONE]" in finished
        assert all(token in finished for token in ('"a "', '"b "', '"c "')), finished
        assert "cancelled" not in finished
        assert "shutdown" in stuck, stuck
        assert "cancelled" in stuck, stuck


async def test_a_second_sigterm_exits_at_once() -> None:
    async with FakeUpstream() as upstream:
        upstream.scenario("held-forever", Scenario(pause_after=1))
        env = {"TIDINGS_DRAIN_TIMEOUT": "600"}
        with ServerProcess(env=env, config=LLM_CONFIG.format(base=upstream.base_url)) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT * 2) as http:
                body = {
                    "model": "held-forever",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                }
                async with http.stream("POST", "/v1/chat/completions", json=body):
                    call = await upstream.next_call(1, TIMEOUT)
                    async with asyncio.timeout(TIMEOUT):
                        await call.paused.wait()
                    assert server.process is not None
                    server.process.send_signal(signal.SIGTERM)
                    await until_draining(http)
                    server.process.send_signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        await asyncio.to_thread(server.process.wait, TIMEOUT * 2)
                    assert server.process.returncode == 128 + signal.SIGTERM, server.log()
