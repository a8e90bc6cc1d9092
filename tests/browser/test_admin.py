"""The admin page in a real browser: it loads cleanly, its chart moves when events are
published, and its disconnect button closes a connection."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from playwright.async_api import ConsoleMessage, Page, Request, expect
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.support.asgi_servers import serve_asgi
from tests.support.env import TIMEOUT, eventually
from tests.support.server import ServerProcess
from tests.support.sse import open_sse
from tidings import Hub
from tidings.server import create_app
from tidings.settings import Settings

MS = TIMEOUT * 1000
ADMIN_KEY = "browser-admin-key-0123456"


async def test_the_admin_page_follows_the_server_and_disconnects(page: Page) -> None:
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    def failed(request: Request) -> None:
        # Leaving the page cancels the snapshot stream: that is no failure.
        if request.failure != "net::ERR_ABORTED":
            problems.append(f"failed request: {request.url} {request.failure}")

    async def bad_status(response: object) -> None:
        status = getattr(response, "status", 200)
        if status >= 400:
            problems.append(f"HTTP {status}: {getattr(response, 'url', '?')}")

    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", failed)
    page.on("response", bad_status)

    with ServerProcess(env={"TIDINGS_ADMIN_KEY": ADMIN_KEY}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            await page.goto(server.url + "/admin")
            await expect(page.locator("#login")).to_be_visible(timeout=MS)
            await page.fill("#key", ADMIN_KEY)
            await page.click("#login button[type=submit]")
            await expect(page.locator("#dashboard")).to_be_visible(timeout=MS)
            await expect(page.locator("#status")).to_have_text("Live.", timeout=MS)
            chart = page.locator("#chart")
            before = await chart.evaluate("canvas => canvas.toDataURL()")

            async with open_sse(client, "/sse/admin-browser") as reader:
                await reader.until(b"\n\n")
                # The chart moves: the next snapshot after these publishes shows their rate.
                for n in range(1, 21):
                    await client.post("/api/publish", json={"channel": "admin-browser", "data": n})
                await reader.events(20)
                await page.wait_for_function(
                    "() => Number(document.getElementById('chart').dataset.publishRate) > 0",
                    timeout=MS,
                )
                assert float(await chart.get_attribute("data-delivery-rate") or 0) > 0
                assert await chart.evaluate("canvas => canvas.toDataURL()") != before
                await expect(page.locator("#top-subscribers")).to_contain_text(
                    "admin-browser", timeout=MS
                )
                await expect(page.locator("#connections-sse")).to_have_text("1", timeout=MS)

                # The disconnect button closes the stream.
                row = page.locator("#connections tr", has_text="admin-browser")
                await expect(row).to_have_count(1, timeout=MS)
                await row.get_by_role("button", name="Disconnect").click()
                await reader.until_end()
            await eventually(lambda: _no_connections(client))
            await expect(page.locator("#connections-total")).to_have_text("0", timeout=MS)
            await expect(page.locator("#connections")).to_contain_text(
                "No open connection", timeout=MS
            )

            # A test event from the page's form reaches a subscriber.
            async with open_sse(client, "/sse/admin-form") as reader:
                await reader.until(b"\n\n")
                await page.fill("#publish-channel", "admin-form")
                await page.fill("#publish-data", '{"from": "the admin page"}')
                await page.click("#publish button[type=submit]")
                [event] = await reader.events(1)
                assert event.data == '{"from":"the admin page"}'
            await expect(page.locator("#publish-result")).to_have_text(
                "Published admin-form #1.", timeout=MS
            )
            await page.close()
    assert problems == []


async def _no_connections(client: httpx.AsyncClient) -> bool:
    stats = (await client.get("/api/stats")).json()
    return stats["connections"] == 0


async def test_the_admin_page_works_mounted_under_a_prefix(page: Page) -> None:
    """Its files and API calls are relative: under /rt they stay under /rt."""
    hub = Hub()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with hub:
            yield

    settings = Settings(log_level="warning", admin_key=ADMIN_KEY)
    app = Starlette(routes=[Mount("/rt", create_app(hub, settings))], lifespan=lifespan)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("response", lambda response: response.ok or requested.append(f"{response.status}"))
    async with serve_asgi(app, "uvicorn") as url:
        await page.goto(url + "/rt/admin")
        await page.fill("#key", ADMIN_KEY)
        await page.click("#login button[type=submit]")
        await expect(page.locator("#status")).to_have_text("Live.", timeout=MS)
        async with (
            httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client,
            open_sse(client, "/rt/sse/admin-mounted") as reader,
        ):
            await reader.until(b"\n\n")
            await expect(page.locator("#connections-sse")).to_have_text("1", timeout=MS)
        await page.close()  # its snapshot stream ends before the server stops
    assert requested
    assert all(entry.startswith(url + "/rt/admin") for entry in requested), requested
