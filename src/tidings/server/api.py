"""The HTTP JSON API: publish, history, channels, stats, health.

Every handler refuses bad input with a 4xx and a JSON error body before it
changes anything (``server/errors.py``).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tidings.errors import (
    FrameTooLarge,
    InvalidCursor,
    InvalidPublication,
    PermissionDenied,
    ProtocolError,
)
from tidings.hub import Event, Hub, validate_channel
from tidings.server.state import ServerState
from tidings.types import Position
from tidings.wire.codes import ErrorCode
from tidings.wire.cursor import decode_cursor

__all__ = ["channels", "healthz", "history", "presence", "publish", "stats"]

_PUBLISH_FIELDS = frozenset({"channel", "data", "text", "event", "key"})
MAX_HISTORY_LIMIT = 10000


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.tidings
    return state


async def read_body(request: Request, limit: int) -> bytes:
    """Read the request body, refusing more than ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ProtocolError(f"invalid Content-Length {length[:40]!r}")
        if int(length) > limit:
            raise FrameTooLarge(int(length), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise FrameTooLarge(len(body), limit)
    return bytes(body)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def publish(request: Request) -> Response:
    """``POST /api/publish``: JSON ``{"channel", "data" | "text", "event"?, "key"?}``,
    or a ``text/plain`` body with ``?channel=…&event=…``."""
    state = _state(request)
    body = await read_body(request, state.settings.max_body_bytes)
    media_type = _media_type(request)
    key = request.headers.get("idempotency-key")
    data: Any = None
    text: str | None = None
    if media_type in ("", "application/json") or media_type.endswith("+json"):
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(
                f"body is not valid JSON: {exc}", code=ErrorCode.INVALID_JSON
            ) from exc
        if not isinstance(document, dict):
            raise ProtocolError("body must be a JSON object")
        unknown = set(document) - _PUBLISH_FIELDS
        if unknown:
            raise ProtocolError(f"unknown field(s): {', '.join(sorted(unknown))}")
        if "channel" not in document:
            raise ProtocolError("field 'channel' is required")
        channel = document["channel"]
        if ("data" in document) == ("text" in document):
            raise ProtocolError("give exactly one of 'data' (JSON) and 'text' (plain text)")
        data = document.get("data")
        if "text" in document:
            text = document["text"]
            if not isinstance(text, str):
                raise ProtocolError("field 'text' must be a string")
        event = document.get("event", "message")
        key = document.get("key", key)
        if key is not None and not isinstance(key, str):
            raise ProtocolError("field 'key' must be a string")
    elif media_type == "text/plain":
        channel = request.query_params.get("channel")
        if channel is None:
            raise ProtocolError("query parameter 'channel' is required with a text/plain body")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidPublication(f"body is not valid UTF-8: {exc}") from exc
        event = request.query_params.get("event", "message")
        key = request.query_params.get("key", key)
    else:
        raise ProtocolError(
            f"unsupported Content-Type {media_type!r}: use application/json or text/plain",
            code=ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        )
    validate_channel(channel)
    if not isinstance(event, str):
        raise ProtocolError("field 'event' must be a string")
    hub = state.hub
    if not hub.options(channel).publish:
        raise PermissionDenied(channel, "publish")
    position = await hub.publish(channel, data, text=text, event=event, key=key)
    return JSONBody({"channel": channel, "epoch": position.epoch, "offset": position.offset})


def parse_since(channel: str, value: str) -> Position:
    """Read ``since`` as ``epoch:offset`` or as a cursor naming ``channel``."""
    epoch, colon, offset = value.partition(":")
    if colon and ":" not in offset and offset.isdigit():
        return Position(epoch, int(offset))
    try:
        position = decode_cursor(value).get(channel)
    except InvalidCursor:
        position = None
    if position is None:
        raise InvalidCursor(value, f"expected epoch:offset or a cursor naming {channel!r}")
    return position


def event_json(event: Event) -> dict[str, Any]:
    """An event as the HTTP API shows it (data embedded without re-encoding)."""
    document: dict[str, Any] = {
        "epoch": event.epoch,
        "offset": event.offset,
        "event": event.type,
        "time": event.time,
    }
    if event.is_text:
        document["data"] = event.text
        document["text"] = True
    else:
        document["data"] = orjson.Fragment(event.raw)
    return document


def _limit(request: Request, default: int) -> int:
    value = request.query_params.get("limit")
    if value is None:
        return default
    if not value.isdigit() or not 0 <= int(value) <= MAX_HISTORY_LIMIT:
        raise ProtocolError(f"limit must be an integer from 0 to {MAX_HISTORY_LIMIT}")
    return int(value)


async def history(request: Request) -> Response:
    """``GET /api/history/{channel}?since=…&limit=…``."""
    hub: Hub = _state(request).hub
    channel = validate_channel(request.path_params["channel"])
    if not hub.options(channel).subscribe:
        raise PermissionDenied(channel, "history")
    since_text = request.query_params.get("since")
    since = parse_since(channel, since_text) if since_text else None
    result = await hub.history(channel, since=since, limit=_limit(request, 100))
    reset = result.reset
    return JSONBody(
        {
            "channel": channel,
            "epoch": result.position.epoch,
            "offset": result.position.offset,
            "events": [event_json(event) for event in result.events],
            "reset": None
            if reset is None
            else {
                "epoch": reset.position.epoch,
                "offset": reset.position.offset,
                "reason": reset.reason,
            },
        }
    )


async def presence(request: Request) -> Response:
    """``GET /api/presence/{channel}``: the clients subscribed to a channel."""
    hub: Hub = _state(request).hub
    channel = validate_channel(request.path_params["channel"])
    if not hub.options(channel).presence:
        raise PermissionDenied(channel, "presence")
    clients = await hub.presence(channel)
    return JSONBody(
        {
            "channel": channel,
            "clients": [
                {"client": client.client_id, "user": client.user_id, "info": client.info}
                for client in clients
            ],
        }
    )


async def channels(request: Request) -> Response:
    """``GET /api/channels``: channels with history or subscribers."""
    summaries = await _state(request).hub.channels()
    return JSONBody(
        {
            "channels": [
                {
                    "channel": summary.channel,
                    "epoch": summary.position.epoch,
                    "offset": summary.position.offset,
                    "history": summary.history,
                    "subscribers": summary.subscribers,
                }
                for summary in summaries
            ]
        }
    )


async def stats(request: Request) -> Response:
    """``GET /api/stats``: connections and hub counters."""
    state = _state(request)
    hub_stats = state.hub.stats()._asdict()
    body = {
        "connections": sum(state.connections.values()),
        "transports": dict(state.connections),
        "backend": state.hub.backend.name,
        **hub_stats,
    }
    if state.relay is not None:
        body["llm"] = state.relay.stats()._asdict()
    return JSONBody(body)


async def healthz(request: Request) -> Response:
    """``GET /healthz``: 200 while the server can serve."""
    state = _state(request)
    return JSONBody({"status": "ok", "backend": state.hub.backend.name})
