"""The LLM demo page in a real browser: an answer streams from the POST itself, resumes
exactly after a reload, stops and regenerates, with no console error and no failed request."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.support.env import TIMEOUT
from tests.support.page_watch import Watch
from tests.support.server import ServerProcess
from tidings.llm import DemoProvider, validate_request

MS = TIMEOUT * 1000
CONFIG = """
[llm.providers.demo]
kind = "demo"
first_token_delay = 0.1
token_interval = 0.04
"""


def answer_to(prompt: str) -> str:
    request = validate_request({"model": "demo", "messages": [{"role": "user", "content": prompt}]})
    return "".join(DemoProvider().tokens(request))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(config=CONFIG) as running:
        yield running


@pytest.fixture
def watch(page: Page) -> Iterator[Watch]:
    """No console error, uncaught exception or failed request on the page."""
    watching = Watch()
    watching.attach(page)
    yield watching
    watching.check()


async def test_an_answer_resumes_exactly_after_a_reload(
    page: Page, server: ServerProcess, watch: Watch
) -> None:
    prompt = "Does it resume?"
    await page.goto(server.url)
    await page.click("text=LLM chat")
    await page.fill("#prompt", prompt)
    await page.click("#ask button[type=submit]")
    await expect(page.locator("#status")).to_have_text("running", timeout=MS)
    await expect(page.locator("#answer")).to_contain_text("This answer", timeout=MS)
    await page.reload()
    await expect(page.locator("#status")).to_have_text("completed", timeout=MS * 2)
    # Every token once: none lost, none repeated across the reload.
    assert await page.locator("#answer").text_content() == answer_to(prompt)
    # The part after the reload came from the resumed stream.
    assert await page.locator("#answer .resumed").count() > 0


async def test_stop_cancels_the_answer(page: Page, server: ServerProcess, watch: Watch) -> None:
    await page.goto(server.url + "/static/llm.html")
    await page.evaluate("sessionStorage.clear()")
    await page.click("#ask button[type=submit]")
    await expect(page.locator("#answer")).to_contain_text("You", timeout=MS)
    await page.click("#stop")
    await expect(page.locator("#status")).to_have_text("cancelled", timeout=MS)
    await expect(page.locator("#answer")).to_contain_text("cancelled (deleted)", timeout=MS)


async def test_regenerate_cancels_and_asks_again(
    page: Page, server: ServerProcess, watch: Watch
) -> None:
    prompt = "Once more?"
    await page.goto(server.url + "/static/llm.html")
    await page.evaluate("sessionStorage.clear()")
    await page.fill("#prompt", prompt)
    await page.click("#ask button[type=submit]")
    await expect(page.locator("#answer")).to_contain_text("This answer", timeout=MS)
    first = await page.locator("#stream").text_content()
    async with httpx.AsyncClient(base_url=server.url) as http:
        cancelled = (await http.get("/api/stats")).json()["llm"]["cancelled"]
        await page.click("#regenerate")
        await expect(page.locator("#status")).to_have_text("completed", timeout=MS * 2)
        assert await page.locator("#answer").text_content() == answer_to(prompt)
        assert await page.locator("#stream").text_content() != first
        # The answer being read when asked again was cancelled, not left running.
        assert (await http.get("/api/stats")).json()["llm"]["cancelled"] == cancelled + 1
