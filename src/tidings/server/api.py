"""The HTTP JSON API: publish, history, presence, channels, stats, health.

Every handler but ``/healthz`` and ``/readyz`` authenticates its request once and has the
operation authorised (``server/auth.py``) before it reads or changes anything;
a refusal is a 401 (with ``WWW-Authenticate: Bearer``) or a 403.

Each handler parses its request into the command a WebSocket client would
send (``wire/protocol.py``) and runs it through ``server/ops.py``, so both
transports answer the same documents. Bad input gets a 4xx and a JSON error
body before anything changes (``server/errors.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from tidings.errors import (
    BackendUnavailable,
    FrameTooLarge,
    InvalidCursor,
    InvalidPublication,
    ProtocolError,
    TidingsError,
)
from tidings.hub import validate_channel
from tidings.server import ops
from tidings.server.auth import Action
from tidings.server.limits import SOCKETS
from tidings.server.state import ServerState
from tidings.types import Position
from tidings.wire import json, protocol
from tidings.wire.codes import ErrorCode
from tidings.wire.cursor import decode_cursor
from tidings.wire.protocol import MAX_HISTORY_LIMIT, MAX_PAGE_LIMIT

__all__ = ["channels", "healthz", "history", "presence", "publish", "readyz", "stats"]

#: Fields of a WebSocket command that an HTTP publish body does not have.
_COMMAND_FIELDS = frozenset({"id", "op"})


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return protocol.encode_message(content, protocol.Format.JSON)


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.tidings
    return state


def _caller(request: Request) -> ops.Caller:
    """The request's caller, authenticated once (a refused credential raises ``Unauthorized``)."""
    state = _state(request)
    authority = state.authority
    return ops.Caller(
        state.hub,
        authority,
        authority.principal(request.scope),
        authority.peer(request.scope),
        state.gate,
        headers=request.scope.get("headers", ()),
    )


async def read_body(request: Request, limit: int) -> bytes:
    """Read the request body, refusing more than ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise ProtocolError(f"invalid Content-Length {length[:40]!r}")
        if int(length) > limit:
            raise FrameTooLarge(int(length), limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise FrameTooLarge(len(body), limit)
    except ClientDisconnect:
        # Gone, or cut off by body_timeout: the answer goes nowhere, but no traceback.
        raise ProtocolError("the connection ended before the request body was read") from None
    return bytes(body)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _publish_json(body: bytes, key: str | None) -> protocol.Publish:
    """A JSON body as the same command a WebSocket ``publish`` is."""
    try:
        document = json.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"body is not valid JSON: {exc}", code=ErrorCode.INVALID_JSON) from exc
    if not isinstance(document, dict):
        raise ProtocolError("body must be a JSON object")
    framing = set(document) & _COMMAND_FIELDS
    if framing:
        raise ProtocolError(f"unknown field(s): {', '.join(sorted(framing))}")
    command = protocol.parse_command({**document, "op": protocol.Op.PUBLISH})
    assert isinstance(command, protocol.Publish)
    if "key" not in document:
        command = dataclasses.replace(command, key=key)
    return command


def _publish_text(request: Request, body: bytes, key: str | None) -> protocol.Publish:
    """A ``text/plain`` body with ``?channel=…&event=…&key=…``."""
    params = request.query_params
    channel = params.get("channel")
    if channel is None:
        raise ProtocolError("query parameter 'channel' is required with a text/plain body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPublication(f"body is not valid UTF-8: {exc}") from exc
    event = params.get("event", "message")
    return protocol.Publish(None, channel, None, text, event, params.get("key", key))


async def publish(request: Request) -> Response:
    """``POST /api/publish``: JSON ``{"channel", "data" | "text", "event"?, "key"?}``,
    or a ``text/plain`` body with ``?channel=…&event=…``."""
    state = _state(request)
    try:
        caller = _caller(request)
        command = await _publish_command(request, state.settings.max_body_bytes)
    except TidingsError as exc:
        state.gate.refuse(exc)  # ops.publish counts the refusals that come after
        raise
    return JSONBody(await ops.publish(caller, command))


async def _publish_command(request: Request, max_body_bytes: int) -> protocol.Publish:
    """The request's body as a publish command.

    Raises:
        FrameTooLarge: the body is over ``max_body_bytes``.
        ProtocolError, InvalidPublication: a body that is not a publish.
    """
    body = await read_body(request, max_body_bytes)
    media_type = _media_type(request)
    key = request.headers.get("idempotency-key")
    if media_type in ("", "application/json") or media_type.endswith("+json"):
        return _publish_json(body, key)
    if media_type == "text/plain":
        return _publish_text(request, body, key)
    raise ProtocolError(
        f"unsupported Content-Type {media_type!r}: use application/json or text/plain",
        code=ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    )


def parse_since(channel: str, value: str) -> Position:
    """Read ``since`` as ``epoch:offset`` or as a cursor naming ``channel``."""
    epoch, colon, offset = value.partition(":")
    if colon and ":" not in offset and offset.isascii() and offset.isdigit():
        return Position(epoch, int(offset))
    try:
        position = decode_cursor(value).get(channel)
    except InvalidCursor:
        position = None
    if position is None:
        raise InvalidCursor(value, f"expected epoch:offset or a cursor naming {channel!r}")
    return position


def query_limit(request: Request, low: int, high: int) -> int | None:
    """The ``?limit=`` of a request, from ``low`` to ``high``; None when absent.

    ASCII digits only: ``str.isdigit`` also takes "²", which ``int`` refuses.
    """
    value = request.query_params.get("limit")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise ProtocolError(f"limit must be an integer from {low} to {high}")
    return int(value)


async def history(request: Request) -> Response:
    """``GET /api/history/{channel}?since=…&limit=…``."""
    caller = _caller(request)
    channel = validate_channel(request.path_params["channel"])
    since_text = request.query_params.get("since")
    since = parse_since(channel, since_text) if since_text else None
    command = protocol.History(None, channel, since, query_limit(request, 0, MAX_HISTORY_LIMIT))
    max_reply_bytes = _state(request).settings.max_reply_bytes
    return JSONBody(await ops.history(caller, command, max_reply_bytes=max_reply_bytes))


def _page(request: Request) -> tuple[str | None, int | None]:
    """A listing's ``?cursor=…&limit=…``."""
    cursor = protocol.page_cursor(request.query_params.get("cursor"))
    return cursor, query_limit(request, 1, MAX_PAGE_LIMIT)


