"""The LLM demo page in a real browser: an answer streams, and resumes exactly after a reload."""

from __future__ import annotations

from playwright.async_api import Page, expect

from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess
from tidings.llm import DemoProvider, validate_request

MS = TIMEOUT * 1000
CONFIG = """
[llm.providers.demo]
kind = "demo"
first_token_delay = 0.1
token_interval = 0.04
"""


async def test_an_answer_resumes_exactly_after_a_reload(page: Page) -> None:
    prompt = "Does it resume?"
    request = validate_request({"model": "demo", "messages": [{"role": "user", "content": prompt}]})
    expected = "".join(DemoProvider().tokens(request))
    with ServerProcess(config=CONFIG) as server:
        await page.goto(server.url)
        await page.click("text=LLM token streaming demo")
        await page.fill("#prompt", prompt)
        await page.click("#ask button[type=submit]")
        await expect(page.locator("#status")).to_have_text("running", timeout=MS)
        await expect(page.locator("#answer")).to_contain_text("This answer", timeout=MS)
        await page.reload()
        await expect(page.locator("#status")).to_have_text("completed", timeout=MS * 2)
        assert await page.locator("#answer").text_content() == expected
        # The part after the reload came from the resumed stream.
        assert await page.locator("#answer .resumed").count() > 0


async def test_stop_cancels_the_answer(page: Page) -> None:
    with ServerProcess(config=CONFIG.replace("0.04", "0.2")) as server:
        await page.goto(server.url + "/static/llm.html")
        await page.click("#ask button[type=submit]")
        await expect(page.locator("#answer")).to_contain_text("You", timeout=MS)
        await page.click("#stop")
        await expect(page.locator("#status")).to_have_text("cancelled", timeout=MS)
        await expect(page.locator("#answer")).to_contain_text("cancelled (deleted)", timeout=MS)
