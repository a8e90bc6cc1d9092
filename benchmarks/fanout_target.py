"""The fan-out benchmark target: the real Tidings app plus the harness's two hooks.

``GET /sse?channel=`` and ``GET /ws?channel=`` (raw mode: each event one text
frame holding exactly its data) are Tidings' own endpoints, served by
``tidings serve``'s uvicorn configuration. ``/publish`` and ``/burst`` publish through the hub's
public ``publish()``, history included, exactly as a user's publish would.
The contract is in ``../shared/bench/README.md``.

    python benchmarks/fanout_target.py --port 18000 [--no-fast-write]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvicorn
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from tidings.server import create_app
from tidings.server.serve import uvicorn_config
from tidings.settings import load_settings

_background: set[asyncio.Task[None]] = set()


def build(fast_write: bool, port: int) -> uvicorn.Config:
    # The harness's N subscribers all come from one loopback address, where a
    # deployment's clients come from many: no per-client connection cap.
    settings = load_settings(
        port=port, fast_write=fast_write, demo=False, max_connections_per_client=0
    )
    app = create_app(settings=settings)
    hub = app.state.tidings.hub

    async def publish(request: Request) -> Response:
        channel = request.query_params["channel"]
        await hub.publish(channel, text=await request.body())
        return PlainTextResponse("ok\n")

    async def burst_loop(channel: str, count: int, size: int) -> None:
        for _ in range(count):
            stamp = b"%d " % time.time_ns()
            await hub.publish(channel, text=stamp + b"x" * max(0, size - len(stamp)))
            await asyncio.sleep(0)  # as many independent publishers would

    async def burst(request: Request) -> Response:
        params = request.query_params
        task = asyncio.get_running_loop().create_task(
            burst_loop(params["channel"], int(params.get("n", 1)), int(params.get("size", 128)))
        )
        _background.add(task)
        task.add_done_callback(_background.discard)
        return PlainTextResponse("accepted\n", status_code=202)

    hooks = Router(
        routes=[
            Route("/publish", publish, methods=["POST"]),
            Route("/burst", burst, methods=["POST"]),
        ]
    )

    async def target(scope: Scope, receive: Receive, send: Send) -> None:
        # The harness posts raw bodies with no content type, which the app refuses
        # (a request any web page could send changes nothing): the hooks are served
        # beside the app, not through it. Everything else, lifespan included, is the app.
        if scope["type"] == "http" and scope["path"] in ("/publish", "/burst"):
            await hooks(scope, receive, send)
        else:
            await app(scope, receive, send)

    return uvicorn_config(target, settings, loop="uvloop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--no-fast-write", dest="fast_write", action="store_false")
    args = parser.parse_args()
    uvicorn.Server(build(args.fast_write, args.port)).run()


if __name__ == "__main__":
    main()
