"""The demo apps in a real browser: chat (presence, offline, exactly once), the dashboard,
jobs, the index; each page screenshotted, none logging an error or a failed request.

Screenshots go to $TIDINGS_ARTIFACTS/screenshots (.ci/run sets reports/, which git
ignores), else to pytest's temporary directory. One server and one browser serve the
whole module (Playwright's sync API, so both can be shared across tests); each test
opens contexts of its own and uses rooms of its own.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    Response,
    expect,
    sync_playwright,
)

from tests.browser.conftest import CHROMIUM, FLAGS
from tests.support.env import TIMEOUT, unavailable
from tests.support.server import ServerProcess
from tidings.server.samples import CHANNEL

MS = TIMEOUT * 1000
PHONE = {"width": 390, "height": 844}
DEMOS = ["chat", "dashboard", "llm", "jobs", "explorer"]


@pytest.fixture
def _no_leaked_tasks() -> None:
    """Sync tests start no asyncio task (the server is a process): nothing to check.

    Playwright's sync API runs its own event loop on this thread, where the
    suite's async leak check cannot run.
    """


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess() as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $TIDINGS_ARTIFACTS (kept by CI), else pytest's tmp dir."""
    chosen = os.environ.get("TIDINGS_ARTIFACTS")
    directory = Path(chosen) / "screenshots" if chosen else tmp_path_factory.mktemp("screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class Watched:
    """Pages of one test, each watched for console errors, page errors and failed requests."""

    def __init__(self, browser: Browser, server: ServerProcess, artifacts: Path) -> None:
        self.browser, self.server, self.artifacts = browser, server, artifacts
        self.contexts: list[BrowserContext] = []
        self.problems: list[str] = []
        self.refusals: set[str] = set()

    def allow(self, path: str) -> None:
        """A refusal (4xx, and the console line about it) of ``path`` is what the test wants."""
        self.refusals.add(self.server.url + path)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and message.location.get("url") not in self.refusals:
            self.problems.append(f"console: {message.text}")

    def _failed(self, request: Request) -> None:
        # ERR_ABORTED is the page's own doing: a reload ends its open streams.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"failed: {request.url} {request.failure}")

    def _response(self, response: Response) -> None:
        # 304 is a success too: a reload revalidates a recently modified file.
        if response.status >= 400 and response.url not in self.refusals:
            self.problems.append(f"{response.status}: {response.url}")

    def page(self, path: str, context: BrowserContext | None = None, **options: object) -> Page:
        """A new page at ``path``, in a new context with ``options`` unless one is given."""
        if context is None:
            context = self.browser.new_context(**options)  # type: ignore[arg-type]
            self.contexts.append(context)
        page = context.new_page()
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)
        page.goto(self.server.url + path)
        return page

    def screenshot(self, page: Page, name: str) -> None:
        page.screenshot(path=str(self.artifacts / f"{name}.png"), full_page=True)

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser: Browser, server: ServerProcess, artifacts: Path) -> Iterator[Watched]:
    watched = Watched(browser, server, artifacts)
    try:
        yield watched
    finally:
        watched.close()
    assert not watched.problems, "\n".join(watched.problems)


def join(page: Page, nick: str, room: str) -> None:
    page.fill("#nick", nick)
    page.fill("#room", room)
    page.click("#join button[type=submit]")
    expect(page.locator("#state")).to_have_text("open", timeout=MS)


