"""tidings.js in Chromium against a real server: TidingsEventSource, TidingsSocket and
streamFetch through restarts, 503s, refusals, half-open connections, misbehaving
servers and shared tabs, with no console error and no failed request the test did
not cause on purpose. One browser and one server for the module."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgpack
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, Route, WebSocketRoute

from tests.browser.conftest import CHROMIUM, FLAGS
from tests.packaging.test_npm import NPM_PREFIX
from tests.support.env import TIMEOUT, eventually, unavailable
from tests.support.page_watch import Watch
from tests.support.proxy import FaultProxy
from tests.support.server import ServerProcess
from tests.support.sse_vectors import VECTORS
from tidings.llm import DemoProvider, validate_request

pytestmark = pytest.mark.asyncio(loop_scope="module")

MS = TIMEOUT * 1000
CONFIG = """
[llm.providers.demo]
kind = "demo"
first_token_delay = 0.05
token_interval = 0.01
"""
MSGPACK = NPM_PREFIX / "node_modules" / "@msgpack" / "msgpack" / "dist.esm"
KEEPALIVE = 0.2  # the server's sse_keepalive, seconds
IDLE_MS = 800  # a TidingsEventSource's idleTimeout in these tests: four keepalives

# Resolves when `target` (a source or a socket) is in `state`.
HELPERS = """
window.until = (target, state) => new Promise((ok) => {
  if (target.state === state) return ok();
  target.addEventListener("statechange", () => target.state === state && ok());
});
window.errorsOf = (target) => {
  const errors = [];
  target.addEventListener("error", (e) => errors.push({
    code: e.error.code, status: e.error.status, final: e.final ?? null,
    typed: e.error instanceof window.tidings.TidingsError,
  }));
  return errors;
};
"""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # A `: ping` every KEEPALIVE seconds on every stream, for the idle timeout tests.
    env = {"TIDINGS_SSE_RETRY": "0.1", "TIDINGS_SSE_KEEPALIVE": str(KEEPALIVE)}
    with ServerProcess(config=CONFIG, env=env) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    fresh = await browser.new_context()
    try:
        yield fresh
    finally:
        await fresh.close()


@pytest.fixture
def watch() -> Watch:
    return Watch()


async def open_page(context: BrowserContext, watch: Watch, origin: str) -> Page:
    page = await context.new_page()
    watch.attach(page)
    await page.goto(origin + "/static/tidings.js")  # an origin, no demo page
    await load_client(page)
    return page


async def load_client(page: Page) -> None:
    """``window.tidings``, the module, and the helpers."""
    await page.evaluate("async () => { window.tidings = await import('/static/tidings.js'); }")
    await page.evaluate(f"() => {{ {HELPERS} }}")


@pytest_asyncio.fixture(loop_scope="module")
async def page(context: BrowserContext, watch: Watch, server: ServerProcess) -> AsyncIterator[Page]:
    opened = await open_page(context, watch, server.url)
    yield opened
    watch.check()


@pytest_asyncio.fixture(loop_scope="module")
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


async def publish(http: httpx.AsyncClient, channel: str, *values: Any) -> None:
    for value in values:
        (
            await http.post("/api/publish", json={"channel": channel, "data": value})
        ).raise_for_status()


async def transports(http: httpx.AsyncClient) -> dict[str, int]:
    stats: dict[str, int] = (await http.get("/api/stats")).json()["transports"]
    return stats


async def wait_js(page: Page, condition: str, *, timeout: float = MS) -> None:
    await page.wait_for_function(condition, timeout=timeout)


# -- restarts, 503, refusals -------------------------------------------------------------

BOTH = """async (channel) => {
  const { TidingsEventSource, TidingsSocket } = window.tidings;
  const log = (window.log = { sse: [], ws: [], sseResets: [], wsResets: [] });
  const source = new TidingsEventSource("/sse", [channel], { base: 0.05, cap: 0.2 });
  source.addEventListener("message", (e) => log.sse.push(e.data));
  source.addEventListener("reset", (e) => log.sseResets.push(e.reason));
  const socket = new TidingsSocket("/ws", { base: 0.05, cap: 0.2 });
  socket.addEventListener("message", (e) => log.ws.push(e.data));
  socket.addEventListener("reset", (e) => log.wsResets.push(e.data.reason));
  window.clients = [source, socket];
  await Promise.all([until(source, "open"), until(socket, "open")]);
  await socket.subscribe(channel);
}"""


async def test_a_server_restart_is_survived_with_a_visible_reset(
    page: Page, watch: Watch, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    await page.evaluate(BOTH, "restart")
    await publish(http, "restart", 1, 2, 3)
    await wait_js(page, "log.sse.length === 3 && log.ws.length === 3")
    # While the server is down: refused connections, a socket that cannot open.
    watch.allow("ERR_CONNECTION_REFUSED", "WebSocket connection to .* failed")
    server.stop()
    server.start()
    # The memory backend lost its history: a new epoch, announced, then live again.
    await wait_js(page, "log.sseResets.length && log.wsResets.length", timeout=MS * 2)
    await publish(http, "restart", 4, 5)
    await wait_js(page, "log.sse.length === 5 && log.ws.length === 5")
    log = await page.evaluate("log")
    assert log["sse"] == log["ws"] == [1, 2, 3, 4, 5]
    assert log["sseResets"] == log["wsResets"] == ["epoch"]
    await page.evaluate("clients.forEach((client) => client.close())")


async def test_a_503_is_retried_after_retry_after_and_resumes_exactly(
    context: BrowserContext, watch: Watch, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    requests: list[tuple[float, str]] = []

    async def answer(route: Route) -> None:
        requests.append((time.monotonic(), route.request.url))
        if len(requests) == 2:  # the first reconnection: the server is draining
            body = '{"error": {"code": "unavailable", "message": "draining", "retry_after": 1}}'
            headers = {"content-type": "application/json", "retry-after": "1"}
            await route.fulfill(status=503, headers=headers, body=body)
        else:
            await route.continue_()

    async with FaultProxy(server.port) as proxy:
        page = await open_page(context, watch, proxy.url)
        await page.route("**/sse?*", answer)
        await page.evaluate("""async () => {
          window.received = [];
          const options = { base: 0.05 };
          const source = new tidings.TidingsEventSource("/sse", ["drain"], options);
          window.source = source;
          source.addEventListener("message", (e) => received.push(e.data));
          window.errors = errorsOf(source);
          await until(source, "open");
        }""")
        await publish(http, "drain", 1, 2, 3)
        await wait_js(page, "received.length === 3")
        cursor = await page.evaluate("source.lastEventId")
        watch.allow("status of 503", "ERR_(CONNECTION_RESET|INCOMPLETE_CHUNKED_ENCODING)")
        await proxy.cut()
        await publish(http, "drain", 4, 5)
        await wait_js(page, "received.length === 5", timeout=MS * 2)
        assert await page.evaluate("received") == [1, 2, 3, 4, 5]  # no gap, no duplicate
        errors = await page.evaluate("errors")
        assert [(e["code"], e["status"], e["final"], e["typed"]) for e in errors] == [
            ("network", None, False, True),
            ("unavailable", 503, False, True),
        ]
        assert len(requests) == 3
        assert requests[2][0] - requests[1][0] >= 0.95  # Retry-After: 1 is the least delay
        for _, url in requests[1:]:
            assert parse_qs(urlsplit(url).query)["last_event_id"] == [cursor]
        await page.evaluate("source.close()")
        await page.close()
    watch.check()


REFUSED = {
    401: '{"error": {"code": "unauthorized", "message": "no token"}}',
    403: '{"error": {"code": "permission_denied", "message": "not yours"}}',
}


async def test_401_403_404_close_the_source_with_a_typed_error(page: Page, watch: Watch) -> None:
    async def refuse(route: Route) -> None:
        status = int(urlsplit(route.request.url).path.rsplit("/", 1)[1])
        headers = {"content-type": "application/json"}
        await route.fulfill(status=status, headers=headers, body=REFUSED[status])

    requested: list[str] = []
    page.on("request", lambda request: requested.append(urlsplit(request.url).path))
    await page.route("**/refused/*", refuse)
    watch.allow(r"status of 40[134]")
    outcomes = await page.evaluate("""async () => {
      const urls = ["/refused/401", "/refused/403", "/no-such-endpoint"];
      return Promise.all(urls.map(async (url) => {
        const source = new tidings.TidingsEventSource(url, ["a"], { base: 0.01 });
        const errors = errorsOf(source);
        await until(source, "closed");
        return { errors, state: source.state };
      }));
    }""")
    assert outcomes == [
        {
            "state": "closed",
            "errors": [{"code": code, "status": status, "final": True, "typed": True}],
        }
        for code, status in [("unauthorized", 401), ("permission_denied", 403), ("not_found", 404)]
    ]
    # Asked once each: a refusal is final.
    assert sorted(path for path in requested if path != "/static/tidings.js") == [
        "/no-such-endpoint",
        "/refused/401",
        "/refused/403",
    ]


# -- the source: a silent connection ---------------------------------------------------

# Counts the page's pending timers, to show that close() leaves none running.
TIMERS = """() => {
  const set = window.setTimeout.bind(window);
  const clear = window.clearTimeout.bind(window);
  window.timers = new Set();
  window.setTimeout = (callback, ms, ...args) => {
    const id = set(() => {
      timers.delete(id);
      callback(...args);
    }, ms);
    timers.add(id);
    return id;
  };
  window.clearTimeout = (id) => {
    timers.delete(id);
    clear(id);
  };
}"""

IDLE = """async ([channel, idleTimeout, shared]) => {
  window.received = [];
  window.states = [];
  const options = { idleTimeout, shared, base: 0.05, cap: 0.1 };
  const source = (window.source = new tidings.TidingsEventSource("/sse", [channel], options));
  source.addEventListener("message", (e) => received.push(e.data));
  source.addEventListener("statechange", () => states.push(source.state));
  window.errors = errorsOf(source);
  await until(source, "open");
}"""


async def test_a_silent_connection_is_given_up_and_resumed_exactly(
    context: BrowserContext, watch: Watch, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    async with FaultProxy(server.port) as proxy:
        page = await open_page(context, watch, proxy.url)
        await page.evaluate(TIMERS)
        await page.evaluate(IDLE, ["idle", IDLE_MS, None])
        await publish(http, "idle", 1)
        await wait_js(page, "received.length === 1")
        cursor = await page.evaluate("source.lastEventId")
        proxy.stall()  # nothing passes either way, no socket closes: half-open
        await publish(http, "idle", 2)
        # The open stream goes silent, then so does the request that replaces it.
        await wait_js(page, "errors.length === 2", timeout=MS)
        await publish(http, "idle", 3)
        proxy.resume()
        await wait_js(page, "received.length === 3", timeout=MS * 2)
        assert await page.evaluate("received") == [1, 2, 3]  # no gap, no duplicate
        idle = {"code": "idle_timeout", "status": None, "final": False, "typed": True}
        errors = await page.evaluate("errors")  # a third if the resume came late
        assert errors[:2] == [idle, idle]
        assert all(error == idle for error in errors)
        assert await page.evaluate("states") == ["open", "reconnecting", "open"]
        assert await page.evaluate("source.lastEventId") != cursor
        # close() releases the connection and its watchdog: no timer is left.
        assert await page.evaluate("source.close(), timers.size") == 0
        await page.close()
    watch.check()


async def test_the_leader_of_shared_tabs_gives_up_a_silent_connection(
    context: BrowserContext, watch: Watch, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    async with FaultProxy(server.port) as proxy:
        first = await open_page(context, watch, proxy.url)
        second = await open_page(context, watch, proxy.url)
        for tab in (first, second):
            await tab.evaluate(IDLE, ["idle-shared", IDLE_MS, "idle-shared"])
        assert [await tab.evaluate("source.leader") for tab in (first, second)] == [True, False]
        await publish(http, "idle-shared", 1)
        for tab in (first, second):
            await wait_js(tab, "received.length === 1")
        proxy.stall()
        await publish(http, "idle-shared", 2)
        for tab in (first, second):  # the leader's error reaches the other tab too
            await wait_js(tab, "errors.some((e) => e.code === 'idle_timeout')", timeout=MS)
        proxy.resume()
        await publish(http, "idle-shared", 3)
        for tab in (first, second):
            await wait_js(tab, "received.length === 3", timeout=MS * 2)
            assert await tab.evaluate("received") == [1, 2, 3]
            errors = await tab.evaluate("errors")
            assert {(e["code"], e["final"], e["typed"]) for e in errors} == {
                ("idle_timeout", False, True)
            }
        await eventually(lambda: transports_are(http, sse=1))  # the leader's, for both tabs
        for tab in (first, second):
            await tab.evaluate("source.close()")
            await tab.close()
    watch.check()


async def test_keepalives_keep_an_idle_stream_open(page: Page, http: httpx.AsyncClient) -> None:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(urlsplit(request.url).path))
    await page.evaluate(TIMERS)
    # 0 turns the watchdog off: an open source has no timer at all.
    await page.evaluate(IDLE, ["quiet", 0, None])
    assert await page.evaluate("timers.size") == 0
    await page.evaluate("source.close()")
    await page.evaluate(IDLE, ["quiet", IDLE_MS, None])
    # No event for three idle periods: only the server's `: ping` comments flow.
    await page.evaluate("window.opened = performance.now()")
    await wait_js(page, f"performance.now() - opened > {3 * IDLE_MS}", timeout=MS)
    await publish(http, "quiet", 1)
    await wait_js(page, "received.length === 1")
    assert await page.evaluate("errors") == []
    assert await page.evaluate("states") == ["open"]
    assert requests.count("/sse") == 2  # one per source: no reconnection
    await page.evaluate("source.close()")
    assert await page.evaluate("timers.size") == 0


async def test_a_bad_idle_timeout_is_refused_before_anything_starts(page: Page) -> None:
    outcomes = await page.evaluate("""async () => {
      const requests = [];
      const real = window.fetch;
      window.fetch = (...args) => (requests.push(args[0]), real(...args));
      const refused = ["-1", "NaN", "Infinity", "'45s'", "null"].map((text) => {
        try {
          new tidings.TidingsEventSource("/sse", ["bad"], { idleTimeout: eval(text) });
          return `${text}: accepted`;
        } catch (error) {
          return `${text}: ${error.name}`;
        }
      });
      await new Promise((ok) => setTimeout(ok, 0)); // a source would have asked by now
      window.fetch = real;
      return { refused, requests: requests.length };
    }""")
    names = ["-1", "NaN", "Infinity", "'45s'", "null"]
    assert outcomes == {"refused": [f"{n}: RangeError" for n in names], "requests": 0}


# -- the socket: heartbeat, MessagePack ----------------------------------------------------


async def test_the_heartbeat_notices_a_half_open_connection_and_reconnects(
    context: BrowserContext, watch: Watch, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    async with FaultProxy(server.port) as proxy:
        page = await open_page(context, watch, proxy.url)
        await page.evaluate("""async () => {
          window.received = [];
          window.states = [];
          const socket = (window.socket = new tidings.TidingsSocket("/ws", {
            pingInterval: 200, pongTimeout: 300, base: 0.05, cap: 0.1,
          }));
          socket.addEventListener("message", (e) => received.push(e.data));
          socket.addEventListener("statechange", () => states.push(socket.state));
          await until(socket, "open");
          await socket.subscribe("heartbeat");
        }""")
        await publish(http, "heartbeat", 1)
        await wait_js(page, "received.length === 1")
        proxy.stall()  # nothing passes either way, no socket closes: half-open
        await publish(http, "heartbeat", 2)
        await wait_js(page, "socket.state === 'reconnecting'", timeout=MS)
        assert await page.evaluate("socket.closeCode") == 4002  # HEARTBEAT_TIMEOUT
        proxy.resume()
        await wait_js(page, "received.length === 2", timeout=MS * 2)
        assert await page.evaluate("received") == [1, 2]
        assert await page.evaluate("states") == ["open", "reconnecting", "open"]
        await page.evaluate("socket.close()")
        await page.close()
    watch.check()


async def test_msgpack_round_trip_with_the_server(page: Page, http: httpx.AsyncClient) -> None:
    if not (MSGPACK / "index.mjs").exists():
        unavailable(f"no {MSGPACK} (npm install --prefix {NPM_PREFIX} @msgpack/msgpack)")

    async def serve_npm(route: Route) -> None:
        name = urlsplit(route.request.url).path.removeprefix("/npm/")
        path = (MSGPACK / name).resolve()
        assert path.is_relative_to(MSGPACK.resolve())
        headers = {"content-type": "text/javascript"}
        await route.fulfill(status=200, headers=headers, body=path.read_bytes())

    await page.route("**/npm/**", serve_npm)
    frames: list[bytes | str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: frames.append(frame)))
    value = {"list": [1, 2.5, "ü", None, True, False], "nested": {"big": 2**40, "neg": -7}}
    result = await page.evaluate(
        """async (value) => {
          const msgpack = await import("/npm/index.mjs");
          const socket = new tidings.TidingsSocket("/ws", { msgpack });
          const got = new Promise((ok) => socket.addEventListener("message", (e) => ok(e.data)));
          await until(socket, "open");
          await socket.subscribe("packed");
          const ack = await socket.publish("packed", value);
          const data = await got;
          socket.close();
          return { protocol: socket.protocol, ack, data };
        }""",
        value,
    )
    assert result["protocol"] == "tidings.v1.msgpack"
    assert result["ack"]["offset"] == 1
    assert result["data"] == value
    # The server's frames are binary MessagePack, read here by the Python library.
    assert frames
    assert all(isinstance(frame, bytes) for frame in frames)
    decoded = [msgpack.unpackb(frame) for frame in frames]
    pushes = [m for d in decoded for m in (d if isinstance(d, list) else [d]) if "offset" in m]
    assert [push["data"] for push in pushes] == [value]
    history = (await http.get("/api/history/packed")).json()["events"]
    assert [event["data"] for event in history] == [value]


# -- streamFetch --------------------------------------------------------------------------


async def test_stream_fetch_reads_an_llm_answer_over_sse(page: Page) -> None:
    prompt = "Stream it"
    request = validate_request({"model": "demo", "messages": [{"role": "user", "content": prompt}]})
    expected = "".join(DemoProvider().tokens(request))
    result = await page.evaluate(
        """async (prompt) => {
          const messages = [{ role: "user", content: prompt }];
          const body = { model: "demo", messages, stream: true };
          const stream = tidings.streamFetch("/v1/chat/completions", body);
          let text = "";
          const kinds = new Set();
          for await (const item of stream) {
            kinds.add(item.event);
            if (item.data === "[DONE]") break;
            text += item.data.choices[0].delta.content ?? "";
          }
          const response = await stream.response;
          return { text, kinds: [...kinds], id: response.headers.get("x-tidings-stream-id") };
        }""",
        prompt,
    )
    assert result["text"] == expected
    assert result["kinds"] == ["message"]
    assert result["id"]


async def test_stream_fetch_reads_ndjson_and_break_releases_the_stream(
    page: Page, http: httpx.AsyncClient
) -> None:
    await publish(http, "lines", "a", "b", "c")
    got = await page.evaluate("""async () => {
      const items = [];
      for await (const item of tidings.streamFetch("/api/stream/lines?since=" + encodeURIComponent(
          (await (await fetch("/api/history/lines")).json()).epoch + ":0"))) {
        items.push([item.event, item.id, item.data.offset, item.data.data]);
        if (items.length === 3) break;
      }
      return items;
    }""")
    assert got == [["message", None, 1, "a"], ["message", None, 2, "b"], ["message", None, 3, "c"]]
    await eventually(lambda: transports_are(http, stream=0))


async def transports_are(http: httpx.AsyncClient, **wanted: int) -> bool:
    now = await transports(http)
    return all(now.get(name, 0) == count for name, count in wanted.items())


PACED = """async () => {
  // A response whose body makes one line each time the reader asks for a chunk.
  const real = window.fetch;
  let pulls = 0;
  window.fetch = async () => new Response(new ReadableStream({
    pull(controller) {
      pulls += 1;
      controller.enqueue(new TextEncoder().encode(JSON.stringify({ n: pulls }) + "\\n"));
    },
  }, { highWaterMark: 0 }), { headers: { "content-type": "application/x-ndjson" } });
  const seen = [];
  try {
    for await (const item of tidings.streamFetch("/anything", { go: 1 })) {
      seen.push([item.data.n, pulls]);
      await new Promise((ok) => setTimeout(ok, 20));  // a slow consumer
      if (seen.length === 5) break;
    }
  } finally {
    window.fetch = real;
  }
  return { seen, pulls };
}"""


async def test_stream_fetch_reads_only_as_fast_as_the_loop_asks(page: Page) -> None:
    result = await page.evaluate(PACED)
    # Each item was read when the loop asked for it, not ahead of it.
    assert result["seen"] == [[n, n] for n in range(1, 6)]
    assert result["pulls"] == 5


async def test_stream_fetch_abort_ends_the_loop_and_the_request(
    page: Page, http: httpx.AsyncClient
) -> None:
    await page.evaluate("""() => {
      window.controller = new AbortController();
      window.items = [];
      window.outcome = (async () => {
        try {
          const { signal } = controller;
          const stream = tidings.streamFetch("/api/stream/abort", null, { signal });
          for await (const item of stream) items.push(item.data.data);
          return null;
        } catch (error) {
          return error.name;
        }
      })();
    }""")
    await eventually(lambda: transports_are(http, stream=1))
    await publish(http, "abort", 1)
    await wait_js(page, "items.length === 1")
    assert await page.evaluate("controller.abort(); outcome") == "AbortError"
    assert await page.evaluate("items") == [1]
    await eventually(lambda: transports_are(http, stream=0))


async def test_stream_fetch_refusal_is_a_typed_error(page: Page, watch: Watch) -> None:
    watch.allow("status of 400")
    error = await page.evaluate("""async () => {
      try {
        for await (const item of tidings.streamFetch("/v1/chat/completions", { model: "demo" })) {}
        return null;
      } catch (error) {
        const typed = error instanceof tidings.TidingsError;
        return { typed, status: error.status, code: error.code };
      }
    }""")
    assert error == {"typed": True, "status": 400, "code": error["code"]}
    assert error["code"]


# -- bad input: a misbehaving server -------------------------------------------------------

MISBEHAVING = (
    "retry: soon\n\n"  # not a number: ignored
    "id: not a cursor\ndata: 1\n\n"
    "id: bad:e:1\nevent: reset\ndata: [1, 2]\n\n"
    ": a comment\n\n"
    'id: bad:e:2\ndata: {"fine": true}\n\n'
    "id: bad:e:3\ndata: not json is text\n\n"
)


async def test_malformed_events_are_error_events_never_exceptions(page: Page) -> None:
    async def misbehave(route: Route) -> None:
        headers = {"content-type": "text/event-stream"}
        await route.fulfill(status=200, headers=headers, body=MISBEHAVING)

    await page.route("**/bad?*", misbehave)
    result = await page.evaluate("""async () => {
      const source = new tidings.TidingsEventSource("/bad", ["bad"], { maxAttempts: 0 });
      const received = [];
      source.addEventListener("message", (e) => received.push([e.offset, e.data]));
      source.addEventListener("reset", (e) => received.push(["reset", e.data]));
      const errors = errorsOf(source);
      await until(source, "closed");
      return { received, errors, cursor: source.lastEventId };
    }""")
    assert result["received"] == [[2, {"fine": True}], [3, "not json is text"]]
    assert [(e["code"], e["final"]) for e in result["errors"]] == [
        ("malformed_event", False),  # the id that is not a cursor
        ("malformed_event", False),  # the reset without a channel
        ("network", False),  # the stream ended
        ("connection_closed", True),  # and maxAttempts: 0 gives up
    ]
    assert result["cursor"] == "bad:e:3"


async def test_malformed_frames_are_error_events_on_the_socket(page: Page) -> None:
    async def misbehave(ws: WebSocketRoute) -> None:
        ws.send("not json")
        ws.send("42")
        ws.send(b"\x81\xa1")  # binary on a JSON connection
        ws.send('{"channel": "x", "epoch": "e", "offset": 1, "event": "message", "data": 7}')

    await page.route_web_socket("**/fake-ws", misbehave)
    result = await page.evaluate("""async () => {
      const socket = new tidings.TidingsSocket("/fake-ws", { pingInterval: 0 });
      const errors = errorsOf(socket);
      const received = [];
      socket.addEventListener("message", (e) => received.push(e.data));
      await until(socket, "open");
      // The good frame comes after the three bad ones: wait for all four (5 s at most).
      const deadline = Date.now() + 5000;
      await new Promise((ok) => {
        const done = () => (errors.length === 3 && received.length === 1) || Date.now() > deadline;
        const check = () => (done() ? ok() : setTimeout(check, 10));
        check();
      });
      socket.close();
      return { errors, received, state: socket.state };
    }""")
    assert [e["code"] for e in result["errors"]] == ["malformed_message"] * 3
    assert result["received"] == [7]  # the good frame after them still arrives
    assert result["state"] == "closed"


# -- connections: shared tabs, close() ----------------------------------------------------

SHARED = """async () => {
  window.received = [];
  const options = { shared: true };
  const source = (window.source = new tidings.TidingsEventSource("/sse", ["tabs"], options));
  source.addEventListener("message", (e) => received.push(e.data));
  await until(source, "open");
}"""


async def test_tabs_share_one_connection_and_hand_it_over(
    context: BrowserContext,
    page: Page,
    watch: Watch,
    server: ServerProcess,
    http: httpx.AsyncClient,
) -> None:
    second = await open_page(context, watch, server.url)
    await page.evaluate(SHARED)
    await second.evaluate(SHARED)
    assert [await p.evaluate("source.leader") for p in (page, second)] == [True, False]
    await eventually(lambda: transports_are(http, sse=1))
    await publish(http, "tabs", 1, 2)
    for p in (page, second):
        await wait_js(p, "received.length === 2")
    await page.close()  # the tab holding the connection goes: the other takes over
    await wait_js(second, "source.leader && source.state === 'open'")
    await publish(http, "tabs", 3)
    await wait_js(second, "received.length === 3")
    assert await second.evaluate("received") == [1, 2, 3]
    await eventually(lambda: transports_are(http, sse=1))
    await second.evaluate("source.close()")
    await eventually(lambda: transports_are(http, sse=0))


async def test_one_source_carries_many_channels(page: Page, http: httpx.AsyncClient) -> None:
    await page.evaluate("""async () => {
      window.received = [];
      const channels = Array.from({ length: 10 }, (_, n) => `many:${n}`);
      const source = (window.source = new tidings.TidingsEventSource("/sse", channels));
      source.addEventListener("message", (e) => received.push([e.channel, e.data]));
      await until(source, "open");
    }""")
    for n in range(10):
        await publish(http, f"many:{n}", n)
    await wait_js(page, "received.length === 10")
    assert sorted(await page.evaluate("received")) == sorted([f"many:{n}", n] for n in range(10))
    assert (await transports(http))["sse"] == 1
    await page.evaluate("source.close()")


async def test_close_releases_every_connection(page: Page, http: httpx.AsyncClient) -> None:
    await page.evaluate("""async () => {
      window.clients = [
        new tidings.TidingsEventSource("/sse", ["release"]),
        new tidings.TidingsEventSource("/sse", ["release"], { shared: "release" }),
        new tidings.TidingsSocket("/ws"),
      ];
      await Promise.all(clients.map((client) => until(client, "open")));
    }""")
    await eventually(lambda: transports_are(http, sse=2, ws=1))
    states = await page.evaluate("""() => {
      clients.forEach((client) => client.close());
      return clients.map((client) => client.state);
    }""")
    assert states == ["closed", "closed", "closed"]
    await eventually(lambda: transports_are(http, sse=0, ws=0))


STORED = """async () => {
  window.received = [];
  const options = { sessionStorage: "stored-cursor" };
  const source = (window.source = new tidings.TidingsEventSource("/sse", ["stored"], options));
  source.addEventListener("message", (e) => received.push(e.data));
  await until(source, "open");
}"""


async def test_the_cursor_survives_a_reload_in_session_storage(
    page: Page, http: httpx.AsyncClient
) -> None:
    await page.evaluate(STORED)
    await publish(http, "stored", 1, 2)
    await wait_js(page, "received.length === 2")
    cursor = await page.evaluate("source.lastEventId")
    await page.reload()
    await publish(http, "stored", 3)  # while no page listens
    await load_client(page)
    assert await page.evaluate("sessionStorage.getItem('stored-cursor')") == cursor
    await page.evaluate(STORED)
    await publish(http, "stored", 4)
    await wait_js(page, "received.length === 2")
    assert await page.evaluate("received") == [3, 4]  # from the stored cursor, exactly
    await page.evaluate("source.close()")


SPLIT = """async (vectors) => {
  // Each vector's stream as a response cut into the given chunks.
  const real = window.fetch;
  const results = {};
  try {
    for (const [name, chunks] of vectors) {
      window.fetch = async () => new Response(new ReadableStream({
        start(controller) {
          for (const chunk of chunks) controller.enqueue(new Uint8Array(chunk));
          controller.close();
        },
      }), { headers: { "content-type": "text/event-stream" } });
      const events = [];
      for await (const item of tidings.streamFetch("/vector")) {
        events.push([item.event, item.raw, item.id]);
      }
      results[name] = events;
    }
  } finally {
    window.fetch = real;
  }
  return results;
}"""


async def test_the_event_stream_parser_meets_the_spec_vectors(page: Page) -> None:
    """The WHATWG vectors the Python parser is held to, each split at random points."""
    chooser = random.Random(17)
    vectors = []
    for vector in VECTORS:
        cuts = sorted(chooser.sample(range(1, len(vector.stream)), min(3, len(vector.stream) - 1)))
        edges = [0, *cuts, len(vector.stream)]
        chunks = [list(vector.stream[a:b]) for a, b in itertools.pairwise(edges)]
        vectors.append([vector.name, chunks])
    results = await page.evaluate(SPLIT, vectors)
    for vector in VECTORS:
        assert [tuple(event) for event in results[vector.name]] == vector.events, vector.name


async def test_the_servers_retry_is_the_least_delay(page: Page) -> None:
    bodies = ["retry: 700\nid: r:e:1\ndata: 1\n\n", "id: r:e:2\ndata: 2\n\n"]
    asked: list[tuple[float, str | None]] = []

    async def answer(route: Route) -> None:
        cursor = parse_qs(urlsplit(route.request.url).query).get("last_event_id", [None])[0]
        asked.append((time.monotonic(), cursor))
        body = bodies[len(asked) - 1] if len(asked) <= len(bodies) else ""
        await route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)

    await page.route("**/retrying?*", answer)
    received = await page.evaluate("""async () => {
      const source = new tidings.TidingsEventSource("/retrying", ["r"], { base: 0.001 });
      const received = [];
      await new Promise((ok) => source.addEventListener("message", (e) => {
        received.push(e.data);
        if (received.length === 2) ok();
      }));
      source.close();
      return received;
    }""")
    assert received == [1, 2]
    assert asked[1][1] == "r:e:1"  # resumed from the cursor
    assert asked[1][0] - asked[0][0] >= 0.65  # retry: 700, though the backoff is 1 ms
