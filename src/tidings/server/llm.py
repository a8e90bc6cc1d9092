"""``POST /v1/chat/completions`` and ``GET|DELETE /v1/streams/{id}`` over ``llm.Relay``.

The completions endpoint speaks OpenAI's protocol exactly: errors are
``{"error": {"message", "type", "param", "code"}}``; a streamed answer is
nothing but ``data:`` lines and ``:`` comments (no ``id:``, ``event:`` or
``retry:`` field, no block of fields without data, no BOM) ending with
``data: [DONE]``, or, after a failure, with ``data: {"error": …}``. The
headers and a ``: ping`` go out as soon as the generation has started, and a
``: ping`` follows every ``keepalive`` seconds without a chunk, so time to
first byte does not wait for the upstream; a failure before the first chunk
(an upstream refusal, a timeout, a cancel) is that ``data: {"error": …}``
line, which the OpenAI SDKs raise as an error. What is refused before any
upstream call (auth, a bad body, an unknown model, the limits) is still a
plain HTTP 4xx. The ``X-Tidings-Stream-Id``
header names the generation, which ``/v1/streams/{id}`` serves over Tidings'
own SSE: ``id:`` cursors, ``Last-Event-ID`` resume, ``event: end`` last;
with ``?snapshot=1`` what precedes the live part comes first as one chunk
(``llm.snapshot``).

Both the request and each viewer are listeners of the generation
(``Generation.listening``); a watcher task turns ``http.disconnect`` into
closing the subscription, so a client that goes away stops listening at once.

Every request is authorised first (``Authority.authorize``: ``llm.create``,
``llm.view``, ``llm.cancel``). A generation belongs to the identity that
created it: anyone else but a server key gets the same 404 as for an id that
does not exist, so an id names nothing to a stranger. With no authentication
configured every caller is anonymous (the ``Authorization`` header the
OpenAI SDKs always send is not read) and owns every generation.

``GET /v1/streams/{id}`` with an ``Accept`` that asks for
``application/json`` and not ``text/event-stream`` answers the generation's
record (``llm/record.py``) instead of the stream, with the same owner rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tidings.errors import (
    BackendUnavailable,
    InvalidChatRequest,
    InvalidCursor,
    ModelNotFound,
    ProtocolError,
    QueueFull,
    TidingsError,
    Unauthorized,
)
from tidings.hub import Event, Hub, Item, Reset, Subscription
from tidings.llm import CHANNEL_PREFIX, Completion, Generation, Relay, error_object
from tidings.llm.request import RequestLimits, validate_request
from tidings.llm.snapshot import take_snapshot
from tidings.server.api import read_body
from tidings.server.auth import Action, Authority, Kind, Principal
from tidings.server.compression import VARY, GzipSend, accepts_gzip
from tidings.server.errors import http_status
from tidings.server.sse import SSE_FRAME, SSE_HEADERS, watch_disconnect
from tidings.types import Position
from tidings.wire.codes import ErrorCode
from tidings.wire.cursor import decode_cursor, encode_cursor
from tidings.wire.json import loads as loads_json
from tidings.wire.sse import PING, encode_data, encode_event

__all__ = [
    "ChatCompletions",
    "OpenAIJSON",
    "StreamView",
    "authority_of",
    "authorized",
    "client_key",
    "history_lost",
    "list_models",
    "listen",
    "load_json",
    "lost_end",
    "openai_error",
    "refusal",
]

logger = logging.getLogger(__name__)

STREAM_ID_HEADER = "x-tidings-stream-id"
_STREAM_ID = re.compile(r"[A-Za-z0-9-][A-Za-z0-9_-]{0,127}\Z")  # "_control" is not one
_DONE = encode_data(b"[DONE]")
_OPENAI_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), *SSE_HEADERS[1:]]
#: Status of a request whose generation was cancelled before its first chunk.
CANCELLED_STATUS = 409


class OpenAIJSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def openai_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A JSON error response in OpenAI's shape."""
    return OpenAIJSON(
        error_object(message, type=type, code=code, param=param),
        status_code=status,
        headers=headers,
    )


