"""The demo page and /static/tidings.js in a real browser: live events and exact resume."""

from __future__ import annotations

import httpx
from playwright.async_api import Page, expect

from tests.support.env import TIMEOUT
from tests.support.proxy import FaultProxy
from tests.support.server import ServerProcess

MS = TIMEOUT * 1000


async def test_demo_page_publishes_and_shows_events(page: Page) -> None:
    with ServerProcess() as server:
        await page.goto(server.url)
        await expect(page.locator("#state")).to_have_text("open", timeout=MS)
        await page.fill("#channel", "chat")
        await page.fill("#data", '{"text": "from the page"}')
        await page.click("#publish button")
        await expect(page.locator("#log li")).to_have_text(
            ['chat #1 {"text":"from the page"}'], timeout=MS
        )
        await expect(page.locator("#published")).to_have_text("published chat #1", timeout=MS)


async def test_browser_resumes_exactly_after_the_network_drops(page: Page) -> None:
    with ServerProcess(env={"TIDINGS_SSE_RETRY": "0.2"}) as server:
        async with (
            FaultProxy(server.port) as proxy,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            await page.goto(proxy.url)
            await expect(page.locator("#state")).to_have_text("open", timeout=MS)
            for n in range(1, 6):
                await client.post("/api/publish", json={"channel": "news", "data": n})
            await expect(page.locator("#log li")).to_have_count(5, timeout=MS)
            await proxy.cut()
            for n in range(6, 11):  # published while the browser is cut off
                await client.post("/api/publish", json={"channel": "news", "data": n})
            await expect(page.locator("#log li")).to_have_count(10, timeout=MS)
            entries = await page.locator("#log li").all_text_contents()
            assert entries == [f"news #{n} {n}" for n in range(1, 11)]
            assert proxy.accepted >= 2  # it really reconnected
