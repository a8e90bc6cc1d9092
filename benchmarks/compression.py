"""What compression saves on the wire and costs in CPU and memory, in one run.

Starts one ``tidings serve`` configuration (fast write path, ``sse_compression
= "gzip"``, ``ws_compression = "deflate"``) in a subprocess, then for each of
two kinds of event, 128-byte JSON documents and LLM chunks (OpenAI
``chat.completion.chunk`` carrying a token or two), and each transport:

* one subscriber (SSE with and without ``Accept-Encoding: gzip``; raw-mode
  WebSocket offering permessage-deflate or not) while the server publishes
  ``--events`` events through ``Hub.publish`` as fast as it can: bytes
  received, events per second until the last one arrived, and server CPU
  seconds per 10,000 events (from ``/proc``);
* ``--connections`` idle subscribers of each kind: the server's RSS per
  connection, idle and after ten events reached every one of them.

Bounded: every wait has ``--time-limit``; the server is stopped by its PID.

    python -m benchmarks.compression [--events 20000] [--connections 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import time
import zlib

import orjson
from benchmarks.llm_relay import cpu_seconds, rss_mib
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from tidings.testing import free_port

KINDS = ("json", "llm")
WORDS = (" the", " stream", "ing", " token", " of", " a", " model", ",", " and", " it")


def json_event(number: int, rng: random.Random) -> bytes:
    """A 128-byte JSON document, like a price tick or a chat message."""
    document = {
        "id": number,
        "symbol": rng.choice(("AAPL", "MSFT", "GOOG", "AMZN")),
        "price": round(rng.uniform(10, 500), 2),
        "size": rng.randint(1, 1000),
        "side": rng.choice(("buy", "sell")),
        "venue": rng.choice(("XNAS", "XNYS", "BATS")),
    }
    data = orjson.dumps(document)
    return data[:-1] + b',"pad":"' + b"p" * max(0, 128 - len(data) - 9) + b'"}'


def llm_event(number: int, rng: random.Random) -> bytes:
    """An OpenAI chunk with a token or two, as the LLM relay publishes it."""
    return orjson.dumps(
        {
            "id": "chatcmpl-7f3a9c2e",
            "object": "chat.completion.chunk",
            "created": 1764000000,
            "model": "demo",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "".join(rng.choices(WORDS, k=rng.randint(1, 2)))},
                    "finish_reason": None,
                }
            ],
        }
    )


# -- the server (this file run with --serve PORT) ------------------------------------


def serve(port: int) -> None:
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route, Router
    from starlette.types import Receive, Scope, Send

    from tidings.server import create_app
    from tidings.server.serve import uvicorn_config
    from tidings.settings import load_settings

    settings = load_settings(
        port=port,
        demo=False,
        max_connections_per_client=0,
        log_level="warning",
        sse_compression="gzip",
        ws_compression="deflate",
        sse_keepalive=3600.0,
    )
    app = create_app(settings=settings)
    hub = app.state.tidings.hub
    running: set[asyncio.Task[None]] = set()

    async def publish_all(channel: str, kind: str, count: int) -> None:
        make = json_event if kind == "json" else llm_event
        rng = random.Random(7)
        for number in range(count):
            await hub.publish(channel, text=make(number, rng))
            await asyncio.sleep(0)  # as independent publishers would

    async def burst(request: Request) -> Response:
        params = request.query_params
        task = asyncio.get_running_loop().create_task(
            publish_all(params["channel"], params["kind"], int(params["n"]))
        )
        running.add(task)
        task.add_done_callback(running.discard)
        return PlainTextResponse("accepted\n", status_code=202)

    hooks = Router(routes=[Route("/burst", burst, methods=["POST"])])

    async def target(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/burst":
            await hooks(scope, receive, send)
        else:
            await app(scope, receive, send)

    uvicorn.Server(uvicorn_config(target, settings, loop="uvloop")).run()


# -- the clients ---------------------------------------------------------------------


class Client:
    """One subscriber over a plain socket: counts the bytes it reads and the events in them."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def __init__(self) -> None:
        self.wire = 0
        self.events = 0

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    async def read_until(self, count: int) -> None:
        while self.events < count:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.wire += len(data)
            self._feed(data)

    def close(self) -> None:
        self.writer.close()