def refusal(exc: TidingsError) -> Response:
    """The OpenAI-shaped error response for ``exc``.

    Status and code come from the server's one table (``server/errors.py``);
    only the OpenAI ``type`` and the two codes OpenAI names its own way are
    decided here. A 401 says ``WWW-Authenticate: Bearer``.
    """
    status = http_status(exc)
    code, message = exc.code, str(exc)
    headers = None
    if isinstance(exc, InvalidChatRequest) and not isinstance(exc, ModelNotFound):
        code = ErrorCode.INVALID_VALUE
    elif isinstance(exc, QueueFull):
        code = ErrorCode.TOO_MANY_GENERATIONS
        who = " for this client" if exc.per_client else ""
        message = f"too many generations are running{who} (at most {exc.limit})"
    elif isinstance(exc, Unauthorized):
        status = 401
        headers = {"www-authenticate": "Bearer"}
    return openai_error(
        status,
        message,
        type=_openai_type(status),
        code=code,
        param=getattr(exc, "param", None),
        headers=headers,
    )


def authority_of(scope: Scope) -> Authority:
    authority: Authority = scope["app"].state.tidings.authority
    return authority


def authorized(scope: Scope, action: Action) -> Principal:
    """The requester, allowed to do ``action``.

    Raises:
        Unauthorized: no identity, or one that is refused.
        PermissionDenied: the identity may not do ``action``.
    """
    authority = authority_of(scope)
    principal = authority.principal(scope)
    authority.authorize(principal, action)
    return principal


def client_key(principal: Principal, peer: str) -> str | None:
    """Whose share of ``max_generations_per_client`` a generation takes: a token's
    subject, else the client address; server API keys have no share of their own."""
    if principal.kind is Kind.CLIENT:
        return principal.identity
    if principal.kind is Kind.SERVER:
        return None
    return f"address:{peer}" if peer else None


def _not_found(stream_id: str) -> Response:
    """The answer for an unknown stream, and for someone else's (the same bytes)."""
    return openai_error(404, f"no running or recent stream {stream_id!r}", code=ErrorCode.NOT_FOUND)


def _openai_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def load_json(body: bytes) -> Any:
    try:
        return loads_json(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(
            f"the body is not valid JSON: {exc}", code=ErrorCode.INVALID_JSON
        ) from exc


def _end_response(end: dict[str, Any], headers: dict[str, str]) -> Response:
    """The error response for a generation that ended before its first chunk."""
    error = end.get("error") or {}
    status = int(end.get("http_status") or CANCELLED_STATUS)
    return OpenAIJSON({"error": error}, status_code=status, headers=headers)


def _stream_end(end: dict[str, Any]) -> bytes:
    """The last lines of a streamed answer: ``[DONE]``, or the error the SDKs raise."""
    if end.get("status") == "completed":
        return _DONE
    return encode_data(orjson.dumps({"error": end["error"]}))


def _final(end: dict[str, Any], completion: Completion, headers: dict[str, str]) -> Response:
    """The response to a non-streamed request once its generation has ended."""
    if end.get("status") == "completed":
        return OpenAIJSON(completion.result(), headers=headers)
    return _end_response(end, headers)


@contextlib.asynccontextmanager
async def listen(
    hub: Hub,
    channel: str,
    since: Position,
    receive: Receive,
    *,
    keepalive: float,
    generation: Generation | None,
) -> AsyncIterator[AsyncIterator[list[Item]]]:
    """Subscribe from ``since``; yield the batches (see ``_batches``) until the client goes."""
    subscription = hub.subscription(transport="llm")
    watcher: asyncio.Task[None] | None = None
    try:
        await subscription.add(channel, since=since)
        watcher = asyncio.get_running_loop().create_task(watch_disconnect(receive, subscription))
        async with contextlib.aclosing(_batches(subscription, keepalive, generation)) as batches:
            yield batches
    finally:
        subscription.close()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def _batches(
    subscription: Subscription, keepalive: float, generation: Generation | None
) -> AsyncGenerator[list[Item], None]:
    """Yield what is queued, batch by batch, until the subscription closes.

    An empty batch means "nothing new": every ``keepalive`` idle seconds, or
    when the generation ended without its ``end`` event reaching the hub (a
    backend failure, or a backend still busy with it when the subscription
    closes); the caller then reads ``generation.end``.
    """
    unregister = generation.on_done(subscription.wakeup) if generation is not None else lambda: None
    try:
        while True:
            items = subscription.take()
            if items:
                yield items
                continue
            # Before a closed subscription ends the stream: a server that stops
            # closes it while the end of a cancelled generation may still be on
            # its way to a backend that does not answer.
            if lost_end(generation) is not None:
                yield []
                continue
            if subscription.closed:
                return
            try:
                async with asyncio.timeout(keepalive):
                    await subscription.wait()
            except TimeoutError:
                yield []
    finally:
        unregister()


def lost_end(generation: Generation | None) -> dict[str, Any] | None:
    """The end of a generation whose ``end`` event could not be published."""
    if generation is None or not generation.done or generation.end_published:
        return None
    return generation.end


def history_lost(item: Reset) -> dict[str, Any]:
    return {
        "status": "failed",
        **error_object(
            f"the generation's history is gone ({item.reason})",
            type="server_error",
            code=ErrorCode.HISTORY_LOST,
        ),
    }


async def list_models(request: Request) -> Response:
    """``GET /v1/models``: the models the relay can route, in OpenAI's list shape.

    Public while no authentication is configured; then it needs an identity.
    """
    try:
        authorized(request.scope, Action.LLM_VIEW)
    except TidingsError as exc:
        return refusal(exc)
    relay: Relay = request.app.state.tidings.relay
    models = await relay.router.list_models()
    return OpenAIJSON(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": provider}
                for name, provider in models.items()
            ],
        }
    )


