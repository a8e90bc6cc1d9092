"""The Autobahn WebSocket cases (the quick ones) against the echo on both write paths.

The full selection (with 9.* and the cases that wait on purpose) runs in
``.ci/run`` through ``python -m tests.support.autobahn``.
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from tests.support.autobahn import (
    ALLOWED,
    PROTOCOL_CASES,
    TIMED_CASES,
    echo_server,
    handoff_problems,
    problems,
    run_cases,
)
from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess


@pytest.mark.parametrize("path", ["fast", "asgi"])
async def test_autobahn_quick_cases(path: str) -> None:
    async with echo_server(path) as (url, echo):
        results = await run_cases(url, PROTOCOL_CASES, TIMED_CASES)
    assert len(results) > 200
    found = handoff_problems(path, echo.handed_off) + problems(results, ALLOWED[path])
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", ["fast", "asgi"])
async def test_echo_returns_every_message_and_enforces_the_limit(path: str) -> None:
    async with (
        echo_server(path, max_frame_bytes=10) as (url, echo),
        asyncio.timeout(TIMEOUT),
        connect(url, max_size=None) as socket,
    ):
        await socket.send("héllo")
        assert await socket.recv() == "héllo"
        await socket.send(b"\x00\x01")
        assert await socket.recv() == b"\x00\x01"
        await socket.send(b"x" * 11)
        with pytest.raises(ConnectionClosedError) as closed:
            await socket.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
    assert echo.handed_off == (1 if path == "fast" else 0)


async def test_the_product_serves_no_echo_route() -> None:
    with ServerProcess(env={"TIDINGS_DEMO": "0"}) as server:
        results = await run_cases(server.url.replace("http://", "ws://") + "/ws/echo", ["1.1.1"])
    assert [result.passed for result in results] == [False]