class SSEClient(Client):
    """One SSE stream: undoes the chunking and (with ``gzip``) the coding, counts events."""

    def __init__(self, gzip: bool) -> None:
        super().__init__()
        self.gzip = gzip
        self.events = -1  # the first block is the head (retry: and id:)
        self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
        self._tail = b""

    async def open(self, port: int, channel: str) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        coding = b"Accept-Encoding: gzip\r\n" if self.gzip else b""
        request = b"GET /sse?channel=%b HTTP/1.1\r\nHost: b\r\n%b\r\n"
        self.writer.write(request % (channel.encode(), coding))
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert (b"content-encoding: gzip" in head.lower()) is self.gzip, head
        self._chunked = bytearray()

    def _feed(self, data: bytes) -> None:
        # Undo the HTTP/1.1 chunking, then the gzip coding, then count events.
        self._chunked += data
        body = bytearray()
        while True:
            line_end = self._chunked.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self._chunked[:line_end], 16)
            if len(self._chunked) < line_end + 2 + size + 2:
                break
            body += self._chunked[line_end + 2 : line_end + 2 + size]
            del self._chunked[: line_end + 4 + size]
        text = self._decoder.decompress(bytes(body)) if self._decoder else bytes(body)
        text = self._tail + text
        self.events += text.count(b"\n\n")  # each block ends with a blank line
        self._tail = text[-1:]


class WSClient(Client):
    """One raw-mode WebSocket (``/ws?channel=``) over websockets' sans-I/O client."""

    def __init__(self, deflate: bool) -> None:
        super().__init__()
        self.deflate = deflate

    async def open(self, port: int, channel: str) -> None:
        extensions = [ClientPerMessageDeflateFactory()] if self.deflate else None
        self.protocol = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:{port}/ws?channel={channel}"),
            extensions=extensions,
            max_size=None,
        )
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.protocol.send_request(self.protocol.connect())
        self.writer.write(b"".join(self.protocol.data_to_send()))
        while self.protocol.handshake_exc is None and not self._opened():
            data = await self.reader.read(65536)
            self.wire += len(data)
            self._feed(data)
        negotiated = [ext.name for ext in self.protocol.extensions]
        assert negotiated == (["permessage-deflate"] if self.deflate else []), negotiated

    def _opened(self) -> bool:
        return self.protocol.state.name == "OPEN"

    def _feed(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.events += 1
        pending = self.protocol.data_to_send()  # pongs
        if pending:
            self.writer.write(b"".join(pending))


def make_client(transport: str, coded: bool) -> Client:
    return SSEClient(coded) if transport == "sse" else WSClient(coded)


# -- the measurements ----------------------------------------------------------------


def rss_kib(pid: int) -> float:
    return rss_mib(pid) * 1024


async def post_burst(port: int, channel: str, kind: str, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /burst?channel={channel}&kind={kind}&n={count} HTTP/1.1\r\nHost: b\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
    )
    status = await reader.readline()
    assert b"202" in status, status
    writer.close()


async def one_stream(
    port: int, pid: int, transport: str, coded: bool, kind: str, count: int, limit: float
) -> dict[str, float]:
    channel = f"{transport}-{kind}-{int(coded)}-{time.monotonic_ns()}"
    client = make_client(transport, coded)
    await client.open(port, channel)
    opened_wire = client.wire
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    await post_burst(port, channel, kind, count)
    async with asyncio.timeout(limit):
        await client.read_until(count)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu
    client.close()
    return {
        "bytes_per_event": (client.wire - opened_wire) / count,
        "events_per_s": count / elapsed,
        "cpu_s_per_10k": cpu / count * 10_000,
    }


async def memory(
    port: int, pid: int, transport: str, coded: bool, count: int, limit: float
) -> dict[str, float]:
    channel = f"idle-{transport}-{int(coded)}-{time.monotonic_ns()}"
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    clients = []
    async with asyncio.timeout(limit):
        for _ in range(count):
            client = make_client(transport, coded)
            await client.open(port, channel)
            clients.append(client)
        await asyncio.sleep(0.5)
        idle = rss_kib(pid)
        await post_burst(port, channel, "json", 10)
        await asyncio.gather(*(client.read_until(10) for client in clients))
        await asyncio.sleep(0.5)
        active = rss_kib(pid)
    for client in clients:
        client.close()
    await asyncio.sleep(1.0)
    return {"idle_kib": (idle - before) / count, "active_kib": (active - before) / count}


async def run(events: int, connections: int, limit: float) -> dict[str, object]:
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.compression", "--serve", str(port)]
    server = subprocess.Popen(command)  # noqa: ASYNC220
    try:
        for _ in range(200):  # up to 10 s to start
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        results: dict[str, object] = {"events": events, "connections": connections}
        for transport in ("sse", "ws"):
            for kind in KINDS:
                for coded in (False, True):
                    name = f"{transport}/{kind}/{'compressed' if coded else 'identity'}"
                    results[name] = await one_stream(
                        port, server.pid, transport, coded, kind, events, limit
                    )
                    print(name, results[name], flush=True)
        for transport in ("sse", "ws"):
            for coded in (False, True):
                name = f"memory/{transport}/{'compressed' if coded else 'identity'}"
                results[name] = await memory(port, server.pid, transport, coded, connections, limit)
                print(name, results[name], flush=True)
        return results
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per stream (max 200k)")
    parser.add_argument("--connections", type=int, default=500, help="for memory (max 5000)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per step")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    results = asyncio.run(
        run(min(args.events, 200_000), min(args.connections, 5000), args.time_limit)
    )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
