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

from starlette.types import ASGIApp

from tidings.server.app import create_app
from tidings.server.serve import Server, uvicorn_config
from tidings.settings import Settings

__all__ = ["free_port", "run_server"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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
    server = Server(config)
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
            # The server drains for up to drain_timeout, then closes what is left.
            await asyncio.wait_for(task, timeout=settings.drain_timeout + 10)
        finally:
            sock.close()
