"""server/app.py: which routes create_app mounts, its error handlers and static files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute

from tidings.hub import Hub, MemoryBackend
from tidings.jobs import Jobs, Progress
from tidings.llm import LLMConfig
from tidings.server import create_app
from tidings.server.app import DEMO, STATIC, build_hub
from tidings.settings import Settings, SettingsError

CORE = {
    "/sse",
    "/sse/{channel:path}",
    "/ws",
    "/api/publish",
    "/api/history/{channel:path}",
    "/api/presence/{channel:path}",
    "/api/channels",
    "/api/stream/{channel:path}",
    "/api/stats",
    "/healthz",
    "/readyz",
    "/metrics",
    "/static",
}
LLM = {
    "/v1/chat/completions",
    "/v1/models",
    "/v1/streams/{stream_id}",
    "/v1/ai-sdk/chat",
    "/v1/ai-sdk/chat/{chat_id}/stream",
}
JOBS = {"/api/jobs", "/api/jobs/{job}"}


def paths(app: Starlette) -> set[str]:
    return {route.path for route in app.routes if isinstance(route, Route | WebSocketRoute | Mount)}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with Hub() as hub:
        transport = httpx.ASGITransport(app=create_app(hub, Settings()))
        async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
            yield client


def test_default_settings_mount_everything() -> None:
    app = create_app(Hub(), Settings())
    assert paths(app) == CORE | LLM | JOBS | {"/", "/favicon.ico"}
    assert app.state.tidings.relay is not None
    assert app.state.tidings.runner.jobs.names() == ["demo"]


def test_llm_and_demo_routes_follow_their_settings() -> None:
    app = create_app(Hub(), Settings(demo=False, llm=LLMConfig(enabled=False)))
    assert paths(app) == CORE
    assert app.state.tidings.relay is None
    assert app.state.tidings.runner is None


def test_jobs_given_are_mounted_without_the_demo() -> None:
    jobs = Jobs()

    @jobs.task("mine")
    async def mine() -> AsyncIterator[Progress]:
        yield Progress(100)

    for demo in (True, False):
        app = create_app(Hub(), Settings(demo=demo, llm=LLMConfig(enabled=False), jobs_workers=2))
        assert paths(app) >= JOBS if demo else JOBS.isdisjoint(paths(app))
        app = create_app(Hub(), Settings(demo=demo, jobs_workers=2), jobs=jobs)
        runner = app.state.tidings.runner
        assert (runner.jobs.names(), runner.workers) == (["mine"], 2)


def test_build_hub_uses_the_settings() -> None:
    hub = build_hub(Settings(history_size=7, namespaces={"chat": {"history_size": 3}}))
    assert isinstance(hub.backend, MemoryBackend)
    assert hub.options("plain").history_size == 7
    assert hub.options("chat:1").history_size == 3
    assert hub.options("llm:x").publish is False
    assert hub.options("jobs:x").publish is False
    assert hub.options("jobs:x").history_ttl == Settings().jobs_ttl
    custom = build_hub(Settings(jobs_ttl=60, namespaces={"jobs": {"history_size": 5}}))
    assert (custom.options("jobs:x").history_size, custom.options("jobs:x").publish) == (5, False)
    assert custom.options("jobs:x").history_ttl == 60


async def test_unknown_path_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not Found"}}


async def test_wrong_method_is_a_json_405(client: httpx.AsyncClient) -> None:
    # JSON, so that the cross-site write rule (server/browser.py) lets it reach routing.
    response = await client.delete("/api/channels", headers={"content-type": "application/json"})
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in response.headers["allow"]


async def test_tidings_errors_become_json_bodies(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/history/bad channel")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_channel"
    response = await client.post(
        "/api/publish", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_static_files_and_the_demo_page(client: httpx.AsyncClient) -> None:
    script = await client.get("/static/tidings.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert script.content == (STATIC / "tidings.js").read_bytes()
    page = await client.get("/")
    assert page.status_code == 200
    assert page.content == (DEMO / "index.html").read_bytes()
    missing = await client.get("/static/nope.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


# -- static_dir: pages of your own at / ----------------------------------------------------------


def test_static_dir_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"static_dir: .*/nowhere does not exist"):
        create_app(Hub(), Settings(static_dir=str(tmp_path / "nowhere")))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SettingsError, match=r"static_dir: .*/file.txt is not a directory"):
        create_app(Hub(), Settings(static_dir=str(tmp_path / "file.txt")))


async def test_static_dir_is_served_at_root_after_every_route(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<h1>mine</h1>")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.html").write_text("docs")
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "stats").write_text("shadowed")
    async with Hub() as hub:
        app = create_app(hub, Settings(static_dir=str(tmp_path)))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
            root = await client.get("/")
            assert (root.status_code, root.text) == (200, "<h1>mine</h1>")
            assert (await client.get("/docs/")).text == "docs"
            assert (await client.get("/docs")).status_code == 307  # to /docs/
            assert (await client.get("/api/stats")).json()["backend"] == "memory"
            assert (await client.get("/static/tidings.js")).status_code == 200  # the demo stays
            missing = await client.get("/nothing.html")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "not_found"


DEMO_FILES = sorted(path.name for path in DEMO.iterdir())
CLIENT_FILES = sorted(path.name for path in STATIC.iterdir())


def test_the_demo_and_the_client_are_apart() -> None:
    assert {"index.html", "llm.html", "demo.css", "chart.js", "favicon.svg"} <= set(DEMO_FILES)
    assert {"tidings.js", "tidings.d.ts", "package.json"} <= set(CLIENT_FILES)
    assert not set(DEMO_FILES) & set(CLIENT_FILES)


@pytest.mark.parametrize("name", DEMO_FILES)
async def test_each_demo_file_is_served_with_the_demo(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.content == (DEMO / name).read_bytes()


async def test_no_demo_serves_the_client_and_nothing_of_the_demo() -> None:
    async with Hub() as hub:
        transport = httpx.ASGITransport(app=create_app(hub, Settings(demo=False)))
        async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
            for name in CLIENT_FILES:
                response = await client.get(f"/static/{name}")
                assert response.status_code == 200, name
                assert response.content == (STATIC / name).read_bytes()
            demo = (f"/static/{name}" for name in DEMO_FILES)
            for url in ["/", "/index.html", "/favicon.ico", *demo]:
                response = await client.get(url)
                assert response.status_code == 404, url
                assert response.json()["error"]["code"] == "not_found"
