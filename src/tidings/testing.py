"""run_server(): a real Tidings server on a free loopback port, for tests.

::

    async with run_server() as url:
        async with httpx.AsyncClient(base_url=url) as client:
            await client.post("/api/publish", json={"channel": "a", "data": 1})

The server runs in the current event loop on uvicorn, with the fast write
path (as ``tidings serve`` does) unless ``fast_write=False``, and is stopped
when the block exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.types import ASGIApp

from tidings.server.app import create_app
from tidings.server.fastwrite import FastHttpToolsProtocol, FastWebSocketsProtocol
from tidings.settings import Settings

__all__ = ["free_port", "run_server", "uvicorn_config"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def uvicorn_config(
    app: ASGIApp, settings: Settings, *, fast_write: bool | None = None, **options: object
) -> uvicorn.Config:
    """The uvicorn configuration ``tidings serve`` uses for ``app``."""
    fast = settings.fast_write if fast_write is None else fast_write
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=FastHttpToolsProtocol if fast else "httptools",
        ws=FastWebSocketsProtocol if fast else "websockets-sansio",
        # Pushes are framed once and shared by every connection, which
        # per-connection compression state would defeat: no permessage-deflate.
        ws_per_message_deflate=False,
        ws_max_size=settings.ws_max_frame_bytes,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_pong_timeout,
        lifespan="on",
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        backlog=4096,
        **options,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def run_server(
    app: ASGIApp | None = None,
    *,
    settings: Settings | None = None,
    fast_write: bool = True,
    host: str = "127.0.0.1",
    startup_timeout: float = 10.0,
) -> AsyncIterator[str]:
    """Serve ``app`` (a Tidings app built from ``settings`` by default); yield its base URL."""
    settings = settings or Settings(log_level="warning")
    app = app if app is not None else create_app(settings=settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn_config(app, settings, fast_write=fast_write)
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(startup_timeout):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the server stopped during startup")
                await asyncio.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=10)
        finally:
            sock.close()
