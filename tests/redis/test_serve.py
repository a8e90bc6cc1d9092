"""``tidings serve --backend redis``: the flags select Redis, and no Redis means no start."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx

from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess
from tidings.testing import free_port


async def test_serve_flags_select_redis_and_its_prefix(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    args = ["--backend", "redis", "--redis-url", redis_url, "--redis-prefix", redis_prefix]
    with ServerProcess(args=args) as node:
        async with httpx.AsyncClient(base_url=node.url, timeout=TIMEOUT) as client:
            response = await client.post("/api/publish", json={"channel": "flags:a", "data": 1})
            assert response.status_code == 200, response.text
            assert await redis_client.exists(f"{redis_prefix}{{flags:a}}:s") == 1
            history = (await client.get("/api/history/flags:a")).json()
            assert [event["data"] for event in history["events"]] == [1]


def test_serve_refuses_to_start_without_redis() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidings",
            "serve",
            "--port",
            str(free_port()),
            "--backend",
            "redis",
            "--redis-url",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=False,
    )
    assert finished.returncode == 1
    assert finished.stderr.startswith("tidings: backend redis at 127.0.0.1:")
    assert "unavailable" in finished.stderr
    assert "Traceback" not in finished.stderr
