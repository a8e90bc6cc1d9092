"""``tidings serve --http2``: HTTP/2 over TLS on Hypercorn, against real clients.

Many SSE streams share one TLS connection (what lifts the browser's limit of
about six HTTP/1.1 connections per origin); WebSocket still upgrades over
HTTP/1.1 on the same port; bad TLS settings stop the server with one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess
from tests.support.sse import SSEReader, open_sse
from tests.support.tls import TLSFiles, make_tls_files
from tests.support.ws import Peer

STREAMS = 50
EVENTS = 20


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(tls: TLSFiles) -> Iterator[ServerProcess]:
    with ServerProcess(tls=tls) as process:
        yield process


@pytest.fixture
async def client(server: ServerProcess, tls: TLSFiles) -> AsyncIterator[httpx.AsyncClient]:
    # One connection at most: a second one would have to be opened by the pool.
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(
        base_url=server.url, http2=True, verify=tls.client_context(), limits=limits, timeout=10
    ) as client:
        yield client


def channel() -> str:
    return f"h2{uuid.uuid4().hex[:10]}"


async def test_fifty_sse_streams_over_one_connection_get_every_event_in_order(
    client: httpx.AsyncClient,
) -> None:
    name = channel()
    async with contextlib.AsyncExitStack() as stack:
        readers: list[SSEReader] = []
        for _ in range(STREAMS):
            reader = await stack.enter_async_context(open_sse(client, f"/sse/{name}"))
            await reader.until(b"\n\n")  # the first frame: subscribed
            readers.append(reader)
        responses = [reader.response for reader in readers]
        assert {response.http_version for response in responses} == {"HTTP/2"}
        streams = {id(response.extensions["network_stream"]) for response in responses}
        assert len(streams) == 1, f"{len(streams)} connections for {STREAMS} streams"
        stream_ids = {response.extensions["stream_id"] for response in responses}
        assert len(stream_ids) == STREAMS

        for number in range(EVENTS):
            answer = await client.post("/api/publish", json={"channel": name, "data": number})
            assert answer.status_code == 200, answer.text
            assert answer.http_version == "HTTP/2"
            assert id(answer.extensions["network_stream"]) in streams

        async def received(reader: SSEReader) -> list[int]:
            return [json.loads(event.data) for event in await reader.events(EVENTS)]

        got = await asyncio.gather(*(received(reader) for reader in readers))
        assert got == [list(range(EVENTS))] * STREAMS


async def test_websocket_upgrades_over_http11_on_the_tls_port(
    server: ServerProcess, tls: TLSFiles, client: httpx.AsyncClient
) -> None:
    name = channel()
    url = server.url.replace("https://", "wss://") + "/ws"
    async with connect(url, ssl=tls.client_context(), subprotocols=["tidings.v1.json"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "tidings.v1.json"
        peer = Peer(ws)
        reply = await peer.request("subscribe", channel=name)
        assert reply.get("ok"), reply
        answer = await client.post("/api/publish", json={"channel": name, "data": "over h2"})
        assert answer.status_code == 200
        reply = await peer.request("publish", channel=name, data="over ws")
        assert reply.get("ok"), reply
        pushes = [await peer.push(), await peer.push()]
        assert [push["data"] for push in pushes] == ["over h2", "over ws"]
        assert [push["offset"] for push in pushes] == [1, 2]


async def test_a_bad_request_changes_nothing_and_others_are_still_served(
    client: httpx.AsyncClient,
) -> None:
    name = channel()
    answer = await client.post("/api/publish", json={"channel": "bad channel", "data": 1})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_channel"
    async with open_sse(client, f"/sse/{name}") as reader:
        await reader.until(b"\n\n")
        assert (await client.post("/api/publish", json={"channel": name, "data": 1})).is_success
        (event,) = await reader.events(1)
        assert json.loads(event.data) == 1


async def test_sigterm_ends_open_streams_and_exits_cleanly(tls: TLSFiles) -> None:
    with ServerProcess(tls=tls) as process:
        async with (
            httpx.AsyncClient(
                base_url=process.url, http2=True, verify=tls.client_context(), timeout=10
            ) as client,
            open_sse(client, f"/sse/{channel()}") as reader,
        ):
            await reader.until(b"\n\n")
            stopping = asyncio.ensure_future(asyncio.to_thread(process.stop))
            # The stream ends (or the connection with it) at once, not at a timeout.
            with pytest.raises((StopAsyncIteration, httpx.HTTPError)):
                while True:
                    await reader.events(1, timeout=TIMEOUT)
            await stopping
            assert process.process is not None
            assert process.process.returncode == 0, process.log()


async def serve_fails(*args: str) -> str:
    """Run ``tidings serve`` expecting exit status 2; return its stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "serve",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT * 2)
    assert process.returncode == 2, stderr
    return stderr.decode()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ((), "tidings: http2 needs certfile and keyfile: HTTP/2 is served over TLS only\n"),
        (("missing.pem", "key"), "tidings: certfile: cannot read "),
        (("cert", "missing.pem"), "tidings: keyfile: cannot read "),
        (("key", "cert"), "tidings: certfile/keyfile: not a PEM certificate chain"),
    ],
)
async def test_bad_tls_settings_are_one_line(
    tls: TLSFiles, tmp_path: Path, files: tuple[str, ...], message: str
) -> None:
    paths = {"cert": str(tls.cert), "key": str(tls.key)}
    args = ["--http2"]
    if files:
        certfile, keyfile = (paths.get(name, str(tmp_path / name)) for name in files)
        args += ["--certfile", certfile, "--keyfile", keyfile]
    stderr = await serve_fails(*args)
    assert stderr.startswith(message)
    assert stderr.count("\n") == 1, stderr
    assert str(tls.key.read_text()[40:80]) not in stderr
