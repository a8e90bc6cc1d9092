"""The explorer demo page and /static/tidings.js in a real browser: live events and exact resume."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from playwright.async_api import Page, expect
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.support.asgi_servers import serve_asgi
from tests.support.env import TIMEOUT
from tests.support.proxy import FaultProxy
from tests.support.server import ServerProcess
from tidings import Hub
from tidings.server import create_app
from tidings.settings import Settings

MS = TIMEOUT * 1000
EXPLORER = "/static/explorer.html"


async def test_demo_page_publishes_and_shows_events(page: Page) -> None:
    with ServerProcess() as server:
        await page.goto(server.url + EXPLORER)
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
            await page.goto(proxy.url + EXPLORER)
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


PHONE = {"width": 390, "height": 844}
#: A cursor, a stream id or JSON has nowhere to break: the page must wrap it anyway.
UNBROKEN = "x" * 200


async def fits_a_phone(page: Page, controls: list[str]) -> None:
    """No horizontal scroll, and every control is shown whole within the width."""
    assert await page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    for selector in controls:
        control = page.locator(selector)
        await expect(control).to_be_visible()
        box = await control.bounding_box()
        assert box is not None
        assert box["x"] >= 0, selector
        assert box["x"] + box["width"] <= PHONE["width"], selector


async def test_the_demo_pages_fit_a_phone_screen(page: Page) -> None:
    await page.set_viewport_size(PHONE)
    with ServerProcess() as server:
        await page.goto(server.url + EXPLORER)
        await expect(page.locator("#state")).to_have_text("open", timeout=MS)
        await page.fill("#channel", "chat")
        await page.fill("#data", UNBROKEN)
        await page.click("#publish button")
        await expect(page.locator("#log li")).to_have_count(1, timeout=MS)
        await expect(page.locator("#stats")).not_to_have_text("…", timeout=MS)
        await fits_a_phone(page, ["#channels", "#connect", "#channel", "#data", "#event",
                                  "#publish button"])  # fmt: skip
        log, form = page.locator("section").nth(0), page.locator("section").nth(1)
        above, below = await log.bounding_box(), await form.bounding_box()
        assert above is not None
        assert below is not None
        assert below["y"] >= above["y"] + above["height"]  # stacked, not side by side

        await page.goto(server.url + "/static/llm.html")
        await page.click("#ask button[type=submit]")
        await expect(page.locator("#status")).to_have_text("completed", timeout=MS * 4)
        await fits_a_phone(page, ["#prompt", "#model", "#ask button[type=submit]", "#stop"])


async def test_publish_rejects_with_a_tidings_error_and_the_servers_code(page: Page) -> None:
    with ServerProcess() as server:
        await page.goto(server.url + "/static/tidings.js")  # an origin, no demo page
        refused = await page.evaluate(
            """async () => {
              const { publish, TidingsError } = await import("/static/tidings.js");
              try {
                await publish("no spaces allowed", 1);
                return null;
              } catch (error) {
                return [error instanceof TidingsError, error.code];
              }
            }"""
        )
    assert refused == [True, "invalid_channel"]


def mounted_demo() -> Starlette:
    """An app of your own with Tidings (demo pages on) mounted at /rt."""
    hub = Hub()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with hub:
            yield

    tidings_app = create_app(hub, Settings(log_level="warning", demo=True))
    return Starlette(routes=[Mount("/rt", tidings_app)], lifespan=lifespan)


async def test_demo_page_works_mounted_under_a_prefix(page: Page) -> None:
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on("response", lambda response: response.ok or failed.append(response.url))
    async with serve_asgi(mounted_demo(), "hypercorn") as url:
        await page.goto(url + "/rt" + EXPLORER)
        await expect(page.locator("#state")).to_have_text("open", timeout=MS)
        await page.fill("#channel", "chat")
        await page.fill("#data", '{"text": "under /rt"}')
        await page.click("#publish button")
        await expect(page.locator("#log li")).to_have_text(
            ['chat #1 {"text":"under /rt"}'], timeout=MS
        )
        await expect(page.locator("#stats")).to_contain_text('"published": 1', timeout=MS)
        await page.close()  # its stream ends before the server stops
    assert failed == []
