"""Tidings mounted under a prefix in a user's app (``app.mount("/rt", create_app(hub))``):
one hub shared with the app's own routes, under ``tidings serve``'s uvicorn (fast write
path) and under stock uvicorn and Hypercorn (plain ASGI path)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from urllib.parse import urljoin

import httpx
import orjson
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect

from tests.support.asgi_servers import ASGI_SERVERS, serve_asgi
from tests.support.env import TIMEOUT
from tests.support.sse import open_sse
from tests.support.ws import Peer
from tidings import Hub
from tidings.server import create_app
from tidings.settings import Settings
from tidings.testing import run_server


def user_app() -> FastAPI:
    """A user's app: its own routes publish and read through the hub Tidings serves at /rt."""
    hub = Hub()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub:
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/rt", create_app(hub, Settings(log_level="warning", demo=True)))

    @app.post("/orders/{order_id}/paid")
    async def paid(order_id: str) -> dict[str, int]:
        position = await hub.publish(f"orders:{order_id}", {"state": "paid"})
        return {"offset": position.offset}

    @app.get("/orders/{order_id}/last")
    async def last(order_id: str) -> object:
        events = (await hub.history(f"orders:{order_id}", limit=1)).events
        return events[0].data if events else None

    return app


async def links_of(client: httpx.AsyncClient, page: str) -> set[str]:
    """The paths a demo page loads or links to, resolved as a browser resolves them."""
    response = await client.get(page)
    assert response.status_code == 200
    found = re.findall(r'(?:href|src)="([^"]+)"|from "([^"]+)"', response.text)
    return {
        urljoin(page, link)
        for pair in found
        for link in pair
        if link and not link.startswith(("data:", "http"))
    }


@pytest.fixture(params=["fast", *ASGI_SERVERS])
async def url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The user's app, on the fast write path (``run_server``) or under a stock server."""
    if request.param == "fast":
        server = run_server(user_app(), fast_write=True)
    else:
        server = serve_asgi(user_app(), request.param)
    async with server as base:
        yield base


@pytest.fixture
async def client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        yield client


async def test_a_route_of_the_app_publishes_to_a_mounted_sse_stream(
    client: httpx.AsyncClient,
) -> None:
    async with open_sse(client, "/rt/sse?channel=orders:7") as reader:
        await reader.until(b"retry:")
        assert (await client.post("/orders/7/paid")).json() == {"offset": 1}
        (event,) = await reader.events(1)
        assert orjson.loads(event.data) == {"state": "paid"}
    async with open_sse(
        client, "/rt/sse/orders:7", headers={"last-event-id": "", "accept": "text/event-stream"}
    ) as reader:
        await reader.until(b"retry:")
        await client.post("/orders/7/paid")
        (again,) = await reader.events(1)
        assert again.id != event.id


async def test_the_mounted_websocket_shares_the_hub(url: str, client: httpx.AsyncClient) -> None:
    ws_url = url.replace("http://", "ws://") + "/rt/ws"
    async with connect(ws_url, subprotocols=["tidings.v1.json"]) as ws:  # type: ignore[list-item]
        peer = Peer(ws)
        await peer.result("subscribe", channel="orders:8")
        await client.post("/orders/8/paid")
        push = await peer.push()
        assert (push["channel"], push["offset"], push["data"]) == ("orders:8", 1, {"state": "paid"})
        await peer.result("publish", channel="orders:8", data={"state": "shipped"})
        assert (await client.get("/orders/8/last")).json() == {"state": "shipped"}


async def test_the_mounted_http_api_and_files(url: str, client: httpx.AsyncClient) -> None:
    published = await client.post("/rt/api/publish", json={"channel": "orders:9", "data": 1})
    assert published.status_code == 200, published.text
    assert (await client.get("/orders/9/last")).json() == 1
    assert (await client.get("/rt/api/history/orders:9")).json()["events"][0]["data"] == 1
    script = await client.get("/rt/static/tidings.js")
    assert (script.status_code, script.headers["content-type"]) == (
        200,
        "text/javascript; charset=utf-8",
    )
    redirect = await client.get("/rt")
    assert (redirect.status_code, redirect.headers["location"]) == (307, f"{url}/rt/")
    demos = ("chat", "dashboard", "explorer", "jobs", "llm")
    for page in ("/rt/", *(f"/rt/static/{name}.html" for name in demos)):
        for link in await links_of(client, page):
            assert link.startswith("/rt/"), (page, link)
            assert (await client.get(link)).status_code == 200, (page, link)
    missing = await client.get("/rt/api/nothing")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
