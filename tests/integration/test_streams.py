"""SSEResponse, NDJSONResponse and StreamResponse of your own producers, and SSEResponse
of hub channels, under a real uvicorn on the fast write path (as ``tidings serve``) and
on the plain ASGI path."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.env import TIMEOUT, eventually
from tests.support.sse import open_sse
from tidings.errors import PermissionDenied
from tidings.hub import Hub
from tidings.server import NDJSONResponse, ServerSentEvent, SSEResponse, StreamResponse
from tidings.testing import run_server
from tidings.types import Position
from tidings.wire.cursor import decode_cursor, encode_cursor
from tidings.wire.sse import SSEDecoder

#: How soon after the client goes its producer must have been closed.
CLOSE_WITHIN = TIMEOUT / 5
BLOCK = b"x" * 65536
ROW = {"pad": "x" * 1000}


class Producers:
    """The app's producers report here: what they were given, pulled, and that they ended."""

    def __init__(self) -> None:
        self.last_event_ids: list[str | None] = []
        self.finished = asyncio.Event()
        self.pulls = 0
        self.produced = 0
        self.pulled_while_paused = 0
        self.release = asyncio.Event()


def build_app(producers: Producers) -> Starlette:
    async def ticks(last_event_id: str | None) -> AsyncIterator[Any]:
        producers.last_event_ids.append(last_event_id)
        start = int(last_event_id or 0)
        try:
            yield ServerSentEvent({"n": start + 1}, id=str(start + 1), event="tick")
            yield "two\nlines"
            yield {"n": start + 2}
            await producers.release.wait()  # idle until the test says
            yield ServerSentEvent(comment="released", retry=1.5)
        finally:
            producers.finished.set()

    async def idle(items: list[Any]) -> AsyncIterator[Any]:
        try:
            for item in items:
                yield item
            await asyncio.Event().wait()  # never set: only the client's going ends it
        finally:
            producers.finished.set()

    async def failing(items: list[Any], exc: Exception) -> AsyncIterator[Any]:
        try:
            for item in items:
                yield item
            raise exc
        finally:
            producers.finished.set()

    async def endless(request: Request, item: Any, size: int) -> AsyncIterator[Any]:
        fast = request.scope.get("extensions", {}).get("tidings.write")
        try:
            while True:
                if fast is not None and fast.paused:
                    producers.pulled_while_paused += 1
                producers.pulls += 1
                producers.produced += size
                yield item
        finally:
            producers.finished.set()

    def sse(request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind == "ticks":
            return SSEResponse(ticks, keepalive=None)
        if kind == "pings":
            return SSEResponse(idle([]), keepalive=0.05)
        if kind == "idle":
            return SSEResponse(idle(["first"]))
        if kind == "fails":
            return SSEResponse(failing([{"n": 1}], RuntimeError("secret detail")))
        return SSEResponse(failing([], PermissionDenied("orders", "subscribe")))

    def ndjson(request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind == "rows":
            return NDJSONResponse(idle_free([{"n": n} for n in range(3)] + [[1, "a", None]]))
        if kind == "idle":
            return NDJSONResponse(idle([{"n": 1}]))
        if kind == "endless":
            return NDJSONResponse(endless(request, ROW, len(orjson.dumps(ROW)) + 1))
        if kind == "unencodable":
            return NDJSONResponse(failing([{"n": 1}, {"bad": object()}], RuntimeError()))
        return NDJSONResponse(failing([{"n": 1}], RuntimeError("secret detail")))

    def raw(request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind == "blocks":
            return StreamResponse(
                idle_free([b"ab", "c\u2603", BLOCK]),
                media_type="text/plain",
                headers={"Content-Disposition": "attachment"},
            )
        if kind == "idle":
            return StreamResponse(idle([b"first"]))
        if kind == "endless":
            return StreamResponse(endless(request, BLOCK, len(BLOCK)))
        return StreamResponse(failing([b"partial"], RuntimeError("secret detail")))

    return Starlette(
        routes=[
            Route("/sse/{kind}", sse),
            Route("/ndjson/{kind}", ndjson),
            Route("/raw/{kind}", raw),
        ]
    )


async def idle_free(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


@pytest.fixture
def producers() -> Producers:
    return Producers()


@pytest.fixture(params=["fast", "asgi"])
async def client(
    request: pytest.FixtureRequest, producers: Producers
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        run_server(build_app(producers), fast_write=request.param == "fast") as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client,
    ):
        yield client


async def test_sse_events_from_a_producer_given_last_event_id(
    client: httpx.AsyncClient, producers: Producers
) -> None:
    async with open_sse(client, "/sse/ticks", headers={"last-event-id": "41"}) as reader:
        assert reader.response.headers["cache-control"] == "no-cache"
        assert reader.response.headers["x-accel-buffering"] == "no"
        events = await reader.events(3)
        assert bytes(reader.raw).startswith(b"retry: 3000\n\n")
        assert [(e.event, e.id, e.data) for e in events] == [
            ("tick", "42", '{"n":42}'),
            ("message", "42", "two\nlines"),
            ("message", "42", '{"n":43}'),
        ]
        producers.release.set()
        await reader.until(b": released\nretry: 1500\n\n")
    assert producers.last_event_ids == ["41"]
    async with open_sse(client, "/sse/ticks") as reader:
        await reader.events(1)
    assert producers.last_event_ids == ["41", None]


async def test_sse_keepalive_pings_an_idle_stream(client: httpx.AsyncClient) -> None:
    async with open_sse(client, "/sse/pings") as reader:
        await reader.until(b": ping\n\n: ping\n\n")
        assert reader.decoder.feed(b"") == []


@pytest.mark.parametrize("path", ["/sse/idle", "/ndjson/idle", "/raw/idle"])
async def test_client_leaving_an_idle_producer_closes_it(
    client: httpx.AsyncClient, producers: Producers, path: str
) -> None:
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        async for raw in response.aiter_raw():
            if b"first" in raw or b'"n":1' in raw:
                break
        assert not producers.finished.is_set()
    # The producer waits on an event nobody sets: only the disconnect can end it.
    await asyncio.wait_for(producers.finished.wait(), CLOSE_WITHIN)


@pytest.mark.parametrize("path", ["/ndjson/endless", "/raw/endless"])
async def test_the_producer_waits_for_a_client_that_does_not_read(
    client: httpx.AsyncClient, producers: Producers, path: str
) -> None:
    loop = asyncio.get_running_loop()
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        # Read nothing: the socket buffers fill, then the transport's, then
        # the producer is not asked for more.
        last = (-1, loop.time())

        def stalled() -> bool:
            nonlocal last
            if producers.pulls != last[0]:
                last = (producers.pulls, loop.time())
                return False
            return loop.time() - last[1] > 0.5

        await eventually(stalled, timeout=TIMEOUT * 2)
        stalled_at = producers.produced
        assert stalled_at < 64 * 2**20, f"{stalled_at} bytes produced for a client reading none"
        assert producers.pulled_while_paused == 0
        received = 0
        async for raw in response.aiter_raw():
            received += len(raw)
            if received > stalled_at + 4 * 2**20:
                break
        assert producers.produced > stalled_at  # reading let it go on
    await asyncio.wait_for(producers.finished.wait(), CLOSE_WITHIN)
    assert producers.pulled_while_paused == 0


async def test_ndjson_lines(client: httpx.AsyncClient) -> None:
    response = await client.get("/ndjson/rows")
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.text == '{"n":0}\n{"n":1}\n{"n":2}\n[1,"a",null]\n'
    # The connection serves the next request after a stream (fast path: released).
    assert (await client.get("/ndjson/rows")).text == response.text


async def test_stream_response_bytes_and_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/raw/blocks")
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["content-disposition"] == "attachment"
    assert response.content == b"abc\xe2\x98\x83" + BLOCK


async def test_head_sends_headers_only(client: httpx.AsyncClient) -> None:
    response = await client.head("/ndjson/rows")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.content == b""


async def read_to_end(client: httpx.AsyncClient, path: str) -> bytes:
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        return await response.aread()  # a clean end: the last chunk arrived


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/sse/fails", {"code": "internal", "message": "the stream failed"}),
        (
            "/sse/refused",
            {"code": "permission_denied", "message": str(PermissionDenied("orders", "subscribe"))},
        ),
    ],
)
async def test_sse_producer_failure_ends_with_an_error_event(
    client: httpx.AsyncClient, producers: Producers, path: str, error: dict[str, str]
) -> None:
    body = await read_to_end(client, path)
    events = SSEDecoder().feed(body)
    assert events[-1].event == "error"
    assert json.loads(events[-1].data) == error
    assert b"secret" not in body
    assert producers.finished.is_set()


@pytest.mark.parametrize("path", ["/ndjson/fails", "/ndjson/unencodable"])
async def test_ndjson_failure_ends_with_an_error_line(client: httpx.AsyncClient, path: str) -> None:
    body = await read_to_end(client, path)
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines == [{"n": 1}, {"error": {"code": "internal", "message": "the stream failed"}}]


async def test_raw_failure_cuts_the_body_short(
    client: httpx.AsyncClient, producers: Producers
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await read_to_end(client, "/raw/fails")
    assert producers.finished.is_set()


def test_bad_sources_are_refused_when_built() -> None:
    bad: list[Callable[[], object]] = [
        lambda: NDJSONResponse([1, 2]),  # type: ignore[arg-type]
        lambda: StreamResponse(b"bytes"),  # type: ignore[arg-type]
        lambda: SSEResponse(42),  # type: ignore[call-overload]
        lambda: SSEResponse(idle_free([]), "channel"),  # type: ignore[call-overload]
    ]
    for build in bad:
        with pytest.raises(TypeError):
            build()
    with pytest.raises(ValueError, match="keepalive"):
        SSEResponse(idle_free([]), keepalive=0)


# -- SSEResponse(hub, channels): hub channels from a route of your own -------------------------


def hub_app(hub: Hub) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with hub:
            yield

    def channels(request: Request) -> Response:
        names = request.path_params["names"].split(",")
        last_event_id = request.headers.get("last-event-id")
        return SSEResponse(hub, names, last_event_id=last_event_id, retry=1.5, keepalive=None)

    return Starlette(routes=[Route("/channels/{names}", channels)], lifespan=lifespan)


@pytest.fixture
def hub() -> Hub:
    return Hub()


@pytest.fixture(params=["fast", "asgi"])
async def hub_client(request: pytest.FixtureRequest, hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        run_server(hub_app(hub), fast_write=request.param == "fast") as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client,
    ):
        yield client


async def test_hub_channels_stream_live_and_resume_across_channels(
    hub_client: httpx.AsyncClient, hub: Hub
) -> None:
    async with open_sse(hub_client, "/channels/a,b") as reader:
        await reader.until(b"retry: 1500\n")
        assert reader.response.headers["content-type"] == "text/event-stream; charset=utf-8"
        await hub.publish("a", {"n": 1})
        await hub.publish("b", "plain", event="note")
        first, note = await reader.events(2)
        assert (first.data, note.event, note.data) == ('{"n":1}', "note", '"plain"')
    await hub.publish("a", {"n": 2})
    await hub.publish("b", {"n": 3})
    async with open_sse(hub_client, "/channels/a,b", headers={"last-event-id": first.id}) as reader:
        events = await reader.events(3)
        # What each channel missed, in its order (no order between channels).
        assert sorted(event.data for event in events) == ['"plain"', '{"n":2}', '{"n":3}']
        data = [event.data for event in events]
        assert data.index('"plain"') < data.index('{"n":3}')  # both on b
        cursor = decode_cursor(events[-1].id)
        assert (cursor["a"].offset, cursor["b"].offset) == (2, 2)


async def test_hub_channels_outside_the_window_get_a_reset(
    hub_client: httpx.AsyncClient, hub: Hub
) -> None:
    await hub.publish("a", {"n": 1})
    stale = encode_cursor({"a": Position("an-old-epoch", 7)})
    async with open_sse(hub_client, "/channels/a", headers={"last-event-id": stale}) as reader:
        (reset,) = await reader.events(1)
        assert reset.event == "reset"
        await hub.publish("a", {"n": 2})
        (live,) = await reader.events(1)
        assert (live.data, decode_cursor(live.id)["a"].offset) == ('{"n":2}', 2)


async def test_hub_channels_client_leaving_releases_the_subscription(
    hub_client: httpx.AsyncClient, hub: Hub
) -> None:
    async with open_sse(hub_client, "/channels/a") as reader:
        await reader.until(b"retry:")
        assert hub.subscriber_counts() == {"a": 1}
    await eventually(lambda: hub.subscriber_counts() == {}, timeout=CLOSE_WITHIN)


@pytest.mark.parametrize(
    ("path", "headers", "code"),
    [
        ("/channels/bad channel", {}, "invalid_channel"),
        ("/channels/a", {"last-event-id": "garbage"}, "invalid_cursor"),
    ],
)
async def test_hub_channels_bad_input_is_a_400_before_any_event(
    hub_client: httpx.AsyncClient, hub: Hub, path: str, headers: dict[str, str], code: str
) -> None:
    response = await hub_client.get(path, headers=headers)
    assert (response.status_code, response.json()["error"]["code"]) == (400, code)
    assert hub.subscriber_counts() == {}
