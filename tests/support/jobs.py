"""Jobs steered by a test (``Lab``) and starting one over HTTP, for the job tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.support.env import TIMEOUT
from tidings.jobs import Jobs, Log, Progress

#: The first events of ``gated`` with ``steps=2``, up to where it waits at its gate.
GATED_TWO_STEPS = ["queued", "started", "log", "progress", "progress"]


class Lab:
    """The server's jobs, steered by the test: each waits at its gate and records its life."""

    def __init__(self) -> None:
        self.jobs = Jobs()
        self.gates: dict[int, asyncio.Event] = {}
        self.waits: dict[int, asyncio.Event] = {}
        self.everyone = asyncio.Event()
        self.started: list[int] = []
        self.cleaned: list[int] = []
        self.running = 0
        self.most_running = 0
        self.jobs.add("gated", self.gated)
        self.jobs.add("crowd", self.crowd)

    def _event(self, table: dict[int, asyncio.Event], number: int) -> asyncio.Event:
        return table.setdefault(number, asyncio.Event())

    def open(self, number: int) -> None:
        """Let job ``number`` past its gate."""
        self._event(self.gates, number).set()

    async def waiting(self, *numbers: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            for number in numbers:
                await self._event(self.waits, number).wait()

    async def gated(self, number: int, steps: int = 1) -> AsyncIterator[Progress | Log]:
        self.started.append(number)
        try:
            yield Log(f"job {number}")
            for step in range(1, steps + 1):
                yield Progress(100 * step / (steps + 1), f"step {step}", result={"step": step})
            self._event(self.waits, number).set()
            await self._event(self.gates, number).wait()
            yield Progress(100, "done", result={"number": number})
        finally:
            self.cleaned.append(number)

    async def crowd(self, number: int) -> AsyncIterator[Progress]:
        self.started.append(number)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            self._event(self.waits, number).set()
            await self.everyone.wait()
            yield Progress(100, result=number)
        finally:
            self.running -= 1


async def start(http: httpx.AsyncClient, name: str, **arguments: Any) -> dict[str, Any]:
    response = await http.post(f"/api/jobs/{name}", json=arguments)
    assert response.status_code == 202, response.text
    started: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/api/jobs/{started['id']}"
    return started
