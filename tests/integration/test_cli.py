"""The ``tidings`` command against a real server: publish, listen, resume after a restart."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx

from tests.support.env import TIMEOUT, eventually
from tests.support.server import ServerProcess


async def run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT * 2)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def history(url: str, channel: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url) as client:
        events: list[dict[str, Any]] = (await client.get(f"/api/history/{channel}")).json()[
            "events"
        ]
        return events


async def test_publish_json_text_and_errors() -> None:
    with ServerProcess() as server:
        status, out, _ = await run("publish", "--url", server.url, "news", '{"n": 1}')
        assert status == 0
        assert json.loads(out)["offset"] == 1
        status, _, _ = await run(
            "publish", "--url", server.url, "news", "not json", "--event", "note"
        )
        assert status == 0
        status, _, _ = await run("publish", "--url", server.url, "news", "42", "--text")
        assert status == 0
        events = await history(server.url, "news")
        assert [(e["data"], e.get("text", False), e["event"]) for e in events] == [
            ({"n": 1}, False, "message"),
            ("not json", True, "note"),
            ("42", True, "message"),
        ]
        status, _, err = await run("publish", "--url", server.url, "news", "{bad", "--json")
        assert status == 2
        assert "not valid JSON" in err
        status, _, err = await run("publish", "--url", server.url, "bad channel", "1")
        assert status == 1
        assert "invalid_channel" in err
        assert len(await history(server.url, "news")) == 3
    status, _, err = await run("publish", "--url", server.url, "news", "1")
    assert status == 1
    assert "cannot reach" in err


async def test_listen_resumes_after_the_server_restarts() -> None:
    server = ServerProcess(env={"TIDINGS_SSE_RETRY": "0.1"}).start()
    listener = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "listen",
        "--json",
        "--url",
        server.url,
        "jobs",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert listener.stdout is not None

    async def next_line() -> dict[str, Any]:
        line: dict[str, Any] = json.loads(
            await asyncio.wait_for(listener.stdout.readline(), TIMEOUT)
        )
        return line

    async def publish_when_subscribed(data: int) -> None:
        async with httpx.AsyncClient(base_url=server.url) as client:

            async def subscribed() -> bool:
                return bool((await client.get("/api/stats")).json()["subscribers"])

            await eventually(subscribed, timeout=TIMEOUT * 2)
            await client.post("/api/publish", json={"channel": "jobs", "data": data})

    try:
        await publish_when_subscribed(1)
        assert (await next_line())["data"] == "1"
        server.kill()  # a crash: the memory backend loses its history
        server.start()
        await publish_when_subscribed(2)
        reset = await next_line()
        assert reset["reset"] == "jobs"
        assert reset["reason"] == "epoch"
        assert (await next_line())["data"] == "2"
    finally:
        listener.terminate()
        await asyncio.wait_for(listener.wait(), TIMEOUT)
        server.close()


async def test_bench_counts_every_delivery() -> None:
    with ServerProcess() as server:
        status, out, err = await run(
            "bench", "--url", server.url, "--json", "-n", "20", "-m", "300", "--size", "64"
        )
        assert status == 0, err
        result = json.loads(out)
        assert result["connected"] == 20
        assert result["published"] == 300
        assert result["delivered"] == result["expected"] == 6000
        assert (result["missing"], result["duplicates"], result["out_of_order"]) == (0, 0, 0)
        assert result["latency_p50_ms"] > 0
        assert result["errors"] == []
        status, _, err = await run("bench", "--url", server.url, "-n", "0")
        assert status == 2
        assert "subscribers" in err
