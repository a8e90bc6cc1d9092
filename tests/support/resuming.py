"""Clients that reconnect and resume through server restarts, and record everything.

::

    crowd = Crowd()
    tally = crowd.tally("ws-0", ["a", "b"])
    async with running(ResumingSocket(proxy_url, tally).run()):
        await crowd.until(lambda: crowd.all_have({"a": 10, "b": 10}))

:class:`ResumingSocket` speaks the WebSocket protocol itself (``tidings.v1.json``)
and keeps no filter: it resubscribes each channel ``since`` the last event it
got, and records every push as it comes, so a duplicate or a gap the server
sends shows in its :class:`Tally`. :func:`follow_sse` and
:func:`follow_socket` record what ``tidings.client.listen`` and ``Socket``
hand out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from tests.support.env import TIMEOUT
from tidings.client import (
    ConnectionState,
    Message,
    SocketEvent,
    SocketSubscription,
    SSEListener,
)
from tidings.wire.reset import Reset

__all__ = [
    "Crowd",
    "ResumingSocket",
    "Tally",
    "channels_of",
    "connection_state",
    "follow_socket",
    "follow_sse",
    "running",
]


@dataclass
class Tally:
    """What one client received, per channel, in arrival order: ``(offset, data)``."""

    name: str
    channels: list[str]
    crowd: Crowd
    events: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    #: Resets, error replies and anything else that must not happen.
    problems: list[str] = field(default_factory=list)
    #: Connections that were open and ended.
    dropped: int = 0
    connected: bool = False

    def __post_init__(self) -> None:
        self.events = {channel: [] for channel in self.channels}

    def record(self, channel: str, offset: int, data: Any) -> None:
        self.events[channel].append((offset, data))
        self.crowd.changed.set()

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.crowd.changed.set()

    def set_connected(self, connected: bool) -> None:
        if self.connected and not connected:
            self.dropped += 1
        self.connected = connected
        self.crowd.changed.set()

    def last_offset(self, channel: str) -> int:
        events = self.events[channel]
        return events[-1][0] if events else 0

    def describe(self, channel: str, expected: list[tuple[int, Any]]) -> str:
        """What is wrong with the events of ``channel``: problems, gaps, repeats."""
        offsets = [offset for offset, _ in self.events[channel]]
        seen = set(offsets)
        missing = [offset for offset, _ in expected if offset not in seen]
        repeated = sorted({offset for offset in offsets if offsets.count(offset) > 1})
        return f"problems={self.problems[:3]} missing={missing[:20]} repeated={repeated[:20]}"


class Crowd:
    """Every client's :class:`Tally`; wait on their progress without polling."""

    def __init__(self) -> None:
        self.tallies: list[Tally] = []
        self.changed = asyncio.Event()

    def tally(self, name: str, channels: Iterable[str]) -> Tally:
        tally = Tally(name, list(channels), self)
        self.tallies.append(tally)
        return tally

    def all_have(self, offsets: Mapping[str, int]) -> bool:
        """Whether every client received the event at ``offsets[channel]`` of its channels
        (or something after it, or a problem to report)."""
        return all(
            tally.problems or tally.last_offset(channel) >= offsets.get(channel, 0)
            for tally in self.tallies
            for channel in tally.channels
        )

    def all_connected(self) -> bool:
        return all(tally.connected for tally in self.tallies)

    async def caught_up(self, offsets: Mapping[str, int], *, timeout: float, what: str) -> None:
        """Wait until every client is connected and has the events up to ``offsets``."""
        await self.until(
            lambda: self.all_connected() and self.all_have(offsets), timeout=timeout, what=what
        )

    def failures(self, expected: Mapping[str, list[tuple[int, Any]]]) -> list[str]:
        """One line per client and channel whose events are not exactly ``expected[channel]``
        (in order, each once), or whose client saw a problem."""
        return [
            f"{tally.name} {channel}: {tally.describe(channel, expected[channel])}"
            for tally in self.tallies
            for channel in tally.channels
            if tally.problems or tally.events[channel] != expected[channel]
        ]

    async def until(self, check: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Wait until ``check()`` holds; it is asked again whenever a client makes progress."""
        try:
            async with asyncio.timeout(timeout):
                while not check():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}: {self.summary()}") from None

    def summary(self) -> str:
        lines = [
            f"{t.name}: connected={t.connected} dropped={t.dropped} "
            f"last={ {c: t.last_offset(c) for c in t.channels} } problems={t.problems[:3]}"
            for t in self.tallies
        ]
        return "\n".join(lines)


def channels_of(n: int, channels: Sequence[str]) -> list[str]:
    """The channels client ``n`` follows: one for odd ``n``, two for even ``n``, spread."""
    first = channels[n % len(channels)]
    return [first] if n % 2 else [first, channels[(n + 1) % len(channels)]]


class ResumingSocket:
    """A WebSocket client that reconnects (full-jitter delays up to ``cap``) and
    resubscribes every channel ``since`` the last event it received."""

    def __init__(self, url: str, tally: Tally, *, cap: float = 0.2) -> None:
        self.url = url
        self.tally = tally
        self.cap = cap
        self.positions: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    async def run(self) -> None:
        """Connect, and connect again whenever the connection ends, until cancelled."""
        while True:
            with contextlib.suppress(OSError, WebSocketException, TimeoutError, EOFError):
                async with connect(
                    self.url,
                    subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
                    open_timeout=TIMEOUT,
                ) as ws:
                    try:
                        await self._session(ws)
                    finally:
                        self.tally.set_connected(False)
            await asyncio.sleep(random.uniform(0, self.cap))  # the reconnection delay

    async def _session(self, ws: ClientConnection) -> None:
        waiting: dict[int, str] = {}
        for channel in self.tally.channels:
            request = next(self._ids)
            waiting[request] = channel
            command: dict[str, Any] = {"id": request, "op": "subscribe", "channel": channel}
            if channel in self.positions:
                command["since"] = self.positions[channel]
            await ws.send(orjson.dumps(command).decode())
        async for frame in ws:
            document = orjson.loads(frame)
            for message in document if isinstance(document, list) else [document]:
                if "id" in message:
                    self._reply(waiting, message)
                    if not waiting:
                        self.tally.set_connected(True)
                else:
                    self._push(message)

    def _reply(self, waiting: dict[int, str], message: dict[str, Any]) -> None:
        channel = waiting.pop(message["id"], None)
        if channel is None or not message.get("ok"):
            self.tally.problem(f"unexpected reply {message}")
            return
        result = message["result"]
        if "reset" in result:
            self.tally.problem(f"subscribe to {channel} reset: {result}")
        # Before any event, resume from where the first subscription began.
        self.positions.setdefault(channel, {"epoch": result["epoch"], "offset": result["offset"]})

    def _push(self, message: dict[str, Any]) -> None:
        channel, offset = message.get("channel"), message.get("offset")
        if channel not in self.tally.events or offset is None or message.get("event") == "reset":
            self.tally.problem(f"unexpected push {message}")
            return
        self.positions[channel] = {"epoch": message["epoch"], "offset": offset}
        self.tally.record(channel, offset, message["data"])


async def follow_sse(listener: SSEListener, tally: Tally) -> None:
    """Record what an SSE listener hands out, until cancelled (its ``on_state``
    is :func:`connection_state` of the same tally)."""
    async for item in listener:
        if isinstance(item, Reset) or not isinstance(item, Message) or item.channel is None:
            tally.problem(f"unexpected item {item}")
            continue
        assert item.offset is not None
        tally.record(item.channel, item.offset, item.json())


def connection_state(tally: Tally) -> Callable[[ConnectionState], None]:
    """An ``on_state`` callback that keeps ``tally.connected``."""
    return lambda state: tally.set_connected(state is ConnectionState.OPEN)


async def follow_socket(subscription: SocketSubscription, tally: Tally) -> None:
    """Record what a ``Socket`` subscription hands out, until cancelled."""
    async for item in subscription:
        if not isinstance(item, SocketEvent):
            tally.problem(f"unexpected item {item}")
            continue
        tally.record(item.channel, item.offset, item.data)


@contextlib.asynccontextmanager
async def running(
    *coroutines: Coroutine[Any, Any, None],
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run ``coroutines`` as tasks for the block; cancel and await them at its end.

    A task that ended with an error before the block ended re-raises it.
    """
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [result for result in results if isinstance(result, Exception)]
    if errors:
        raise errors[0]
