"""The ``tidings`` command against a real server: publish, listen, resume after a restart,
and the one line (and exit status) each common mistake gets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any

import httpx

from tests.support.env import TIMEOUT, eventually
from tests.support.server import ServerProcess
from tidings.server.app import DEMO
from tidings.testing import free_port


async def run(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env} if env is not None else None,
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
        assert err == (
            "tidings: publish: 400 invalid_channel: invalid channel name 'bad channel': "
            "contains ' '; allowed are letters, digits and _ : . @ / -\n"
        )
        status, _, err = await run("listen", "--url", server.url, "bad channel")
        assert status == 1
        assert err.startswith("tidings: listen: 400 invalid_channel: invalid channel name")
        assert err.count("\n") == 1
        assert len(await history(server.url, "news")) == 3
    status, _, err = await run("publish", "--url", server.url, "news", "1")
    assert status == 1
    assert err == f"tidings: cannot reach {server.url}\n"


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
        assert (await next_line())["data"] == 1
        server.kill()  # a crash: the memory backend loses its history
        server.start()
        await publish_when_subscribed(2)
        reset = await next_line()
        assert reset["reset"] == "jobs"
        assert reset["reason"] == "epoch"
        assert (await next_line())["data"] == 2
    finally:
        listener.terminate()
        await asyncio.wait_for(listener.wait(), TIMEOUT)
        server.close()


async def test_listen_json_prints_data_as_json() -> None:
    published = [{"data": {"n": [1, 2.5, None]}}, {"text": "plain text"}, {"data": "a string"}]
    with ServerProcess() as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            for body in published:
                answer = await client.post("/api/publish", json={"channel": "jobs", **body})
        epoch = answer.json()["epoch"]
        listener = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "tidings", "listen", "--json", "--url", server.url, "jobs"),
            *("--last-event-id", f"jobs:{epoch}:0"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert listener.stdout is not None
        try:
            lines = [
                json.loads(await asyncio.wait_for(listener.stdout.readline(), TIMEOUT))
                for _ in published
            ]
        finally:
            listener.terminate()
            await asyncio.wait_for(listener.wait(), TIMEOUT)
    # The decoded value for JSON data (not a JSON-encoded string), the text for text.
    assert [line["data"] for line in lines] == [{"n": [1, 2.5, None]}, "plain text", "a string"]
    assert [(line["offset"], line["event"]) for line in lines] == [
        (1, "message"),
        (2, "message"),
        (3, "message"),
    ]


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


async def test_publish_and_serve_meet_on_tidings_port() -> None:
    port = free_port()
    with ServerProcess(port=port):
        status, out, err = await run("publish", "news", "1", env={"TIDINGS_PORT": str(port)})
        assert status == 0, err
        assert json.loads(out)["offset"] == 1
        url = f"http://127.0.0.1:{port}"
        status, _, err = await run("publish", "news", "2", env={"TIDINGS_URL": url})
        assert status == 0, err
        assert [event["data"] for event in await history(url, "news")] == [1, 2]


async def test_serve_no_demo_serves_the_client_and_no_demo_file() -> None:
    demo = ["/", *(f"/static/{path.name}" for path in sorted(DEMO.iterdir()))]
    with ServerProcess(args=["--no-demo"]) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            assert (await client.get("/static/tidings.js")).status_code == 200
            assert [(await client.get(path)).status_code for path in demo] == [404] * len(demo)


async def test_serve_on_a_port_in_use_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, out, err = await run("serve", "--port", str(port))
    assert (status, out) == (1, "")
    assert err == f"tidings: port {port} is in use; pass --port\n"


async def interrupt(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """Send Ctrl-C's SIGINT; the exit status and what it wrote to stderr."""
    assert process.stderr is not None
    process.send_signal(signal.SIGINT)
    err = await asyncio.wait_for(process.stderr.read(), TIMEOUT * 2)
    status = await asyncio.wait_for(process.wait(), TIMEOUT)
    return status, err.decode()


async def test_ctrl_c_stops_serve_with_one_line() -> None:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tidings", "serve", "--port", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TIDINGS_LOG_LEVEL": "warning"},
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def serving() -> bool:
                try:
                    return (await client.get("/api/stats")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(serving, timeout=TIMEOUT * 3)
        status, err = await interrupt(server)
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
    assert status == 0  # drained
    assert "Traceback" not in err
    assert err.endswith("tidings: stopped\n")


async def test_listen_to_an_unreachable_server_keeps_saying_so() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tidings", "listen", "--url", url, "jobs",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert listener.stderr is not None
    try:
        delays = []
        for _ in range(3):
            line = (await asyncio.wait_for(listener.stderr.readline(), TIMEOUT * 2)).decode()
            match = re.fullmatch(rf"tidings: cannot reach {url}, retrying in (\d+\.\d)s…\n", line)
            assert match, line
            delays.append(float(match[1]))
        assert delays == sorted(delays)
        status, err = await interrupt(listener)
    finally:
        if listener.returncode is None:
            listener.kill()
            await listener.wait()
    assert status == 130
    assert err.endswith("tidings: stopped\n")
    assert "Traceback" not in err


async def test_jobs_start_watch_list_and_cancel() -> None:
    with ServerProcess() as server:  # the demo job is on by default
        url = ["--url", server.url]
        status, out, _ = await run(
            "jobs", "start", "demo", '{"steps": 3, "interval": 0.01}', "--watch", *url
        )
        assert status == 0
        assert '"count": 3' in out
        assert "completed" in out
        status, out, _ = await run("jobs", "start", "demo", '{"steps": 100, "interval": 1}', *url)
        assert status == 0
        job_id = json.loads(out)["id"]
        status, out, _ = await run("jobs", "cancel", job_id, *url)
        assert status == 0
        assert json.loads(out)["state"] == "cancelled"
        status, out, _ = await run("jobs", "watch", job_id, *url)
        assert status == 1  # it did not complete
        assert "cancelled" in out
        status, out, _ = await run("jobs", "list", *url)
        assert status == 0
        assert [job["state"] for job in json.loads(out)["jobs"]] == ["completed", "cancelled"]


async def test_jobs_refusals_are_one_line() -> None:
    with ServerProcess() as server:
        url = ["--url", server.url]
        status, _, err = await run("jobs", "start", "demo", '{"steps": "x"}', *url)
        assert (status, err) == (
            1,
            "tidings: jobs start: 422 invalid_value: argument 'steps': "
            "must be an integer, not a string\n",
        )
        status, _, err = await run("jobs", "start", "demo", "{", *url)
        assert (status, err) == (2, "tidings: ARGUMENTS is not valid JSON: '{'\n")
        status, _, err = await run("jobs", "watch", "nope", *url)
        assert (status, err) == (1, "tidings: jobs watch: 404 not_found: no job 'nope'\n")
        status, _, err = await run("jobs", "list", "--url", f"http://127.0.0.1:{free_port()}")
        assert status == 1
        assert err.startswith("tidings: cannot reach")
