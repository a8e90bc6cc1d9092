"""A client that goes away is released at once: no subscriber and no task left behind."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.env import TIMEOUT, eventually
from tests.support.sse import open_sse
from tidings.hub import Hub
from tidings.server import create_app
from tidings.settings import Settings
from tidings.testing import run_server


@pytest.mark.parametrize("fast_write", [True, False], ids=["fast", "asgi"])
async def test_disconnect_releases_subscription_at_once(fast_write: bool) -> None:
    hub = Hub()
    # No keepalive comes in time to find the dead peer: the disconnect alone must.
    app = create_app(hub, Settings(log_level="warning", sse_keepalive=TIMEOUT * 100))
    async with hub, run_server(app, fast_write=fast_write) as url:
        baseline = {task for task in asyncio.all_tasks() if not task.done()}
        connections = app.state.tidings.connections
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for _ in range(3):
                async with open_sse(client, "/sse?channel=a&channel=b") as reader:
                    await reader.until(b"\n\n")
                    assert hub.stats().subscribers == 2
                    assert connections.count("sse") == 1
                # The client closed its connection: nothing is left.
                await eventually(
                    lambda: not hub.stats().subscriptions and not connections.count("sse"),
                    interval=0.01,
                )
                stats = hub.stats()
                assert (stats.subscribers, stats.channels) == (0, 0)
        current = asyncio.current_task()
        # The keepalive ticker ends with its last connection; the server's
        # per-connection tasks end with the connections.
        await eventually(
            lambda: (
                not {
                    task
                    for task in asyncio.all_tasks()
                    if not task.done() and task not in baseline and task is not current
                }
            )
        )
