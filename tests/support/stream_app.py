"""A server process whose producers could each emit 1 GiB, for the memory tests.

``python -m tests.support.stream_app fast|asgi`` serves, on a free loopback
port (its URL is the first line on stdout), until it is stopped:

- ``GET /ndjson``: an NDJSONResponse of 1 GiB in lines of about 1 KiB;
- ``GET /bytes``: a StreamResponse of 1 GiB in 64 KiB blocks;
- ``GET /produced``: ``{"bytes": n}``, what the producers have made so far.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from tidings.server import NDJSONResponse, StreamResponse
from tidings.server.serve import Server, uvicorn_config
from tidings.settings import Settings

GIB = 1 << 30
ROW = {"pad": "x" * 1000}
ROW_BYTES = len(orjson.dumps(ROW)) + 1
BLOCK = b"x" * 65536
produced = 0


async def rows() -> AsyncIterator[dict[str, str]]:
    global produced
    for _ in range(GIB // ROW_BYTES):
        produced += ROW_BYTES
        yield ROW


async def blocks() -> AsyncIterator[bytes]:
    global produced
    for _ in range(GIB // len(BLOCK)):
        produced += len(BLOCK)
        yield BLOCK


async def count(request: Request) -> Response:
    return JSONResponse({"bytes": produced})


app = Starlette(
    routes=[
        Route("/ndjson", lambda request: NDJSONResponse(rows())),
        Route("/bytes", lambda request: StreamResponse(blocks())),
        Route("/produced", count),
    ]
)


async def serve(app: ASGIApp, *, fast_write: bool) -> None:
    """Serve ``app`` on a free loopback port, print its URL first, and return at SIGTERM."""
    settings = Settings(log_level="warning")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)  # connections wait in the backlog until the server accepts
        print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
        server = Server(uvicorn_config(app, settings, fast_write=fast_write))
        await server.serve(sockets=[sock])


if __name__ == "__main__":
    asyncio.run(serve(app, fast_write=sys.argv[1] == "fast"))
