"""ASGI transports on top of the hub: the only package that imports Starlette."""

from tidings.server.app import build_hub, create_app
from tidings.server.responses import SSEResponse
from tidings.server.sse import SSEStream

__all__ = ["SSEResponse", "SSEStream", "build_hub", "create_app"]
