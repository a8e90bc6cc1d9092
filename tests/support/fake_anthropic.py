"""FakeAnthropic: a local Anthropic Messages API (``POST /v1/messages``) for tests.

Real HTTP/1.1 on a free loopback port and real SSE with ``event:`` names, as
the Messages API streams. Each request's behaviour comes from the
:class:`Scenario` registered for its model name: delays, an HTTP error, an
``error`` event, malformed data or an abrupt cut mid-stream, a pause until
the test releases it, a tool call, an event type no client knows. Every
request is recorded (:class:`Call`, shared with the OpenAI fake), including
the moment the client disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from tests.support.fake_openai import (
    Call,
    FakeServer,
    _released_or_disconnected,
    _respond,
    _sleep_or_disconnect,
    _watch_eof,
    default_tokens,
    read_request,
)

__all__ = ["Call", "FakeAnthropic", "Scenario"]

INPUT_TOKENS = 7


@dataclass
class Scenario:
    """How the fake answers one model name.

    Attributes:
        tokens: The text deltas of the answer.
        first_delay: Seconds before the first text delta.
        interval: Seconds between deltas.
        status: An HTTP status other than 200 refuses the request with an
            error of type ``error_type``.
        fail_after: Send an ``error`` event (``error_type``) after this many deltas, then end.
        cut_after: Close the connection abruptly after this many deltas.
        malformed_after: Send data that is not JSON after this many deltas.
        pause_after: Stop after this many deltas until ``release`` is set.
        tool_call: Answer with text, then a tool call (name, input JSON in fragments).
        stop_reason: The ``stop_reason`` of ``message_delta``.
        unknown_events: Send an event of a type no client knows before each delta.
        send_delta: Whether to send ``message_delta`` (the stop reason and usage).
        send_stop: Whether to end with ``message_stop``.
    """

    tokens: list[str] = field(default_factory=default_tokens)
    first_delay: float = 0.0
    interval: float = 0.0
    status: int = 200
    error_type: str = "overloaded_error"
    fail_after: int | None = None
    cut_after: int | None = None
    malformed_after: int | None = None
    pause_after: int | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    tool_call: tuple[str, list[str]] | None = None
    stop_reason: str | None = None
    unknown_events: bool = False
    send_delta: bool = True
    send_stop: bool = True


class FakeAnthropic(FakeServer[Scenario]):
    """``async with FakeAnthropic() as upstream:`` serves ``upstream.base_url``."""

    def __init__(self, *, default: Scenario | None = None) -> None:
        super().__init__(default or Scenario())
        #: ``GET /v1/models`` lists "claude-fake" and the scenarios, this many per page.
        self.page_size = 1000
        self.model_requests: list[dict[str, list[str]]] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, target, headers, body = await read_request(reader)
        url = urlsplit(target)
        if method == "GET" and url.path == "/v1/models":
            await self._models(writer, parse_qs(url.query))
            return
        if method != "POST" or url.path != "/v1/messages":
            await _respond(writer, 404, _error("not_found_error", f"no route {method} {target}"))
            return
        document = orjson.loads(body)
        call = Call(body=document, headers=headers)
        await self._record(call)
        scenario = self.scenarios.get(document.get("model", ""), self.default)
        if scenario.status != 200:
            await _respond(writer, scenario.status, _error(scenario.error_type, "refused"))
            call.finished.set()
            return
        watcher = asyncio.get_running_loop().create_task(_watch_eof(reader, call))
        try:
            await self._stream(writer, document, scenario, call)
        except ConnectionError:
            call.disconnected.set()
        finally:
            if not call.disconnected.is_set():
                watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _models(self, writer: asyncio.StreamWriter, query: dict[str, list[str]]) -> None:
        self.model_requests.append(query)
        if self.models_status != 200:
            await _respond(writer, self.models_status, _error("api_error", "no list"))
            return
        names = sorted({"claude-fake", *self.scenarios})
        after = query.get("after_id", [""])[0]
        start = names.index(after) + 1 if after in names else 0
        page = names[start : start + self.page_size]
        await _respond(
            writer,
            200,
            {
                "data": [{"id": name, "type": "model", "display_name": name} for name in page],
                "has_more": start + len(page) < len(names),
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            },
        )

    async def _stream(
        self, writer: asyncio.StreamWriter, request: dict[str, Any], scenario: Scenario, call: Call
    ) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )

        async def send(kind: str, payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
            frame = f"event: {kind}\ndata: {data}\n\n".encode()
            writer.write(b"%x\r\n%b\r\n" % (len(frame), frame))
            await writer.drain()
            call.first_byte.set()

        async def event(kind: str, **fields: Any) -> None:
            await send(kind, {"type": kind, **fields})

        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": request.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
        }
        await event("message_start", message=message)
        await event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        await event("ping")
        if scenario.first_delay:
            await _sleep_or_disconnect(scenario.first_delay, call)
        # (event type, fields) of each delta; a block boundary is not a delta.
        pieces: list[tuple[str, dict[str, Any]]] = [
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": token}})
            for token in scenario.tokens
        ]
        pieces.append(("content_block_stop", {"index": 0}))
        if scenario.tool_call is not None:
            name, fragments = scenario.tool_call
            block = {"type": "tool_use", "id": "toolu_1", "name": name, "input": {}}
            pieces.append(("content_block_start", {"index": 1, "content_block": block}))
            pieces += [
                (
                    "content_block_delta",
                    {"index": 1, "delta": {"type": "input_json_delta", "partial_json": fragment}},
                )
                for fragment in fragments
            ]
            pieces.append(("content_block_stop", {"index": 1}))
        sent = 0
        for kind, fields in pieces:
            if kind != "content_block_delta":
                await event(kind, **fields)
                continue
            if scenario.pause_after == sent:
                call.paused.set()
                await _released_or_disconnected(scenario.release, call)
            if scenario.fail_after == sent:
                await event("error", error={"type": scenario.error_type, "message": "failed"})
                writer.write(b"0\r\n\r\n")
                call.finished.set()
                return
            if scenario.malformed_after == sent:
                await send("content_block_delta", '{"type": "content_block_delta", "index": 0,')
            if scenario.cut_after == sent:
                writer.transport.abort()
                call.finished.set()
                return
            if sent and scenario.interval:
                await _sleep_or_disconnect(scenario.interval, call)
            if scenario.unknown_events:
                await event("future_event", detail={"index": sent})
            await event(kind, **fields)
            sent += 1
            call.tokens_sent = sent
        stop = scenario.stop_reason or ("tool_use" if scenario.tool_call else "end_turn")
        if scenario.send_delta:
            await event(
                "message_delta",
                delta={"stop_reason": stop, "stop_sequence": None},
                usage={"output_tokens": sent},
            )
        if scenario.send_stop:
            await event("message_stop")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        call.finished.set()


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}
