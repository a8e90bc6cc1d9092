"""TidingsSocket (/static/tidings.js) in Chromium: live events, exact recovery, offline queue."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.async_api import Page

from tests.support.env import TIMEOUT, eventually
from tests.support.proxy import FaultProxy
from tests.support.server import ServerProcess
from tidings.wire.codes import CloseCode, should_reconnect

MS = TIMEOUT * 1000

SETUP = """async () => {
  const { TidingsSocket } = await import("/static/tidings.js");
  const options = { info: { name: "browser" }, base: 0.05, cap: 0.2 };
  const socket = new TidingsSocket("/ws", options);
  window.received = [];
  window.resets = [];
  socket.addEventListener("message", (e) => window.received.push([e.channel, e.offset, e.data]));
  socket.addEventListener("reset", (e) => window.resets.push([e.channel, e.offset]));
  window.socket = socket;
  const opened = () => socket.state === "open";
  await new Promise((ok) => socket.addEventListener("statechange", () => opened() && ok()));
  return await socket.subscribe("room");
}"""


async def received(page: Page) -> list[Any]:
    result: list[Any] = await page.evaluate("window.received")
    return result


async def test_socket_recovers_exactly_and_lands_offline_publishes_once(page: Page) -> None:
    with ServerProcess() as server:
        async with (
            FaultProxy(server.port) as proxy,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            await page.goto(proxy.url)
            subscribed = await page.evaluate(SETUP)
            assert subscribed["recovered"] is True
            for n in range(3):
                await client.post("/api/publish", json={"channel": "room", "data": n})

            async def count(wanted: int) -> bool:
                return len(await received(page)) == wanted

            await eventually(lambda: count(3))
            ack = await page.evaluate("window.socket.publish('room', {from: 'page'})")
            assert ack["offset"] == 4
            await eventually(lambda: count(4))
            await proxy.cut()  # the network drops
            for n in range(3, 6):  # published while the page is cut off
                await client.post("/api/publish", json={"channel": "room", "data": n})
            # A publish made while offline waits and lands once after reconnecting.
            await page.evaluate(
                "window.pendingAck = window.socket.publish('room', 'offline', {text: true})"
            )
            await eventually(lambda: count(8), timeout=TIMEOUT * 2)
            ack = await page.evaluate("window.pendingAck")
            events = await received(page)
            assert [event[1] for event in events] == list(range(1, 9)), "no gap, no duplicate"
            assert [event[2] for event in events] == [0, 1, 2, {"from": "page"}, 3, 4, 5, "offline"]
            assert ack["offset"] == 8
            assert await page.evaluate("window.resets") == []
            history = (await client.get("/api/history/room")).json()["events"]
            assert len(history) == 8  # the offline publish landed exactly once
            await page.evaluate("window.socket.close()")


async def test_should_reconnect_matches_python(page: Page) -> None:
    with ServerProcess() as server:
        await page.goto(server.url)
        codes = [int(code) for code in CloseCode] + [1000, 3000, 4000, 4499, 4500, 4999]
        verdicts = await page.evaluate(
            """async (codes) => {
                 const { shouldReconnect } = await import("/static/tidings.js");
                 return codes.map((code) => shouldReconnect(code));
               }""",
            codes,
        )
        assert verdicts == [should_reconnect(code) for code in codes]


EVENT_NAMES = """async () => {
  const { TidingsEventSource, TidingsSocket } = await import("/static/tidings.js");
  const socket = new TidingsSocket("/ws");
  const source = new TidingsEventSource("/sse", ["names"]);
  const copy = new Promise((ok) => socket.addEventListener("message", (e) => ok(e.event)));
  const own = new Promise((ok) => source.addEventListener("note", (e) => ok([e.type, e.event])));
  const opened = () => source.state === "open";
  await new Promise((ok) => source.addEventListener("statechange", () => opened() && ok()));
  await socket.subscribe("names");
  await socket.publish("names", 1, { event: "note" });
  const result = { socket: await copy, source: await own };
  socket.close();
  source.close();
  return result;
}"""


async def test_events_carry_their_type_as_event_like_the_python_clients(page: Page) -> None:
    with ServerProcess() as server:
        await page.goto(server.url)
        names = await page.evaluate(EVENT_NAMES)
        # The "message" copy of a "note" push still says what it was.
        assert names == {"socket": "note", "source": ["note", "note"]}