async def presence(request: Request) -> Response:
    """``GET /api/presence/{channel}?cursor=…&limit=…``: a page of the clients
    subscribed to a channel."""
    caller = _caller(request)
    cursor, limit = _page(request)
    command = protocol.Presence(None, request.path_params["channel"], cursor, limit)
    max_reply_bytes = _state(request).settings.max_reply_bytes
    return JSONBody(await ops.presence(caller, command, max_reply_bytes=max_reply_bytes))


async def channels(request: Request) -> Response:
    """``GET /api/channels?cursor=…&limit=…``: a page of the channels with history
    or subscribers."""
    caller = _caller(request)
    cursor, limit = _page(request)
    max_reply_bytes = _state(request).settings.max_reply_bytes
    return JSONBody(
        await ops.channels(caller, cursor=cursor, limit=limit, max_reply_bytes=max_reply_bytes)
    )


async def stats(request: Request) -> Response:
    """``GET /api/stats``: connections and hub counters (server-wide: an API key once
    authentication is configured)."""
    state = _state(request)
    state.authority.authorize(state.authority.principal(request.scope), Action.STATS)
    hub_stats = state.hub.stats()._asdict()
    body = {
        "connections": len(state.connections),
        "transports": state.connections.counts(),
        "open": _open(request, state),
        "backend": state.hub.backend.name,
        **hub_stats,
    }
    if state.relay is not None:
        body["llm"] = state.relay.stats()._asdict()
    if state.runner is not None:
        body["jobs"] = state.runner.stats()
    return JSONBody(body)


def _open(request: Request, state: ServerState) -> dict[str, int]:
    """Requests and streams open now (this one included), and under ``tidings serve`` sockets."""
    counts = state.slots.stats()
    sockets = request.scope.get("extensions", {}).get(SOCKETS)
    if sockets is not None:
        counts["sockets"] = sockets()
    return counts


async def healthz(request: Request) -> Response:
    """``GET /healthz``: 200 while the server can serve."""
    state = _state(request)
    return JSONBody({"status": "ok", "backend": state.hub.backend.name})


async def readyz(request: Request) -> Response:
    """``GET /readyz``: 200 when the backend answers within ``ready_timeout`` and the
    server is not draining; 503 with the reason otherwise."""
    state = _state(request)
    backend = state.hub.backend.name
    if state.draining:
        return _unready("draining", backend, "the server is stopping")
    timeout = state.settings.ready_timeout
    try:
        async with asyncio.timeout(timeout):
            await state.hub.ping()
    except BackendUnavailable as exc:
        return _unready("backend", backend, str(exc))
    except TimeoutError:
        return _unready("backend", backend, f"no answer within {timeout:g} s")
    return JSONBody({"status": "ready", "backend": backend})


def _unready(reason: str, backend: str, message: str) -> Response:
    body = {"status": "unavailable", "reason": reason, "backend": backend, "message": message}
    return JSONBody(body, status_code=503)