class ChatCompletions:
    """``POST /v1/chat/completions``: start a generation and relay it, streamed or whole."""

    def __init__(
        self,
        relay: Relay,
        *,
        limits: RequestLimits,
        max_body_bytes: int,
        keepalive: float,
        compression: str = "off",
    ) -> None:
        self.relay = relay
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.keepalive = keepalive
        self.compression = compression

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            principal = authorized(scope, Action.LLM_CREATE)
        except TidingsError as exc:
            await refusal(exc)(scope, receive, send)
            return
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in ("", "application/json"):
            response = openai_error(
                415, f"unsupported Content-Type {media_type!r}: send application/json"
            )
            await response(scope, receive, send)
            return
        try:
            body = await read_body(request, self.max_body_bytes)
            chat = validate_request(load_json(body), self.limits)
            client = client_key(principal, authority_of(scope).peer(scope))
            generation = await self.relay.start(chat, owner=principal.identity, client=client)
        except TidingsError as exc:
            await refusal(exc)(scope, receive, send)
            return
        try:
            with generation.listening():
                if chat.stream:
                    await self._stream(generation, chat.include_usage, scope, receive, send)
                else:
                    await self._whole(generation, scope, receive, send)
        except BackendUnavailable as exc:
            # Only subscribing can raise it, before a byte is sent: the
            # answer cannot reach its client, so stop it now.
            generation.cancel("unheard")
            await refusal(exc)(scope, receive, send)

    async def _stream(
        self,
        generation: Generation,
        include_usage: bool,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        stream_send, coding = _stream_send(self.compression, scope, send)
        async with listen(
            self.relay.hub,
            generation.channel,
            generation.origin,
            receive,
            keepalive=self.keepalive,
            generation=generation,
        ) as batches:
            # Headers and a ping at once: the client knows it is heard, and
            # an error before the first chunk travels in the stream.
            await stream_send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        *_OPENAI_SSE_HEADERS,
                        *coding,
                        (STREAM_ID_HEADER.encode(), generation.id.encode()),
                    ],
                }
            )
            await stream_send({"type": "http.response.body", "body": PING, "more_body": True})
            async for items in batches:
                out: list[bytes] = []
                end: dict[str, Any] | None = None if items else lost_end(generation)
                for item in items:
                    if isinstance(item, Reset):
                        end = history_lost(item)
                        break
                    if item.event == "end":
                        end = orjson.loads(item.raw)
                        break
                    if item.event == "message" or (item.event == "usage" and include_usage):
                        out.append(encode_data(item.raw))
                if end is not None:
                    out.append(_stream_end(end))
                    await stream_send({"type": "http.response.body", "body": b"".join(out)})
                    return
                await stream_send(
                    {
                        "type": "http.response.body",
                        "body": b"".join(out) or PING,
                        "more_body": True,
                    }
                )
        # The client went away; its generation goes on for others (or is
        # cancelled once unheard for the grace period).

    async def _whole(
        self, generation: Generation, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers = {STREAM_ID_HEADER: generation.id}
        completion = Completion(generation.id, generation.created, generation.model)
        async with listen(
            self.relay.hub,
            generation.channel,
            generation.origin,
            receive,
            keepalive=self.keepalive,
            generation=generation,
        ) as batches:
            async for items in batches:
                lost = None if items else lost_end(generation)
                if lost is not None:
                    await _final(lost, completion, headers)(scope, receive, send)
                    return
                for item in items:
                    if isinstance(item, Reset):
                        await _end_response(history_lost(item) | {"http_status": 500}, headers)(
                            scope, receive, send
                        )
                        return
                    if item.event == "end":
                        final = _final(orjson.loads(item.raw), completion, headers)
                        await final(scope, receive, send)
                        return
                    completion.add(orjson.loads(item.raw))


class StreamView:
    """``GET /v1/streams/{id}`` (replay and follow over SSE) and ``DELETE`` (cancel)."""

    def __init__(
        self, relay: Relay, *, retry: float, keepalive: float, compression: str = "off"
    ) -> None:
        self.relay = relay
        self.retry_ms = round(retry * 1000)
        self.keepalive = keepalive
        self.compression = compression

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream_id = scope["path_params"]["stream_id"]
        delete = scope["method"] == "DELETE"
        try:
            principal = authorized(scope, Action.LLM_CANCEL if delete else Action.LLM_VIEW)
            mine = _STREAM_ID.match(stream_id) is not None and await self._owned_by(
                stream_id, principal, authority_of(scope)
            )
        except TidingsError as exc:
            await refusal(exc)(scope, receive, send)
            return
        if not _STREAM_ID.match(stream_id):
            response = openai_error(404, f"no stream {stream_id[:80]!r}", code=ErrorCode.NOT_FOUND)
        elif not mine:
            response = _not_found(stream_id)
        elif delete:
            response = await self._delete(stream_id)
        elif _wants_json(scope):
            response = await self._record(stream_id)
        else:
            await self._get(stream_id, scope, receive, send)
            return
        await response(scope, receive, send)

    async def _owned_by(self, stream_id: str, principal: Principal, authority: Authority) -> bool:
        """Whether ``principal`` may see the generation (an unknown one is nobody's).

        Raises:
            BackendUnavailable: the owner cannot be read.
        """
        if not authority.configured or principal.kind is Kind.SERVER:
            return True
        return await self.relay.owner(stream_id) == principal.identity

    async def _delete(self, stream_id: str) -> Response:
        try:
            end = await self.relay.cancel_anywhere(stream_id, "deleted")
        except BackendUnavailable as exc:
            return refusal(exc)
        if end is None:
            return _not_found(stream_id)
        status = end.get("status", "cancelling")
        return OpenAIJSON(
            {"id": stream_id, "object": "tidings.stream", "status": status},
            status_code=202 if status == "cancelling" else 200,
        )

    async def _record(self, stream_id: str) -> Response:
        try:
            record = await self.relay.record(stream_id)
        except BackendUnavailable as exc:
            return refusal(exc)
        if record is None:
            return _not_found(stream_id)
        return OpenAIJSON(record.to_json(), headers={"cache-control": "no-store"})

    async def _origin(self, channel: str, generation: Generation | None) -> Position | None:
        if generation is not None:
            return generation.origin
        position = await self.relay.hub.position(channel)
        return Position(position.epoch, 0) if position.offset else None

    async def _get(self, stream_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.relay.hub
        channel = CHANNEL_PREFIX + stream_id
        generation = self.relay.get(stream_id)
        request = Request(scope, receive)
        try:
            origin = await self._origin(channel, generation)
            if origin is None:
                raise LookupError
            since = _since(request, channel, origin)
            last = (await hub.history(channel, limit=1)).events
        except LookupError:
            await _not_found(stream_id)(scope, receive, send)
            return
        except TidingsError as exc:  # an unreadable cursor, the backend down
            await refusal(exc)(scope, receive, send)
            return
        if last and last[-1].event == "end" and _at_or_after(since, last[-1]):
            # The client has everything: 204 also tells an EventSource not to reconnect.
            await Response(status_code=204)(scope, receive, send)
            return
        snapshot = request.query_params.get("snapshot", "0")
        if snapshot not in ("0", "1"):
            response = openai_error(400, "snapshot must be 0 or 1", param="snapshot")
            await response(scope, receive, send)
            return
        try:
            if snapshot == "1":
                await self._snapshot(channel, since, generation, scope, receive, send)
            elif generation is not None:
                with generation.listening():
                    await self._follow(channel, since, generation, scope, receive, send)
            else:
                # The generation runs on another server (or has ended): say we listen.
                async with self.relay.remote_listener(stream_id):
                    await self._follow(channel, since, generation, scope, receive, send)
        except BackendUnavailable as exc:  # from reading or subscribing, before a byte is sent
            await refusal(exc)(scope, receive, send)

    async def _snapshot(
        self,
        channel: str,
        since: Position,
        generation: Generation | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """``?snapshot=1``: what came after ``since`` as one chunk, then the rest live.

        The snapshot frame's ``id:`` is the cursor of the cut, so a reconnect
        resumes right after it; an ended generation gets the snapshot and its
        ``end`` and no subscription at all.
        """
        snapshot = await take_snapshot(self.relay.hub, channel, since=since)
        frame = b""
        if snapshot.chunk is not None:
            cursor = encode_cursor({channel: snapshot.position})
            data = orjson.dumps(snapshot.chunk).decode()
            frame = encode_event(data, event=snapshot.event, id=cursor)
        if snapshot.end is not None:
            head = encode_event(retry=self.retry_ms, id=encode_cursor({channel: since}))
            send, coding = _stream_send(self.compression, scope, send)
            headers = [*SSE_HEADERS, *coding]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            body = head + frame + SSE_FRAME(snapshot.end)
            await send({"type": "http.response.body", "body": body})
            return
        args = (channel, snapshot.position, generation, scope, receive, send)
        if generation is not None:
            with generation.listening():
                await self._follow(*args, start=since, snapshot=frame)
        else:
            async with self.relay.remote_listener(channel.removeprefix(CHANNEL_PREFIX)):
                await self._follow(*args, start=since, snapshot=frame)

    async def _follow(
        self,
        channel: str,
        since: Position,
        generation: Generation | None,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        start: Position | None = None,
        snapshot: bytes = b"",
    ) -> None:
        """Stream ``channel`` from ``since``.

        With ``?snapshot=1``, the head's ``id:`` is ``start`` (where the viewer
        asked to start) and the ``snapshot`` frame, whose cursor is ``since``,
        comes right after it.
        """
        async with listen(
            self.relay.hub,
            channel,
            since,
            receive,
            keepalive=self.keepalive,
            generation=generation,
        ) as batches:
            head = encode_event(retry=self.retry_ms, id=encode_cursor({channel: start or since}))
            head += snapshot
            send, coding = _stream_send(self.compression, scope, send)
            headers = [*SSE_HEADERS, *coding]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": head, "more_body": True})
            async for items in batches:
                lost = None if items else lost_end(generation)
                if lost is not None:
                    frame = encode_event(orjson.dumps(lost).decode(), event="end")
                    await send({"type": "http.response.body", "body": frame})
                    return
                frames = []
                finished = False
                for item in items:
                    frames.append(SSE_FRAME(item))
                    if isinstance(item, Event) and item.event == "end":
                        finished = True
                        break
                body = b"".join(frames) or PING
                await send({"type": "http.response.body", "body": body, "more_body": not finished})
                if finished:
                    return


def _stream_send(
    compression: str, scope: Scope, send: Send
) -> tuple[Send, list[tuple[bytes, bytes]]]:
    """The ``send`` of a streamed answer and the headers it adds: gzip-coded and
    flushed per body (``server/compression.py``) when ``compression`` is
    ``"gzip"`` and the client accepts it; ``Vary`` whenever it may be."""
    if compression != "gzip":
        return send, []
    if accepts_gzip(scope.get("headers", ())):
        return GzipSend(send), [VARY]
    return send, [VARY]


def _wants_json(scope: Scope) -> bool:
    """Whether the request's ``Accept`` asks for ``application/json`` and not
    ``text/event-stream`` (an EventSource always asks for the latter)."""
    accept = Headers(scope=scope).get("accept", "")
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return "application/json" in types and "text/event-stream" not in types


def _since(request: Request, channel: str, origin: Position) -> Position:
    """Where a viewer starts: ``Last-Event-ID``, ``?last_event_id=``, ``?after=N``, or the start.

    ``after=N`` skips the first N events: a client that received N ``data:``
    chunks from ``POST /v1/chat/completions`` resumes with it.
    """
    cursor_text = request.headers.get("last-event-id")
    if cursor_text is None:
        cursor_text = request.query_params.get("last_event_id")
    if cursor_text:
        return decode_cursor(cursor_text).get(channel, origin)
    after = request.query_params.get("after")
    if after is None:
        return origin
    if not (after.isascii() and after.isdigit()) or len(after) > 12:
        raise InvalidCursor(after, "after must be a number of events")
    return Position(origin.epoch, origin.offset + int(after))


def _at_or_after(since: Position, event: Event) -> bool:
    return since.epoch == event.epoch and since.offset >= event.offset
