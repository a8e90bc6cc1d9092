"""Your Starlette app with the whole Tidings server mounted at /realtime, on one hub.

Your routes publish through the hub; browsers and scripts use Tidings' own
endpoints under the prefix: ``/realtime/sse``, ``/realtime/ws``,
``/realtime/api/...`` and ``/realtime/static/tidings.js``. Run it with
``uvicorn examples.starlette_app:app`` (or ``hypercorn examples.starlette_app:app``).
"""

from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from tidings import Hub
from tidings.server import create_app

hub = Hub()  # in-memory; create_app's settings or build_hub() for Redis


@asynccontextmanager
async def lifespan(app: Starlette):
    # Starlette does not run a mounted app's lifespan: start the shared hub here.
    async with hub:
        yield


async def log_line(request: Request) -> JSONResponse:
    """POST /builds/{build_id}/log with a line of text as the body."""
    channel = f"builds:{request.path_params['build_id']}"
    line = (await request.body()).decode()
    position = await hub.publish(channel, {"line": line})
    # Follow the log at /realtime/sse/builds:{build_id}; Last-Event-ID resumes it.
    return JSONResponse({"channel": channel, "offset": position.offset})


app = Starlette(
    lifespan=lifespan,
    routes=[
        Route("/builds/{build_id}/log", log_line, methods=["POST"]),
        Mount("/realtime", create_app(hub)),
    ],
)
