"""GET /sse against a real ``tidings serve``, on the fast write path and the plain ASGI path."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
import pytest

from tests.support.env import TIMEOUT, eventually
from tests.support.server import ServerProcess
from tests.support.sse import open_sse
from tidings.wire.cursor import decode_cursor


async def publish(
    client: httpx.AsyncClient, channel: str, data: Any, **fields: Any
) -> dict[str, Any]:
    response = await client.post("/api/publish", json={"channel": channel, "data": data, **fields})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def subscribers(client: httpx.AsyncClient, channel: str) -> int:
    response = await client.get("/api/channels")
    for entry in response.json()["channels"]:
        if entry["channel"] == channel:
            return int(entry["subscribers"])
    return 0


async def wait_for_subscribers(client: httpx.AsyncClient, channel: str, count: int) -> None:
    async def reached() -> bool:
        return await subscribers(client, channel) == count

    await eventually(reached)


async def test_headers_then_retry_and_cursor_first(client: httpx.AsyncClient, channel: str) -> None:
    async with open_sse(client, f"/sse?channel={channel}") as reader:
        assert reader.response.headers["cache-control"] == "no-cache"
        assert reader.response.headers["x-accel-buffering"] == "no"
        await reader.until(b"\n\n")
        head = bytes(reader.raw)
        assert head.startswith(b"retry: 3000\nid: " + channel.encode() + b":")
        cursor = decode_cursor(reader.last_event_id)
        assert list(cursor) == [channel]
        assert cursor[channel].offset == 0
        await publish(client, channel, {"hello": "world"})
        (event,) = await reader.events(1)
        assert json.loads(event.data) == {"hello": "world"}
        assert event.event == "message"
        assert decode_cursor(event.id)[channel].offset == 1


async def test_single_channel_route(client: httpx.AsyncClient) -> None:
    channel = "room:a/b@c.d"
    async with open_sse(client, f"/sse/{channel}") as reader:
        await reader.until(b"\n\n")
        await publish(client, channel, 1, event="tick")
        (event,) = await reader.events(1)
        assert (event.event, event.data) == ("tick", "1")
        assert list(decode_cursor(event.id)) == [channel]


async def test_text_data_keeps_its_lines(client: httpx.AsyncClient, channel: str) -> None:
    async with open_sse(client, f"/sse?channel={channel}") as reader:
        await reader.until(b"\n\n")
        response = await client.post(
            "/api/publish", json={"channel": channel, "text": "first line\nsecond line\r\nthird ☃"}
        )
        assert response.status_code == 200
        (event,) = await reader.events(1)
        assert event.data == "first line\nsecond line\nthird ☃"


async def test_thousand_events_in_order_to_two_clients_in_two_processes(
    server: ServerProcess, client: httpx.AsyncClient, channel: str
) -> None:
    listener = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "listen",
        "--json",
        "--url",
        server.url,
        channel,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with open_sse(client, f"/sse?channel={channel}") as reader:
            await wait_for_subscribers(client, channel, 2)
            for n in range(1000):
                await publish(client, channel, {"n": n})
            events = await reader.events(1000, timeout=TIMEOUT * 4)
            assert [json.loads(event.data)["n"] for event in events] == list(range(1000))
            assert [decode_cursor(event.id)[channel].offset for event in events] == list(
                range(1, 1001)
            )
        assert listener.stdout is not None
        lines = []
        async with asyncio.timeout(TIMEOUT * 4):
            while len(lines) < 1000:
                lines.append(json.loads(await listener.stdout.readline()))
        assert [line["data"]["n"] for line in lines] == list(range(1000))
        assert [line["offset"] for line in lines] == list(range(1, 1001))
    finally:
        listener.terminate()
        await asyncio.wait_for(listener.wait(), TIMEOUT)


async def test_resume_after_400_gets_exactly_401_to_1000_across_three_channels(
    client: httpx.AsyncClient, channel: str
) -> None:
    channels = [f"{channel}-{name}" for name in "abc"]
    query = "&".join(f"channel={name}" for name in channels)
    published: dict[str, list[int]] = {name: [] for name in channels}

    async def publish_range(numbers: range) -> None:
        for n in numbers:
            name = channels[n % 3]
            await publish(client, name, n)
            published[name].append(n)

    async with open_sse(client, f"/sse?{query}") as reader:
        await reader.until(b"\n\n")
        await publish_range(range(1, 401))
        first = await reader.events(400)
        last_id = first[-1].id
    assert sorted(int(event.data) for event in first) == list(range(1, 401))
    # The client is gone; publishing goes on, and keeps racing the reconnect.
    await publish_range(range(401, 700))
    racing = asyncio.create_task(publish_range(range(700, 1001)))
    try:
        async with open_sse(client, f"/sse?{query}", headers={"last-event-id": last_id}) as reader:
            rest = await reader.events(600, timeout=TIMEOUT * 4)
            await racing
            extra = await publish(client, channels[0], "marker")
            (marker,) = await reader.events(1)
    finally:
        await racing
    assert marker.data == '"marker"'
    assert decode_cursor(marker.id)[channels[0]].offset == extra["offset"]
    numbers = [int(event.data) for event in rest]
    assert sorted(numbers) == list(range(401, 1001)), "no gap and no duplicate"
    for name in channels:
        # The first cursor entry names the event's channel; order holds per channel.
        mine = [int(event.data) for event in rest if next(iter(decode_cursor(event.id))) == name]
        assert mine == [n for n in published[name] if n > 400]


async def test_query_cursor_for_first_connect_and_header_wins(
    client: httpx.AsyncClient, channel: str
) -> None:
    first = await publish(client, channel, "one")
    await publish(client, channel, "two")
    await publish(client, channel, "three")
    cursor = f"{channel}:{first['epoch']}:1"
    async with open_sse(client, f"/sse?channel={channel}&last_event_id={cursor}") as reader:
        assert [event.data for event in await reader.events(2)] == ['"two"', '"three"']
    later = f"{channel}:{first['epoch']}:2"
    async with open_sse(
        client,
        f"/sse?channel={channel}&last_event_id={cursor}",
        headers={"last-event-id": later},
    ) as reader:
        # A reconnecting browser keeps the URL and sends the header: the header wins.
        assert [event.data for event in await reader.events(1)] == ['"three"']


async def test_unknown_epoch_gets_an_explicit_reset(
    client: httpx.AsyncClient, channel: str
) -> None:
    current = await publish(client, channel, "before")
    async with open_sse(
        client, f"/sse?channel={channel}", headers={"last-event-id": f"{channel}:zzzzzzzz:9"}
    ) as reader:
        (reset,) = await reader.events(1)
        assert reset.event == "reset"
        assert json.loads(reset.data) == {
            "channel": channel,
            "epoch": current["epoch"],
            "offset": 1,
            "reason": "epoch",
        }
        assert decode_cursor(reset.id)[channel].offset == 1
        await publish(client, channel, "after")
        (event,) = await reader.events(1)
        assert event.data == '"after"'


async def test_bad_requests_get_json_errors(client: httpx.AsyncClient) -> None:
    cases = {
        "/sse": ("bad_request", 400),
        "/sse?channel=a%20b": ("invalid_channel", 400),
        "/sse?channel=ok&last_event_id=garbage": ("invalid_cursor", 400),
        "/sse?" + "&".join(f"channel=c{n}" for n in range(65)): ("bad_request", 400),
    }
    for url, (code, status) in cases.items():
        response = await client.get(url)
        assert response.status_code == status, url
        assert response.json()["error"]["code"] == code, url
    response = await client.get("/sse?channel=ok", headers={"last-event-id": "ok:e"})
    assert response.json()["error"]["code"] == "invalid_cursor"
    # JSON, so that the cross-site write rule (server/browser.py) lets it reach routing.
    response = await client.post("/sse?channel=ok", headers={"content-type": "application/json"})
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("fast_write", ["1", "0"], ids=["fast", "asgi"])
async def test_keepalive_comments_on_a_settable_period(fast_write: str) -> None:
    env = {"TIDINGS_SSE_KEEPALIVE": "0.2", "TIDINGS_FAST_WRITE": fast_write}
    with ServerProcess(env=env) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
            open_sse(client, "/sse?channel=quiet") as reader,
        ):
            await reader.until(b": ping\n\n")
            await reader.until(b": ping\n\n: ping\n\n")
            assert await reader.events(0) == []
