"""``POST /v1/ai-sdk/chat`` and ``GET|DELETE /v1/ai-sdk/chat/{id}/stream``: the AI SDK's chat.

The ``ai`` package's ``DefaultChatTransport`` (``useChat`` and ``Chat``)
posts a chat's UI messages and reads the answer as its UI message stream;
with ``resume: true`` it asks ``GET {api}/{chatId}/stream`` for the chat's
running answer on every page load, and 204 means "nothing to resume".

A chat request is a generation of the relay like any other
(``llm.ui_messages`` makes it a Chat Completions request; the same
authorisation, limits and owner): published on ``llm:{id}``, so that
``/v1/streams/{id}`` and ``DELETE /v1/streams/{id}`` work on it too, and
cancelled once unheard for the grace period after the client goes (the AI
SDK's ``stop()`` aborts the request). ``llm.chats`` remembers which
generation answers each of an identity's chats, in the hub, so a resume may
reach any server on the same backend. The answer is ``llm.ui_stream``'s
chunks as ``data:`` lines: ``start`` (whose ``messageId`` is the generation
id, or the id of the assistant message the answer continues) goes out as
soon as the generation is subscribed, then the chunks as the generation
publishes them, ``data: [DONE]`` last. A resume replays the
generation from its start, as ``DefaultChatTransport`` expects, with what
was published so far folded into one delta per part (``llm.snapshot``),
then the live deltas.

Refusals before the stream (authorisation, body, limits, backend) are the
same OpenAI-shaped JSON errors as ``/v1/chat/completions``; the AI SDK shows
their text. A failure after the stream started is an ``error`` chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tidings.errors import BackendUnavailable, TidingsError
from tidings.hub import Reset
from tidings.llm import CHANNEL_PREFIX, Generation, Relay
from tidings.llm.chats import ChatIndex
from tidings.llm.request import RequestLimits
from tidings.llm.snapshot import take_snapshot
from tidings.llm.ui_messages import CHAT_ID, parse_chat
from tidings.llm.ui_stream import UIMessageStream
from tidings.server.api import read_body
from tidings.server.auth import Action, Principal
from tidings.server.llm import (
    STREAM_ID_HEADER,
    OpenAIJSON,
    authority_of,
    authorized,
    client_key,
    history_lost,
    listen,
    load_json,
    lost_end,
    openai_error,
    refusal,
)
from tidings.settings import Settings
from tidings.types import Position
from tidings.wire.codes import ErrorCode
from tidings.wire.sse import PING, encode_data

__all__ = ["UI_STREAM_HEADERS", "AISDKChat", "AISDKChatStream", "ai_sdk_routes"]

logger = logging.getLogger(__name__)

#: The response headers of a UI message stream (the ``ai`` package's own, less ``connection``).
UI_STREAM_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"x-vercel-ai-ui-message-stream", b"v1"),
]
_DONE = encode_data(b"[DONE]")


def _frames(chunks: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(encode_data(orjson.dumps(chunk)) for chunk in chunks)


async def _stream(
    relay: Relay,
    generation_id: str,
    message_id: str,
    since: Position,
    generation: Generation | None,
    keepalive: float,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    snapshot: bool = False,
) -> bool:
    """Send the generation from ``since`` as a UI message stream; True once its end is sent.

    With ``snapshot``, what the generation published after ``since`` so far
    goes out folded (``llm.snapshot``): one text part with the text so far,
    one delta per tool call's arguments so far, then the live deltas from
    the cut, so a late resume of a long answer is a few chunks, not one per
    token.

    Raises:
        BackendUnavailable: subscribing failed (before anything is sent).
    """
    ui = UIMessageStream(message_id)
    channel = CHANNEL_PREFIX + generation_id
    headers = [*UI_STREAM_HEADERS, (STREAM_ID_HEADER.encode(), generation_id.encode())]
    first = ui.start()
    if snapshot:
        taken = await take_snapshot(relay.hub, channel, since=since)
        if taken.chunk is not None:
            first += ui.feed(taken.chunk)
        since = taken.position
        if taken.end is not None:
            body = _frames([*first, *ui.end(orjson.loads(taken.end.raw))]) + _DONE
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return True
    async with listen(
        relay.hub, channel, since, receive, keepalive=keepalive, generation=generation
    ) as batches:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": _frames(first), "more_body": True})
        async for items in batches:
            chunks: list[dict[str, Any]] = []
            end = None if items else lost_end(generation)
            for item in items:
                if isinstance(item, Reset):
                    end = history_lost(item)
                    break
                if item.event == "end":
                    end = orjson.loads(item.raw)
                    break
                if item.event == "message":
                    chunks += ui.feed(orjson.loads(item.raw))
            if end is not None:
                body = _frames([*chunks, *ui.end(end)]) + _DONE
                await send({"type": "http.response.body", "body": body})
                return True
            if chunks or not items:  # an empty batch is the keepalive's
                body = _frames(chunks) or PING
                await send({"type": "http.response.body", "body": body, "more_body": True})
    return False  # the client went away


async def _note_delivered(chats: ChatIndex, owner: str, chat_id: str, generation_id: str) -> None:
    try:
        await chats.delivered(owner, chat_id, generation_id)
    except TidingsError as exc:  # the chat then stays resumable: a replay, not a loss
        logger.warning("could not note chat %s as delivered: %s", chat_id, exc)


class AISDKChat:
    """``POST /v1/ai-sdk/chat``: start a generation for a chat and stream it as UI chunks."""

    def __init__(
        self, relay: Relay, *, limits: RequestLimits, max_body_bytes: int, keepalive: float
    ) -> None:
        self.relay = relay
        self.chats = ChatIndex(relay.hub)
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.keepalive = keepalive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            principal = authorized(scope, Action.LLM_CREATE)
            if media_type not in ("", "application/json"):
                response = openai_error(
                    415, f"unsupported Content-Type {media_type!r}: send application/json"
                )
                await response(scope, receive, send)
                return
            body = await read_body(request, self.max_body_bytes)
            chat = parse_chat(load_json(body), self.limits)
            client = client_key(principal, authority_of(scope).peer(scope))
            generation = await self.relay.start(
                chat.request, owner=principal.identity, client=client
            )
        except TidingsError as exc:
            await refusal(exc)(scope, receive, send)
            return
        try:
            message_id = chat.continues or generation.id
            await self.chats.record(principal.identity, chat.chat_id, generation.id, message_id)
            with generation.listening():
                sent = await _stream(
                    self.relay,
                    generation.id,
                    message_id,
                    generation.origin,
                    generation,
                    self.keepalive,
                    scope,
                    receive,
                    send,
                )
        except BackendUnavailable as exc:
            # Before a byte is sent: the answer cannot reach its client, so stop it now.
            generation.cancel("unheard")
            await refusal(exc)(scope, receive, send)
            return
        if sent:
            await _note_delivered(self.chats, principal.identity, chat.chat_id, generation.id)


class AISDKChatStream:
    """``GET /v1/ai-sdk/chat/{chat_id}/stream`` (resume, 204 when none) and ``DELETE`` (stop)."""

    def __init__(self, relay: Relay, *, keepalive: float) -> None:
        self.relay = relay
        self.chats = ChatIndex(relay.hub)
        self.keepalive = keepalive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chat_id = scope["path_params"]["chat_id"]
        delete = scope["method"] == "DELETE"
        try:
            principal = authorized(scope, Action.LLM_CANCEL if delete else Action.LLM_VIEW)
            if not CHAT_ID.match(chat_id):
                response = _no_chat(chat_id)
            elif delete:
                response = await self._delete(principal, chat_id)
            else:
                await self._resume(principal, chat_id, scope, receive, send)
                return
        except TidingsError as exc:
            response = refusal(exc)
        await response(scope, receive, send)

    async def _delete(self, principal: Principal, chat_id: str) -> Response:
        latest = await self.chats.latest(principal.identity, chat_id)
        generation_id = None if latest is None else latest.generation
        end = None if generation_id is None else await self.relay.cancel_anywhere(generation_id)
        if generation_id is None or end is None:
            return _no_chat(chat_id)
        status = end.get("status", "cancelling")
        return OpenAIJSON(
            {
                "id": chat_id,
                "object": "tidings.chat.stream",
                "stream": generation_id,
                "status": status,
            },
            status_code=202 if status == "cancelling" else 200,
        )

    async def _resume(
        self, principal: Principal, chat_id: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Replay the chat's undelivered generation from its start and follow it.

        Raises:
            BackendUnavailable: the backend cannot be reached (before anything is sent).
        """
        record = await self.chats.active(principal.identity, chat_id)
        origin = None if record is None else await self._origin(record.generation)
        if record is None or origin is None:
            await Response(status_code=204)(scope, receive, send)
            return
        generation_id = record.generation
        generation = self.relay.get(generation_id)
        args = (self.relay, generation_id, record.message, origin, generation, self.keepalive)
        if generation is not None:
            with generation.listening():
                sent = await _stream(*args, scope, receive, send, snapshot=True)
        else:
            # It runs on another server (or has ended): say we listen.
            async with self.relay.remote_listener(generation_id):
                sent = await _stream(*args, scope, receive, send, snapshot=True)
        if sent:
            await _note_delivered(self.chats, principal.identity, chat_id, generation_id)

    async def _origin(self, generation_id: str) -> Position | None:
        """Where the generation starts, or None once its history is gone."""
        generation = self.relay.get(generation_id)
        if generation is not None:
            return generation.origin
        position = await self.relay.hub.position(CHANNEL_PREFIX + generation_id)
        return Position(position.epoch, 0) if position.offset else None


def _no_chat(chat_id: str) -> Response:
    """The answer for a chat with no stream, and for another identity's (the same bytes)."""
    return openai_error(404, f"no stream for chat {chat_id[:80]!r}", code=ErrorCode.NOT_FOUND)


def ai_sdk_routes(relay: Relay, settings: Settings) -> list[Route]:
    """The AI SDK's chat routes over ``relay``, with the LLM settings' limits."""
    chat = AISDKChat(
        relay,
        limits=settings.llm.limits,
        max_body_bytes=settings.llm.max_body_bytes,
        keepalive=settings.sse_keepalive,
    )
    stream = AISDKChatStream(relay, keepalive=settings.sse_keepalive)
    return [
        Route("/v1/ai-sdk/chat", chat, methods=["POST"]),
        Route("/v1/ai-sdk/chat/{chat_id}/stream", stream, methods=["GET", "DELETE"]),
    ]
