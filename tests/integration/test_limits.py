"""Connection limits and deadlines under ``tidings serve``, on raw sockets, fast and plain paths.

Each attack gets its refusal (status, then the socket closed within a bound)
while another client is still served; the caps count streams, free a slot
when a stream ends (the client vanishing included) and, behind a trusted
proxy, give each forwarded address its own budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from tests.support.env import TIMEOUT, eventually
from tests.support.server import ServerProcess
from tidings.settings import Settings
from tidings.testing import run_server

#: Short deadlines: every wait below is bounded by a few of these.
DEADLINES = {
    "TIDINGS_HEADER_TIMEOUT": "1",
    "TIDINGS_BODY_TIMEOUT": "1",
    "TIDINGS_IDLE_TIMEOUT": "1",
    "TIDINGS_MAX_URL_BYTES": "16384",
    "TIDINGS_MAX_HEADER_BYTES": "32768",
    "TIDINGS_MAX_HEADERS": "100",
}
WS_HEAD = (
    "upgrade: websocket\r\nconnection: Upgrade\r\n"
    "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
)


@pytest.fixture(scope="module", params=["fast", "asgi"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    env = {**DEADLINES, "TIDINGS_FAST_WRITE": "1" if request.param == "fast" else "0"}
    with ServerProcess(env=env) as process:
        yield process


@contextlib.asynccontextmanager
async def connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> bytes:
    """Everything the server sends until it closes; fails if it does not close in time."""
    chunks = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionError:  # reset: what came before it was read already
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def headers_of(answer: bytes) -> dict[str, str]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in head)}


async def healthy(server: ServerProcess) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(server.url + "/healthz")
    assert response.status_code == 200


async def refused(port: int, request: bytes, *, then: bytes = b"") -> bytes:
    """Send ``request`` (and ``then``, which the server may no longer read); the whole answer."""
    async with connection(port) as (reader, writer):
        writer.write(request)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            if then:
                writer.write(then)
                await writer.drain()
        return await until_closed(reader)


def channels_query(count: int) -> str:
    return "&".join(f"channel=t{uuid.uuid4().hex[:8]}-{i:03d}-{'x' * 190}" for i in range(count))


# -- sizes ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http", "ws"])
async def test_a_request_line_past_the_limit_gets_414_and_a_closed_socket(
    server: ServerProcess, kind: str
) -> None:
    upgrade = WS_HEAD if kind == "ws" else ""
    request = f"GET /ws?{'a' * 20_000} HTTP/1.1\r\nhost: x\r\n{upgrade}\r\n".encode()
    answer = await refused(server.port, request)
    assert status_of(answer) == 414
    assert headers_of(answer)["connection"] == "close"
    assert b'"code":"too_large"' in answer
    await healthy(server)


@pytest.mark.parametrize("kind", ["http", "ws"])
async def test_headers_past_the_byte_limit_get_431_before_they_are_all_read(
    server: ServerProcess, kind: str
) -> None:
    upgrade = WS_HEAD if kind == "ws" else ""
    request = f"GET /ws HTTP/1.1\r\nhost: x\r\n{upgrade}x-big: ".encode() + b"a" * 40_000
    # A head that never ends: the server answers once the limit is passed.
    async with connection(server.port) as (reader, writer):
        writer.write(request)
        await writer.drain()
        served = asyncio.create_task(healthy(server))
        try:
            answer = await until_closed(reader)
        finally:
            await served
    assert status_of(answer) == 431
    assert headers_of(answer)["connection"] == "close"


async def test_a_huge_header_stream_is_cut_off_and_others_are_served(
    server: ServerProcess,
) -> None:
    before = server.rss_kib()
    async with connection(server.port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ")
        served = asyncio.create_task(healthy(server))
        try:
            # Up to 8 MiB more, or until the server stops reading: bounded either way.
            with contextlib.suppress(ConnectionError):
                async with asyncio.timeout(TIMEOUT):
                    for _ in range(128):
                        writer.write(b"a" * 65536)
                        await writer.drain()
            answer = await until_closed(reader)
        finally:
            await served
    assert answer == b"" or status_of(answer) == 431
    # Cut off at the limit, not buffered: the server's memory hardly moves.
    assert server.rss_kib() - before < 32 * 1024


@pytest.mark.parametrize("kind", ["http", "ws"])
async def test_too_many_header_lines_get_431(server: ServerProcess, kind: str) -> None:
    upgrade = WS_HEAD if kind == "ws" else ""
    lines = "".join(f"x-h{i}: v\r\n" for i in range(101))
    answer = await refused(
        server.port, f"GET /ws HTTP/1.1\r\nhost: x\r\n{upgrade}{lines}\r\n".encode()
    )
    assert status_of(answer) == 431
    await healthy(server)


@pytest.mark.parametrize("count", [40, 60])
async def test_a_long_valid_url_works_on_ws_as_on_sse(server: ServerProcess, count: int) -> None:
    query = channels_query(count)
    assert len(query) > 8500
    async with (
        httpx.AsyncClient(timeout=TIMEOUT) as client,
        client.stream("GET", f"{server.url}/sse?{query}") as response,
    ):
        assert response.status_code == 200
    async with connection(server.port) as (reader, writer):
        writer.write(f"GET /ws?{query} HTTP/1.1\r\nhost: x\r\n{WS_HEAD}\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
    assert status_of(head) == 101


async def test_a_header_line_over_8_kib_works_on_ws(server: ServerProcess) -> None:
    cookie = "c=" + "x" * 12_000
    async with connection(server.port) as (reader, writer):
        writer.write(f"GET /ws HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n{WS_HEAD}\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
    assert status_of(head) == 101


# -- deadlines -----------------------------------------------------------------


async def test_a_slowloris_head_gets_408_after_the_header_timeout(server: ServerProcess) -> None:
    async with connection(server.port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await writer.drain()
        closed = asyncio.create_task(until_closed(reader, TIMEOUT * 2))
        # One byte now and then, as a slowloris does, until the server gives up.
        for byte in b"x-slow: " * 20:
            if closed.done():
                break
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.wait([closed], timeout=0.2)
        answer = await closed
    assert status_of(answer) == 408
    assert b'"code":"timeout"' in answer
    await healthy(server)


async def test_a_silent_connection_is_closed_without_an_answer(server: ServerProcess) -> None:
    async with connection(server.port) as (reader, _):
        assert await until_closed(reader) == b""
    await healthy(server)


async def test_a_body_that_stops_coming_gets_408(server: ServerProcess) -> None:
    request = (
        b"POST /api/publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b'content-length: 100\r\n\r\n{"channel": '
    )
    answer = await refused(server.port, request)
    assert status_of(answer) == 408
    await healthy(server)


async def test_an_idle_keep_alive_connection_is_closed(server: ServerProcess) -> None:
    async with connection(server.port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        answer = await until_closed(reader)
    assert status_of(answer) == 200


async def never_accepts(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()
    await asyncio.Event().wait()


@pytest.mark.parametrize("fast_write", [True, False], ids=["fast", "asgi"])
async def test_a_websocket_handshake_the_app_never_finishes_gets_408(fast_write: bool) -> None:
    # The app never ends the connection it was handed: the stop waits the drain out.
    limits = Settings(log_level="warning", ws_handshake_timeout=0.5, drain_timeout=1)
    async with run_server(never_accepts, settings=limits, fast_write=fast_write) as url:
        port = int(url.rsplit(":", 1)[1])
        answer = await refused(port, f"GET /ws HTTP/1.1\r\nhost: x\r\n{WS_HEAD}\r\n".encode())
    assert status_of(answer) == 408


# -- connection caps --------------------------------------------------------------


@pytest.fixture(scope="module", params=["fast", "asgi"])
def capped(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    env = {
        "TIDINGS_FAST_WRITE": "1" if request.param == "fast" else "0",
        "TIDINGS_MAX_CONNECTIONS": "6",
        "TIDINGS_MAX_CONNECTIONS_PER_CLIENT": "2",
        "TIDINGS_TRUSTED_PROXIES": "127.0.0.1",
    }
    with ServerProcess(env=env) as process:
        yield process


async def open_stream(
    port: int, forwarded: str, *, ws: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """An SSE stream (or a WebSocket) from ``forwarded``; its answer's head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    path = "/ws?channel=capped" if ws else "/sse?channel=capped"
    upgrade = WS_HEAD if ws else ""
    writer.write(
        f"GET {path} HTTP/1.1\r\nhost: x\r\nx-forwarded-for: {forwarded}\r\n{upgrade}\r\n".encode()
    )
    await writer.drain()
    async with asyncio.timeout(TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head


async def open_total(server: ServerProcess) -> int | None:
    """Requests and streams open on the server besides this one; None while it refuses (503)."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(server.url + "/api/stats")
    if response.status_code == 503:
        return None  # at the cap still: the sockets just dropped are not all closed yet
    total: int = response.json()["open"]["total"]
    return total - 1


async def has_open(server: ServerProcess, count: int) -> bool:
    return await open_total(server) == count


async def test_each_forwarded_address_has_its_own_budget_and_slots_come_back(
    capped: ServerProcess,
) -> None:
    streams = []
    try:
        for _ in range(2):
            _reader, writer, head = await open_stream(capped.port, "10.0.0.1")
            assert status_of(head) == 200
            streams.append(writer)
        for ws in (False, True):
            _, writer, head = await open_stream(capped.port, "10.0.0.1", ws=ws)
            writer.close()
            assert status_of(head) == 503
            assert headers_of(head)["retry-after"].isdigit()
        # Another forwarded address behind the same proxy: a budget of its own.
        _, writer, head = await open_stream(capped.port, "10.0.0.2", ws=True)
        streams.append(writer)
        assert status_of(head) == 101
        await eventually(lambda: has_open(capped, 3))
    finally:
        # The clients vanish mid-stream: no goodbye, the sockets just go.
        for writer in streams:
            writer.transport.abort()
    await eventually(lambda: has_open(capped, 0))
    _, writer, head = await open_stream(capped.port, "10.0.0.1")
    writer.transport.abort()
    assert status_of(head) == 200


async def test_the_total_cap_refuses_with_503_and_frees_slots(capped: ServerProcess) -> None:
    held = []
    try:
        # Six sockets from six addresses: the server's whole budget.
        for i in range(6):
            _, writer, head = await open_stream(capped.port, f"10.0.1.{i}")
            assert status_of(head) == 200
            held.append(writer)
        answer = await refused(capped.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status_of(answer) == 503
        assert headers_of(answer)["retry-after"].isdigit()
        assert b'"code":"unavailable"' in answer
    finally:
        for writer in held:
            writer.transport.abort()
    await eventually(lambda: has_open(capped, 0))
    await healthy(capped)


# -- fuzzing --------------------------------------------------------------------

_TOKEN = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-_0123456789"), min_size=1, max_size=20)
_BYTES = st.binary(max_size=300)
_REQUEST_LINE = st.one_of(
    st.builds(
        lambda method, path, version: f"{method} {path} {version}".encode(),
        st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS", "BREW", ""]),
        st.one_of(
            st.sampled_from(["/healthz", "/sse?channel=a", "/ws", "/api/stats", "*", ""]),
            st.text(max_size=200).map(lambda text: "/" + text),
        ),
        st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 x", ""]),
    ),
    _BYTES,
)
_HEADER = st.one_of(
    st.builds(lambda name, value: name.encode() + b": " + value, _TOKEN, _BYTES),
    st.sampled_from(
        [
            b"upgrade: websocket",
            b"connection: Upgrade",
            b"sec-websocket-version: 13",
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
            b"content-length: 5",
            b"content-length: -1",
            b"transfer-encoding: chunked",
            b"expect: 100-continue",
        ]
    ),
    _BYTES,
)
_REQUEST = st.builds(
    lambda line, headers, end, body: line + b"\r\n" + b"\r\n".join(headers) + end + body,
    _REQUEST_LINE,
    st.lists(_HEADER, max_size=12),
    st.sampled_from([b"\r\n\r\n", b"\r\n", b""]),
    st.binary(max_size=64),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=_REQUEST)
def test_fuzzed_heads_get_an_answer_or_a_clean_close(server: ServerProcess, request: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        with contextlib.suppress(ConnectionError):
            sock.sendall(request)
        answer = b""
        # Deadlines (1 s) end whatever the server still waits for; TIMEOUT bounds the wait.
        sock.settimeout(TIMEOUT * 2)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
                if answer.startswith(b"HTTP/1.1 101 "):
                    break
    if answer:
        assert answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), answer[:100]
        assert not answer.startswith((b"HTTP/1.1 500", b"HTTP/1.0 500")), answer[:300]


async def test_after_the_fuzzing_the_server_still_answers(server: ServerProcess) -> None:
    await healthy(server)
    assert "Traceback" not in server.log()
