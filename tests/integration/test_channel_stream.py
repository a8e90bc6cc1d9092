"""GET /api/stream/{channel} against a real ``tidings serve``, on both write paths."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.support.env import TIMEOUT, eventually
from tidings.errors import Rejected
from tidings.server import SubscribeContext, create_app
from tidings.settings import Settings
from tidings.testing import run_server
from tidings.types import Position
from tidings.wire.cursor import encode_cursor


class Lines:
    """The JSON lines of one streamed response, read as they come."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, count: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(TIMEOUT):
            return [json.loads(await anext(self._lines)) for _ in range(count)]


@asynccontextmanager
async def open_stream(client: httpx.AsyncClient, url: str) -> AsyncIterator[Lines]:
    async with client.stream("GET", url) as response:
        assert response.status_code == 200, (await response.aread())[:500]
        assert response.headers["content-type"] == "application/x-ndjson"
        yield Lines(response)


async def publish(client: httpx.AsyncClient, channel: str, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/publish", json={"channel": channel, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def stream_count(client: httpx.AsyncClient) -> int:
    return int((await client.get("/api/stats")).json()["transports"].get("stream", 0))


async def test_since_replays_then_follows_live(client: httpx.AsyncClient, channel: str) -> None:
    first = await publish(client, channel, data={"n": 1})
    await publish(client, channel, data={"n": 2})
    await publish(client, channel, text="three", event="note")
    epoch = first["epoch"]
    async with open_stream(client, f"/api/stream/{channel}?since={epoch}:1") as lines:
        assert await lines.next(2) == [
            {"channel": channel, "epoch": epoch, "offset": 2, "event": "message", "data": {"n": 2}},
            {
                "channel": channel,
                "epoch": epoch,
                "offset": 3,
                "event": "note",
                "data": "three",
                "text": True,
            },
        ]
        await eventually(lambda: stream_count_is(client, 1))
        await publish(client, channel, data=[4])
        (live,) = await lines.next(1)
        assert (live["offset"], live["data"]) == (4, [4])
    await eventually(lambda: stream_count_is(client, 0))


async def stream_count_is(client: httpx.AsyncClient, count: int) -> bool:
    return await stream_count(client) == count


async def test_without_since_it_starts_live(client: httpx.AsyncClient, channel: str) -> None:
    await publish(client, channel, data="old")
    async with open_stream(client, f"/api/stream/{channel}") as lines:

        async def subscribed() -> bool:
            response = await client.get("/api/channels")
            return any(
                entry["channel"] == channel and entry["subscribers"] == 1
                for entry in response.json()["channels"]
            )

        await eventually(subscribed)
        await publish(client, channel, data="new")
        (line,) = await lines.next(1)
        assert (line["offset"], line["data"]) == (2, "new")


async def test_since_as_a_cursor_and_a_lost_position(
    client: httpx.AsyncClient, channel: str
) -> None:
    first = await publish(client, channel, data=1)
    await publish(client, channel, data=2)
    cursor = encode_cursor({channel: Position(first["epoch"], 1)})
    async with open_stream(client, f"/api/stream/{channel}?since={cursor}") as lines:
        (line,) = await lines.next(1)
        assert (line["offset"], line["data"]) == (2, 2)
    async with open_stream(client, f"/api/stream/{channel}?since=gone:5") as lines:
        (reset,) = await lines.next(1)
        assert reset == {
            "channel": channel,
            "epoch": first["epoch"],
            "offset": 2,
            "event": "reset",
            "data": {"reason": "epoch"},
        }


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/stream/has%20space", 400, "invalid_channel"),
        ("/api/stream/ok?since=nonsense", 400, "invalid_cursor"),
    ],
)
async def test_bad_requests_get_a_json_error_and_no_stream(
    client: httpx.AsyncClient, path: str, status: int, code: str
) -> None:
    response = await client.get(path)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert await stream_count(client) == 0


@pytest.mark.parametrize("fast_write", [True, False])
async def test_streams_count_against_max_connections(fast_write: bool) -> None:
    settings = Settings(log_level="warning", max_connections=2)
    async with (
        run_server(create_app(settings=settings), settings=settings, fast_write=fast_write) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client,
        client.stream("GET", "/api/stream/a") as first,
        client.stream("GET", "/api/stream/b") as second,
    ):
        assert (first.status_code, second.status_code) == (200, 200)
        refused = await client.get("/api/stream/c")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "unavailable"
        await second.aclose()

        async def admitted() -> bool:
            return (await client.head("/api/stream/c")).status_code == 200

        await eventually(admitted)


async def test_the_on_subscribe_hook_decides_like_for_any_http_read() -> None:
    seen: list[tuple[str, str, str]] = []

    async def on_subscribe(context: SubscribeContext) -> None:
        seen.append((context.transport, context.action, context.channel))
        if context.channel.startswith("secret:"):
            raise Rejected("not_a_member", "you are not in it", status=403)

    settings = Settings(log_level="warning")
    app = create_app(settings=settings, on_subscribe=on_subscribe)
    async with (
        run_server(app, settings=settings) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client,
    ):
        refused = await client.get("/api/stream/secret:a")
        assert refused.status_code == 403
        assert refused.json()["error"] == {"code": "not_a_member", "message": "you are not in it"}
        assert (await client.head("/api/stream/open:a")).status_code == 200
    assert seen == [("http", "subscribe", "secret:a"), ("http", "subscribe", "open:a")]
