"""The jobs demo page in a real browser: a job's bar fills, resumes after a reload, cancels."""

from __future__ import annotations

from playwright.async_api import Page, expect

from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess

MS = TIMEOUT * 1000


async def test_a_job_completes_and_resumes_after_a_reload(page: Page) -> None:
    with ServerProcess() as server:
        await page.goto(server.url)
        await page.click("text=jobs demo")
        await page.fill("#steps", "10")
        await page.fill("#interval", "0.3")
        await page.click("#start button[type=submit]")
        await expect(page.locator("#status")).to_have_text("running", timeout=MS)
        await expect(page.locator("#message")).to_contain_text("of 10", timeout=MS)
        job = await page.locator("#job").text_content()
        await page.reload()
        await expect(page.locator("#job")).to_have_text(job or "", timeout=MS)
        await expect(page.locator("#status")).to_have_text("completed", timeout=MS * 2)
        await expect(page.locator("#result")).to_have_text('{"count":10}')
        assert await page.locator("#bar").get_attribute("value") == "100"


async def test_cancel_ends_the_job_and_a_refusal_is_shown(page: Page) -> None:
    with ServerProcess() as server:
        await page.goto(server.url + "/static/jobs.html")
        await page.fill("#steps", "100")
        await page.fill("#interval", "1")
        await page.click("#start button[type=submit]")
        await expect(page.locator("#status")).to_have_text("running", timeout=MS)
        await page.click("#cancel")
        await expect(page.locator("#status")).to_have_text("cancelled", timeout=MS)
        await expect(page.locator("#result")).to_have_text("cancelled (requested)")
        # The form lets no 1.5 through: submit it past the browser's own checks.
        await page.fill("#steps", "1.5")
        await page.eval_on_selector("#start", "form => form.dispatchEvent(new Event('submit'))")
        await expect(page.locator("#status")).to_have_text("refused", timeout=MS)
        await expect(page.locator("#result")).to_contain_text("argument 'steps'")
