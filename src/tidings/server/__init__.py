"""ASGI transports on top of the hub: the only package that imports Starlette."""

from tidings.server.app import build_hub, create_app
from tidings.server.hooks import ConnectContext, Hooks, PublishContext, SubscribeContext
from tidings.server.responses import SSEResponse
from tidings.server.sse import SSEStream
from tidings.server.streams import NDJSONResponse, ServerSentEvent, StreamResponse
from tidings.server.websocket import WebSocketEndpoint

__all__ = [
    "ConnectContext",
    "Hooks",
    "NDJSONResponse",
    "PublishContext",
    "SSEResponse",
    "SSEStream",
    "ServerSentEvent",
    "StreamResponse",
    "SubscribeContext",
    "WebSocketEndpoint",
    "build_hub",
    "create_app",
]
