"""A client that stops reading a long streamed answer cannot grow the server's memory.

``POST /v1/chat/completions`` with ``stream: true``, on both write paths: while
the socket is paused the answer queues in the request's subscription, whose
outbox is bounded (``outbox_max_bytes``); past the bound the subscription
closes as a slow consumer. On the fast path the server then drops what the
transport holds and closes the connection, the answer left incomplete; the
generation goes on for anyone else."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import orjson
import pytest

from tests.support.env import TIMEOUT, eventually
from tests.support.fake_openai import FakeUpstream, Scenario
from tidings.llm import LLMConfig
from tidings.server.app import create_app
from tidings.settings import Settings
from tidings.testing import run_server

OUTBOX = 64 * 1024
#: 4 MiB of answer: far more than the outbox, the transport's buffer and the
#: socket buffers of a client that reads nothing.
TOKENS = ["x" * 2048] * 2048


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(default=Scenario(tokens=TOKENS)) as fake:
        yield fake


def _settings(upstream: FakeUpstream) -> Settings:
    table = {
        "providers": {"quick": {"kind": "openai", "base_url": upstream.base_url}},
        "models": {"quick-*": "quick"},
    }
    return Settings(log_level="warning", outbox_max_bytes=OUTBOX, llm=LLMConfig.from_table(table))


def _stalled_request(port: int) -> socket.socket:
    """A streamed completion request from a client with a tiny buffer that never reads."""
    body = orjson.dumps(
        {"model": "quick-1", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
    )
    return sock


def _read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sent until it closed the connection."""
    sock.settimeout(TIMEOUT)
    received = bytearray()
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return bytes(received)


@pytest.mark.parametrize("fast_write", [True, False], ids=["fast", "asgi"])
async def test_a_reader_that_stalls_is_cut_off_at_the_outbox_bound(
    upstream: FakeUpstream, fast_write: bool
) -> None:
    app = create_app(settings=_settings(upstream))
    async with run_server(app, settings=_settings(upstream), fast_write=fast_write) as base:
        hub = app.state.tidings.hub
        sock = _stalled_request(int(base.rsplit(":", 1)[1]))
        try:
            await eventually(lambda: hub.stats().slow_consumers == 1)
            if fast_write:
                received = await asyncio.to_thread(_read_to_end, sock)
                assert received.startswith(b"HTTP/1.1 200 OK\r\n")
                assert b"data: " in received
                # Cut off, not ended: no [DONE], no last chunk.
                assert b"[DONE]" not in received
                assert not received.endswith(b"0\r\n\r\n")
            # The generation does not depend on this client: it runs to its end.
            call = await upstream.next_call(1, TIMEOUT)
            async with asyncio.timeout(TIMEOUT):
                await call.finished.wait()
            assert call.tokens_sent == len(TOKENS)
        finally:
            sock.close()
