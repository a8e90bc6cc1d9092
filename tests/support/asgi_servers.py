"""serve_asgi(): any ASGI app under a stock ASGI server, on the plain ASGI path.

Tidings' own ``run_server`` serves on uvicorn with Tidings' protocol classes
(the fast write path, or the guarded classes without it). This runs an app as
a user's deployment would: uvicorn with its own ``httptools`` and
``websockets-sansio`` protocol classes, or Hypercorn over HTTP/1.1, in the
current event loop on a free loopback port, lifespan included, stopped when
the block exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator

import httpx
import uvicorn
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.types import ASGIApp

from tests.support.env import TIMEOUT

#: The ASGI servers every example and mount test runs under.
ASGI_SERVERS = ("uvicorn", "hypercorn")
#: Seconds a server gives open streams at its stop before it closes them.
GRACEFUL = 1.0


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


async def _answers(url: str) -> None:
    """Wait until the server answers a request (any status): its lifespan has started."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client, asyncio.timeout(TIMEOUT * 2):
        while True:
            try:
                await client.get(url + "/")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _uvicorn(app: ASGIApp, sock: socket.socket) -> AsyncIterator[None]:
    config = uvicorn.Config(
        app,
        http="httptools",
        ws="websockets-sansio",
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL,  # type: ignore[arg-type]  # a float works
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(TIMEOUT * 2):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped during startup")
                await asyncio.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, TIMEOUT * 2)


@contextlib.asynccontextmanager
async def _hypercorn(app: ASGIApp, sock: socket.socket) -> AsyncIterator[None]:
    config = Config()
    # Hypercorn takes over (and closes) a duplicate of the listening socket.
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.graceful_timeout = GRACEFUL
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = None
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(
        serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    )
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT * 2)


@contextlib.asynccontextmanager
async def serve_asgi(app: ASGIApp, server: str) -> AsyncIterator[str]:
    """Serve ``app`` under ``server`` (one of :data:`ASGI_SERVERS`); yield its base URL."""
    runners = {"uvicorn": _uvicorn, "hypercorn": _hypercorn}
    sock = _listening_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        async with runners[server](app, sock):
            await _answers(url)
            yield url
    finally:
        sock.close()
