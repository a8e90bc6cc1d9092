"""tidings.js with getToken in Chromium: the token goes in ?token=, and a new one
is asked for at each expiry while the events keep coming, with no gap and no duplicate."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import Page

from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess
from tidings.server.auth import mint_token

SECRET = "browser-secret-browser-secret-browser"
API_KEY = "publisher-key-publisher-key"
CHANNEL = "chat:room"
TTL = max(2, round(TIMEOUT * 0.4))  # seconds each token lives
TOKENS = 4  # the first token and three after expiries
PACE = TTL / 10  # seconds between publishes

SSE = """async () => {
  const { TidingsEventSource } = await import("/static/tidings.js");
  window.received = [];
  const source = new TidingsEventSource("/sse", ["chat:room"], {
    getToken: () => window.mintToken(),
  });
  source.addEventListener("message", (e) => window.received.push(e.data));
  window.client = source;
  await new Promise((ok) => source.addEventListener("statechange", () => {
    if (source.state === "open") ok();
  }));
}"""

SOCKET = """async () => {
  const { TidingsSocket } = await import("/static/tidings.js");
  window.received = [];
  const socket = new TidingsSocket("/ws", {
    getToken: () => window.mintToken(), base: 0.05, cap: 0.2,
  });
  socket.addEventListener("message", (e) => window.received.push(e.data));
  window.client = socket;
  await new Promise((ok) => socket.addEventListener("statechange", () => {
    if (socket.state === "open") ok();
  }));
  await socket.subscribe("chat:room");
}"""


def server() -> ServerProcess:
    return ServerProcess(
        env={
            "TIDINGS_JWT_SECRET": SECRET,
            "TIDINGS_API_KEYS": f"publisher:{API_KEY}",
            "TIDINGS_SSE_RETRY": "0.2",
        }
    )


async def publish_until_renewed(page: Page, base_url: str, minted: list[str]) -> int:
    """Publish 1, 2, 3 … until TOKENS tokens were minted and the page has every
    event; return how many were published."""
    published = 0
    limit = TIMEOUT * 2 + TTL * TOKENS
    headers = {"x-api-key": API_KEY}
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as client:
        try:
            async with asyncio.timeout(limit):
                while len(minted) < TOKENS or len(await received(page)) < published:
                    if len(minted) < TOKENS:
                        answer = await client.post(
                            "/api/publish", json={"channel": CHANNEL, "data": published + 1}
                        )
                        answer.raise_for_status()
                        published += 1
                    await asyncio.sleep(PACE)  # pacing the publisher, polling the page
        except TimeoutError:
            raise AssertionError(
                f"in {limit} s: {len(minted)} of {TOKENS} tokens minted,"
                f" {len(await received(page))} of {published} events received"
            ) from None
    return published


async def received(page: Page) -> list[Any]:
    result: list[Any] = await page.evaluate("window.received")
    return result


async def expose_minter(page: Page) -> list[str]:
    minted: list[str] = []

    def mint() -> str:
        minted.append(mint_token(SECRET, sub="ada", ttl=TTL, grants={"subscribe": [CHANNEL]}))
        return minted[-1]

    await page.expose_function("mintToken", mint)
    return minted


def token_of(url: str) -> str | None:
    return parse_qs(urlsplit(url).query).get("token", [None])[0]


@pytest.mark.parametrize("kind", ["sse", "socket"])
async def test_get_token_is_asked_again_at_each_expiry(page: Page, kind: str) -> None:
    minted = await expose_minter(page)
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.on("websocket", lambda ws: urls.append(ws.url))
    with server() as running:
        await page.goto(running.url + "/static/tidings.js")  # an origin, no demo page
        await page.evaluate(SSE if kind == "sse" else SOCKET)
        published = await publish_until_renewed(page, running.url, minted)
        await page.evaluate("window.client.close()")
    assert await received(page) == list(range(1, published + 1))  # no gap, no duplicate
    path = "/sse" if kind == "sse" else "/ws"
    connections = [url for url in urls if urlsplit(url).path == path]
    assert connections, urls
    assert all(token_of(url) in minted for url in connections)  # the token is in ?token=
    if kind == "sse":
        # A new connection per expiry, each with a token of its own.
        assert len({token_of(url) for url in connections}) >= TOKENS


EXPIRED = 'event: expired\ndata: {"reason": "token_expired"}\n\n'
STREAM = {"content-type": "text/event-stream", "cache-control": "no-cache"}


async def test_event_source_renews_its_token_by_the_contract_rules(page: Page) -> None:
    """The stream is scripted with page.route: an expiry, a drop, a 401, a 401 to a fresh token."""
    answers = [
        (200, "retry: 50\n\nid: a:e:1\ndata: 1\n\n" + EXPIRED),  # t1: ends at exp
        (200, "id: a:e:2\ndata: 2\n\n"),  # t2: then the stream drops
        (401, '{"error": {"code": "unauthorized", "message": "expired"}}'),  # t2 again
        (401, '{"error": {"code": "unauthorized", "message": "bad"}}'),  # t3, fresh: final
    ]
    seen: list[tuple[str | None, str | None]] = []

    async def answer(route: Any) -> None:
        request = route.request
        query = parse_qs(urlsplit(request.url).query)
        header = (await request.all_headers()).get("last-event-id")
        seen.append((token_of(request.url), header or query.get("last_event_id", [None])[0]))
        status, body = answers.pop(0) if answers else (500, "")
        headers = STREAM if status == 200 else {"content-type": "application/json"}
        await route.fulfill(status=status, headers=headers, body=body)

    tokens = iter(["t1", "t2", "t3", "t4"])
    await page.expose_function("nextToken", lambda: next(tokens))
    with server() as running:
        await page.goto(running.url + "/static/tidings.js")
        await page.route("**/sse?*", answer)
        await page.evaluate("""async () => {
          const { TidingsEventSource } = await import("/static/tidings.js");
          window.received = [];
          window.states = [];
          const getToken = () => window.nextToken();
          const source = new TidingsEventSource("/sse", ["a"], { getToken });
          source.addEventListener("message", (e) => window.received.push(e.data));
          source.addEventListener("statechange", () => window.states.push(source.state));
          await new Promise((ok) => source.addEventListener("statechange", () => {
            if (source.state === "closed") ok();
          }));
        }""")
    assert await received(page) == [1, 2]
    # The browser's own reconnection after the drop (third) keeps the URL, and
    # its Last-Event-ID header is not shown to page.route: check its token only.
    assert [token for token, _ in seen] == ["t1", "t2", "t2", "t3"]
    assert [cursor for _, cursor in seen[:2]] == [None, "a:e:1"]  # expiry: same cursor
    assert seen[3] == ("t3", "a:e:2")  # refused: a new token, once, from the last event
    assert (await page.evaluate("window.states"))[-1] == "closed"
