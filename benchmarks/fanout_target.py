"""Fan-out benchmark target: ``tidings serve`` plus the harness's ``/publish`` and ``/burst`` hooks.

Serves the contract of ``../shared/bench`` (README, "The contract") with the
real server: ``GET /sse?channel=`` and ``GET /ws?channel=`` (raw mode: each
event one text frame holding exactly its data) are Tidings' own endpoints on
uvicorn with the fast write path, exactly as ``tidings serve`` runs them;
``POST /publish`` and ``POST /burst`` publish through ``Hub.publish``.

    python benchmarks/fanout_target.py --port 18000
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.server import create_app
from tidings.settings import load_settings
from tidings.testing import uvicorn_config

background: set[asyncio.Task[None]] = set()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = load_settings(port=args.port, demo=False)
    app = create_app(settings=settings)
    hub = app.state.tidings.hub

    async def publish(request: Request) -> Response:
        channel = request.query_params["channel"]
        await hub.publish(channel, text=await request.body())
        return Response(status_code=204)

    async def run_burst(channel: str, count: int, size: int) -> None:
        for _ in range(count):
            stamp = b"%d " % time.time_ns()
            await hub.publish(channel, text=stamp + b"x" * max(0, size - len(stamp)))
            await asyncio.sleep(0)

    async def burst(request: Request) -> Response:
        params = request.query_params
        task = asyncio.get_running_loop().create_task(
            run_burst(params["channel"], int(params["n"]), int(params.get("size", "128")))
        )
        background.add(task)
        task.add_done_callback(background.discard)
        return Response(status_code=202)

    app.router.routes[0:0] = [
        Route("/publish", publish, methods=["POST"]),
        Route("/burst", burst, methods=["POST"]),
    ]
    uvicorn.Server(uvicorn_config(app, settings, loop="uvloop")).run()


if __name__ == "__main__":
    main()
