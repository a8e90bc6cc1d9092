"""``tidings serve --static DIR``: your pages at /, beside the demo and every route; nothing
outside DIR, whatever the path says."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess

SECRET = "a file outside the static directory"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("static")
    (root / "secret.txt").write_text(SECRET)
    site = root / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my page</h1>")
    (site / "app.js").write_text("export const x = 1;\n")
    (site / "docs").mkdir()
    (site / "docs" / "index.html").write_text("<h1>docs</h1>")
    (site / "escape.txt").symlink_to(root / "secret.txt")
    return site


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[ServerProcess]:
    with ServerProcess(args=["--static", str(site)]) as process:
        yield process


async def raw_get(server: ServerProcess, target: str) -> tuple[int, bytes]:
    """Send ``GET target`` as it is (no client normalises the path); return status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_user_pages_are_served_at_root_beside_every_route(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        root = await client.get("/")
        assert (root.status_code, root.text) == (200, "<h1>my page</h1>")
        assert root.headers["content-type"].startswith("text/html")
        script = await client.get("/app.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        assert (await client.get("/docs/")).text == "<h1>docs</h1>"
        # The demo and the client library stay under /static/, every route keeps working.
        assert (await client.get("/static/tidings.js")).status_code == 200
        assert (await client.get("/static/index.html")).status_code == 200
        assert (await client.get("/healthz")).json()["status"] == "ok"
        published = await client.post("/api/publish", json={"channel": "a", "data": 1})
        assert published.status_code == 200
        missing = await client.get("/missing.html")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/docs/../../secret.txt",
        "/docs/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/escape.txt",  # a symbolic link out of the directory
    ],
)
async def test_nothing_outside_the_directory_is_served(server: ServerProcess, target: str) -> None:
    status, body = await raw_get(server, target)
    assert status in (400, 404)
    assert SECRET.encode() not in body
