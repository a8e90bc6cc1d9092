"""FakeUpstream: a local OpenAI-compatible ``/chat/completions`` server for tests.

Real HTTP/1.1 on a free loopback port and real SSE (chunked
``text/event-stream``), so whatever stands in front of it (Tidings' relay, the
benchmark) uses its real network path. Each request's behaviour comes from the
:class:`Scenario` registered for its model name: delays, an HTTP error, an
error or an abrupt cut mid-stream, a pause until the test releases it, tool
calls. Every request is recorded (:class:`Call`), including the moment the
client disconnected, which is how tests observe that a cancelled generation
closed its upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar

import orjson

__all__ = ["Call", "FakeUpstream", "Scenario"]


def default_tokens(count: int = 12) -> list[str]:
    return [f"tok{index} " for index in range(count)]


@dataclass
class Scenario:
    """How the fake answers one model name.

    Attributes:
        tokens: The content deltas of the answer.
        first_delay: Seconds before the first content token.
        interval: Seconds between tokens.
        status: An HTTP status other than 200 refuses the request with
            ``error_message`` in OpenAI's error body.
        fail_after: Send ``data: {"error": …}`` after this many tokens, then end.
        cut_after: Close the connection abruptly after this many tokens.
        garbage_after: Send ``data: `` with ``garbage`` (not a chunk) after
            this many tokens, then carry on as if nothing happened.
        garbage: What ``garbage_after`` sends.
        pause_after: Stop after this many tokens until ``release`` is set.
        tool_call: Answer with a tool call (name, arguments in fragments) instead of text.
        send_done: Whether to end with ``data: [DONE]``.
        echo_authorization: With ``status``, quote the request's ``Authorization``
            header in the error body (message, type and code), as careless
            upstreams and proxies do.
    """

    tokens: list[str] = field(default_factory=default_tokens)
    first_delay: float = 0.0
    interval: float = 0.0
    status: int = 200
    error_message: str = "the fake upstream refused the request"
    fail_after: int | None = None
    cut_after: int | None = None
    garbage_after: int | None = None
    garbage: str = '{"choices": [{"index": 0, "delta": {"content": "broken'
    pause_after: int | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    tool_call: tuple[str, list[str]] | None = None
    send_done: bool = True
    echo_authorization: bool = False


@dataclass
class Call:
    """One request the fake received."""

    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    tokens_sent: int = 0
    first_byte: asyncio.Event = field(default_factory=asyncio.Event)
    paused: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


S = TypeVar("S")


class FakeServer(Generic[S]):
    """A loopback HTTP/1.1 server answering by scenario (``S``) per model name,
    recording every call: what the OpenAI and Anthropic fakes share."""

    def __init__(self, default: S) -> None:
        self.default = default
        self.scenarios: dict[str, S] = {}
        self.calls: list[Call] = []
        #: The status of ``GET /v1/models``.
        self.models_status = 200
        self._new_call = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def scenario(self, model: str, scenario: S) -> S:
        self.scenarios[model] = scenario
        return scenario

    async def next_call(self, count: int, timeout: float) -> Call:
        """Wait until at least ``count`` calls were received and return the ``count``-th."""
        async with asyncio.timeout(timeout), self._new_call:
            await self._new_call.wait_for(lambda: len(self.calls) >= count)
        return self.calls[count - 1]

    async def _record(self, call: Call) -> None:
        async with self._new_call:
            self.calls.append(call)
            self._new_call.notify_all()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
    """Method, target, headers (lower-case names) and body of one HTTP/1.1 request."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, target, headers, body


class FakeUpstream(FakeServer[Scenario]):
    """``async with FakeUpstream() as upstream:`` serves ``upstream.base_url``;
    ``GET /v1/models`` lists "fake" and the scenarios."""

    def __init__(self, *, default: Scenario | None = None) -> None:
        super().__init__(default or Scenario())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, path, headers, body = await read_request(reader)
        if method == "GET" and path == "/v1/models":
            names = sorted({"fake", *self.scenarios})
            await _respond(
                writer,
                self.models_status,
                {"object": "list", "data": [{"id": name, "object": "model"} for name in names]},
            )
            return
        if method != "POST" or path != "/v1/chat/completions":
            await _respond(writer, 404, {"error": {"message": f"no route {method} {path}"}})
            return
        document = orjson.loads(body)
        call = Call(body=document, headers=headers)
        await self._record(call)
        scenario = self.scenarios.get(document.get("model", ""), self.default)
        if scenario.status != 200:
            error: dict[str, Any] = {"message": scenario.error_message, "type": "fake"}
            error["code"] = None
            if scenario.echo_authorization:
                echoed = headers.get("authorization", "")
                error = {"message": f"bad credentials: {echoed}", "type": echoed, "code": echoed}
            await _respond(writer, scenario.status, {"error": error})
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

    async def _stream(
        self, writer: asyncio.StreamWriter, request: dict[str, Any], scenario: Scenario, call: Call
    ) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )
        model = request.get("model", "fake")
        base = {"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "created": 1}

        async def send(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
            frame = f"data: {data}\n\n".encode()
            writer.write(b"%x\r\n%b\r\n" % (len(frame), frame))
            await writer.drain()
            call.first_byte.set()

        def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                **base,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        await send(choice({"role": "assistant", "content": ""}))
        if scenario.first_delay:
            await _sleep_or_disconnect(scenario.first_delay, call)
        pieces: list[dict[str, Any]]
        if scenario.tool_call is not None:
            name, fragments = scenario.tool_call
            pieces = [
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            ] + [{"tool_calls": [{"index": 0, "function": {"arguments": f}}]} for f in fragments]
        else:
            pieces = [{"content": token} for token in scenario.tokens]
        for index, piece in enumerate(pieces):
            if scenario.pause_after == index:
                call.paused.set()
                await _released_or_disconnected(scenario.release, call)
            if scenario.fail_after == index:
                await send({"error": {"message": "the fake upstream failed mid-stream"}})
                writer.write(b"0\r\n\r\n")
                call.finished.set()
                return
            if scenario.cut_after == index:
                writer.transport.abort()
                call.finished.set()
                return
            if scenario.garbage_after == index:
                await send(scenario.garbage)
            if index and scenario.interval:
                await _sleep_or_disconnect(scenario.interval, call)
            await send(choice(piece))
            call.tokens_sent += 1
        await send(choice({}, "tool_calls" if scenario.tool_call else "stop"))
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 3, "completion_tokens": len(pieces)}
            usage["total_tokens"] = usage["prompt_tokens"] + len(pieces)
            await send({**base, "model": model, "choices": [], "usage": usage})
        if scenario.send_done:
            await send("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        call.finished.set()


async def _sleep_or_disconnect(delay: float, call: Call) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await call.disconnected.wait()
    if call.disconnected.is_set():
        raise ConnectionResetError("the client disconnected")


async def _released_or_disconnected(release: asyncio.Event, call: Call) -> None:
    waiters = [
        asyncio.ensure_future(release.wait()),
        asyncio.ensure_future(call.disconnected.wait()),
    ]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    if call.disconnected.is_set():
        raise ConnectionResetError("the client disconnected")


async def _watch_eof(reader: asyncio.StreamReader, call: Call) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass
    call.disconnected.set()


async def _respond(writer: asyncio.StreamWriter, status: int, document: dict[str, Any]) -> None:
    body = orjson.dumps(document)
    writer.write(
        b"HTTP/1.1 %d Error\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%b" % (status, len(body), body)
    )
    await writer.drain()


@contextlib.asynccontextmanager
async def fake_upstream(**options: Any) -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(**options) as upstream:
        yield upstream