def send(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def texts(page: Page) -> list[str]:
    return page.locator("#messages li:not(.notice) .text").all_text_contents()


def test_two_pages_chat_and_what_is_sent_offline_arrives_once(pages: Watched) -> None:
    ada, bob = pages.page("/static/chat.html"), pages.page("/static/chat.html")
    join(ada, "ada", "offline-test")
    join(bob, "bob", "offline-test")
    for page in (ada, bob):
        expect(page.locator("#people li")).to_have_text(["ada" + " (you)" * (page is ada),
                                                          "bob" + " (you)" * (page is bob)],
                                                         timeout=MS)  # fmt: skip
    expect(ada.locator("#messages li.notice")).to_have_text(["bob joined"], timeout=MS)
    send(ada, "hello from ada")
    expect(bob.locator("#messages li .text")).to_have_text(["hello from ada"], timeout=MS)

    bob.type("#text", "typing…")
    expect(ada.locator("#typing")).to_have_text("bob is typing…", timeout=MS)

    ada.context.set_offline(True)
    expect(ada.locator("#state")).to_have_text("offline", timeout=MS)
    expect(bob.locator("#people li")).to_have_text(["bob (you)"], timeout=MS)
    offline = [f"sent offline {n}" for n in range(1, 4)]
    for text in offline:
        send(ada, text)
    expect(ada.locator("#messages li.pending")).to_have_count(3)
    pages.screenshot(ada, "chat-offline")

    ada.context.set_offline(False)
    expect(ada.locator("#state")).to_have_text("open", timeout=MS)
    expect(ada.locator("#messages li.pending")).to_have_count(0, timeout=MS)
    expected = ["hello from ada", *offline]
    expect(bob.locator("#messages li:not(.notice) .text")).to_have_text(expected, timeout=MS)
    expect(bob.locator("#people li")).to_have_text(["ada", "bob (you)"], timeout=MS)
    send(bob, "welcome back")
    expect(ada.locator("#messages li:not(.notice) .text")).to_have_text(
        [*expected, "welcome back"], timeout=MS
    )
    pages.screenshot(bob, "chat")

    # Exactly once, on the server too: a page joining now gets the history, once each.
    carol = pages.page("/static/chat.html")
    join(carol, "carol", "offline-test")
    expect(carol.locator("#messages li:not(.notice) .text")).to_have_text(
        [*expected, "welcome back"], timeout=MS
    )
    assert texts(bob) == [*expected, "welcome back"]


def test_a_message_written_offline_is_sent_by_the_next_visit(pages: Watched) -> None:
    page = pages.page("/static/chat.html")
    join(page, "dora", "outbox-test")
    page.context.set_offline(True)
    expect(page.locator("#state")).to_have_text("offline", timeout=MS)
    send(page, "kept in the outbox")
    expect(page.locator("#messages li.pending")).to_have_count(1)
    page.close()  # the tab is closed before the network comes back
    page.context.set_offline(False)
    again = pages.page("/static/chat.html", context=page.context)  # same localStorage
    join(again, "dora", "outbox-test")
    expect(again.locator("#messages li:not(.notice) .text")).to_have_text(
        ["kept in the outbox"], timeout=MS
    )
    expect(again.locator("#messages li.pending")).to_have_count(0, timeout=MS)
    assert again.evaluate("localStorage.getItem('tidings-chat-outbox:outbox-test')") == "[]"


def test_a_room_name_the_server_refuses_is_never_sent(pages: Watched) -> None:
    page = pages.page("/static/chat.html")
    page.fill("#nick", "eve")
    page.fill("#room", "no spaces")
    page.click("#join button[type=submit]")
    assert page.evaluate("document.querySelector('#room').validity.valid") is False
    expect(page.locator("#state")).to_have_text("not joined")


def test_the_dashboard_charts_a_thousand_events(pages: Watched, server: ServerProcess) -> None:
    page = pages.page("/static/dashboard.html")
    expect(page.locator("#state")).to_have_text("open", timeout=MS)
    # The server's own samples arrive too (four a second): count from here.
    start = page.evaluate("window.tidingsCharts.load.received.cpu")
    then = time.time() - 50  # a burst of the last 50 s, one event every 50 ms

    def publish(n: int) -> int:
        cpu = 50 + 40 * math.sin(n / 40)
        sample = {"time": then + n * 0.05, "cpu": cpu, "latency_ms": 20.0, "requests": 500.0 + n}
        return client.post("/api/publish", json={"channel": CHANNEL, "data": sample}).status_code

    with (
        httpx.Client(base_url=server.url, timeout=TIMEOUT) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        assert set(pool.map(publish, range(1000))) == {200}
    page.wait_for_function(
        f"window.tidingsCharts.load.received.cpu >= {start + 1000}", timeout=MS * 2
    )
    expect(page.locator("#lag")).to_have_text(re.compile(r"\d+ ms"))
    received = page.evaluate("window.tidingsCharts.traffic.received.requests")
    assert received >= 1000
    # The lines are drawn: the canvas has pixels of the series' colours.
    coloured = page.evaluate(
        """() => {
          const canvas = document.getElementById("traffic");
          const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
          let count = 0;
          for (let i = 0; i < data.length; i += 4) {
            if (data[i + 1] > data[i] + 40 && data[i + 3]) count++;  // the green of the series
          }
          return count;
        }"""
    )
    assert coloured > 100
    assert "Requests" in (page.locator("#traffic").get_attribute("aria-label") or "")
    pages.screenshot(page, "dashboard")


def test_jobs_start_show_progress_cancel_and_survive_a_reload(pages: Watched) -> None:
    page = pages.page("/static/jobs.html")
    page.fill("#steps", "8")
    page.fill("#interval", "0.2")
    page.click("#start button[type=submit]")
    page.fill("#steps", "100")
    page.fill("#interval", "1")
    page.click("#start button[type=submit]")
    jobs = page.locator("li.job")
    expect(jobs).to_have_count(2)
    short, long = jobs.nth(1), jobs.nth(0)  # the newest first
    expect(long.locator(".status")).to_have_text("running", timeout=MS)
    page.reload()
    expect(jobs).to_have_count(2)
    expect(short.locator(".status")).to_have_text("completed", timeout=MS * 2)
    expect(short.locator(".result")).to_have_text('{"count":8}')
    expect(short.locator("progress")).to_have_attribute("value", "100")
    expect(long.locator(".status")).to_have_text("running", timeout=MS)
    pages.screenshot(page, "jobs")
    long.locator(".cancel").click()
    expect(long.locator(".status")).to_have_text("cancelled", timeout=MS)
    expect(long.locator(".result")).to_have_text("cancelled (requested)")
    page.click("#clear")
    expect(jobs).to_have_count(0)
    page.reload()
    expect(jobs).to_have_count(0)


def test_a_refused_job_is_shown_and_nothing_starts(pages: Watched) -> None:
    pages.allow("/api/jobs/demo")
    page = pages.page("/static/jobs.html")
    # The form lets no 1.5 through: submit it past the browser's own checks.
    page.fill("#steps", "1.5")
    page.eval_on_selector("#start", "form => form.dispatchEvent(new Event('submit'))")
    expect(page.locator("#error")).to_contain_text("argument 'steps'", timeout=MS)
    expect(page.locator("li.job")).to_have_count(0)


#: Texts of the page whose colour is under 4.5:1 (WCAG AA) on the background behind them.
LOW_CONTRAST = """() => {
  const rgb = (text) => text.match(/[\\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => [r, g, b].map((c) => c / 255)
    .map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4))
    .reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (element) => {
    for (let node = element; node; node = node.parentElement) {
      const colour = rgb(getComputedStyle(node).backgroundColor);
      if (colour.length < 4 || colour[3] > 0) return colour.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const low = [];
  for (const element of document.body.querySelectorAll("*")) {
    const text = [...element.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!text || element.disabled || !element.checkVisibility()) continue;
    const a = luminance(rgb(getComputedStyle(element).color));
    const b = luminance(background(element));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push(`${element.tagName}.${element.className}: ${ratio.toFixed(2)}`);
  }
  return low;
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_has_the_icon_and_fits_a_phone(
    pages: Watched, server: ServerProcess, scheme: str
) -> None:
    page = pages.page("/", viewport=PHONE, color_scheme=scheme)
    for path in ["/", *(f"/static/{name}.html" for name in DEMOS)]:
        page.goto(server.url + path)
        expect(page.locator("link[rel=icon]")).to_have_attribute("type", "image/svg+xml")
        assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"], path
        assert page.evaluate(LOW_CONTRAST) == [], (path, scheme)
        name = path.strip("/").removeprefix("static/").removesuffix(".html") or "index"
        pages.screenshot(page, f"{name}-{scheme}-phone")
    icon = httpx.get(server.url + "/favicon.ico", timeout=TIMEOUT)
    assert icon.headers["content-type"] == "image/svg+xml"
    assert icon.content.startswith(b"<svg")


def test_the_index_links_every_demo(pages: Watched) -> None:
    page = pages.page("/")
    links = page.get_by_role("link")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert {f"static/{name}.html" for name in DEMOS} <= set(hrefs)
    pages.screenshot(page, "index")
    page.get_by_role("link", name="Chat").first.click()
    expect(page).to_have_title("Tidings chat")


def test_the_chart_keeps_points_in_time_order_within_its_span_and_capacity(
    pages: Watched,
) -> None:
    page = pages.page("/static/dashboard.html")
    answer = page.evaluate(
        """async () => {
          const { LineChart, niceCeiling } = await import("./chart.js");
          const canvas = document.body.appendChild(document.createElement("canvas"));
          let refused = null;
          try { new LineChart(canvas, { series: [] }); } catch (error) { refused = error.name; }
          const chart = new LineChart(canvas, { span: 10, capacity: 4,
                                                series: [{ name: "a", color: "#000" }] });
          for (const [time, value] of [[1, 1], [3, 3], [2, 2], [4, NaN], [5, 5], [Infinity, 6]]) {
            chart.add(time, { a: value, other: 1 });
          }
          const ordered = [...chart.series[0].times];
          chart.add(6, { a: 6 });  // capacity 4: the oldest goes
          const capped = [...chart.series[0].times];
          chart.add(20, { a: 7 });  // span 10: everything before 10 goes
          chart.draw();
          return { refused, ordered, capped, kept: chart.shown("a"), received: chart.received,
                   label: canvas.getAttribute("aria-label"),
                   nice: [0, 0.3, 7, 10, 101, 2400].map(niceCeiling) };
        }"""
    )
    assert answer == {
        "refused": "TypeError",
        "ordered": [1, 2, 3, 5],
        "capped": [2, 3, 5, 6],
        "kept": 1,
        "received": {"a": 6},
        "label": "Line chart of the last 10 seconds. Latest: a 7.",
        "nice": [1, 0.5, 10, 10, 200, 2500],
    }
