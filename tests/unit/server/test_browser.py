"""server/browser.py: CORS, the WebSocket origin rule and the cross-site write rule."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tidings.server import create_app
from tidings.server.browser import (
    CORS_ALLOW_HEADERS,
    BrowserGuard,
    browser_middleware,
    origin_allowed,
    write_allowed,
)
from tidings.settings import Settings

SERVER = Path(__file__).parents[3] / "src" / "tidings" / "server"
APP = "https://app.example"
EVIL = "https://evil.example"


# -- raw ASGI fakes -----------------------------------------------------------------------------


class Recorder:
    """The app behind the guard: records whether a request reached it."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)


async def unread() -> dict[str, Any]:
    raise AssertionError("the guard read the request")


async def run(
    scope: dict[str, Any], *, origins: tuple[str, ...] = ()
) -> tuple[Recorder, list[dict[str, Any]]]:
    inner = Recorder()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await BrowserGuard(inner, origins=origins)(scope, unread, send)
    return inner, sent


def http(method: str, **headers: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": "/api/publish",
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


def websocket(*, extensions: bool = True, **headers: str) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": "/ws",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "extensions": {"websocket.http.response": {}} if extensions else {},
    }


# -- the cross-site write rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"content-type": "application/json"}, True),
        ({"content-type": "Application/JSON; charset=utf-8"}, True),
        ({"content-type": "application/merge-patch+json"}, True),
        ({"authorization": "Bearer abc"}, True),
        ({"authorization": "ApiKey abc", "content-type": "text/plain"}, True),
        ({"x-api-key": "abc", "content-type": "text/plain"}, True),
        # What a page on another site can send without a preflight:
        ({}, False),
        ({"content-type": "text/plain"}, False),
        ({"content-type": "text/plain; application/json"}, False),
        ({"content-type": "application/x-www-form-urlencoded"}, False),
        ({"content-type": "multipart/form-data; boundary=x"}, False),
        ({"content-type": "text/json"}, False),
        ({"cookie": "tidings_token=abc"}, False),
        ({"x-api-key": " "}, False),
    ],
)
def test_write_allowed(headers: dict[str, str], allowed: bool) -> None:
    assert write_allowed([(k.encode(), v.encode()) for k, v in headers.items()]) is allowed


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_a_simple_cross_site_write_is_refused_before_the_body_is_read(method: str) -> None:
    inner, sent = await run(http(method, content_type="text/plain"))
    assert not inner.scopes
    start, body = sent
    assert start["status"] == 415
    error = orjson.loads(body["body"])["error"]
    assert error["code"] == "unsupported_media_type"
    assert "application/json" in error["message"]
    assert "Authorization" in error["message"]


@pytest.mark.parametrize(
    "scope",
    [
        http("POST", content_type="application/json"),
        http("POST", content_type="text/plain", x_api_key="key"),
        http("DELETE", authorization="Bearer token"),
        http("GET"),
        http("HEAD"),
        http("OPTIONS"),
        {"type": "lifespan"},
    ],
)
async def test_everything_else_goes_through(scope: dict[str, Any]) -> None:
    inner, sent = await run(scope)
    assert inner.scopes == [scope]
    assert not sent


# -- the WebSocket origin rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", (), True),
        ("https://127.0.0.1:8000", "127.0.0.1:8000", (), True),
        ("https://Tidings.Example", "tidings.example", (), True),
        ("https://tidings.example", "tidings.example:443", (), True),
        ("http://tidings.example:80", "tidings.example", (), True),
        ("http://[::1]:8000", "[::1]:8000", (), True),
        (APP, "tidings.example", (APP,), True),
        ("https://app.example:443", "tidings.example", (APP,), True),
        (EVIL, "tidings.example", ("*",), True),
        (EVIL, "tidings.example", (APP,), False),
        (EVIL, "127.0.0.1:8000", (), False),
        ("http://127.0.0.1:8001", "127.0.0.1:8000", (), False),
        ("http://127.0.0.1", "127.0.0.1:8000", (), False),
        ("https://tidings.example", "tidings.example:80", (), False),
        ("http://tidings.example.evil.example", "tidings.example", (), False),
        ("null", "tidings.example", (), False),
        (APP, None, (), False),
    ],
)
def test_origin_allowed(
    origin: str, host: str | None, allowed: tuple[str, ...], expected: bool
) -> None:
    assert origin_allowed(origin, host, allowed) is expected


async def test_a_cross_site_handshake_gets_403_before_the_upgrade() -> None:
    inner, sent = await run(websocket(origin=EVIL, host="127.0.0.1:8000"))
    assert not inner.scopes
    start, body = sent
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 403
    assert (b"content-type", b"application/json") in start["headers"]
    assert body["type"] == "websocket.http.response.body"
    assert orjson.loads(body["body"]) == {
        "error": {"code": "permission_denied", "message": "origin not allowed"}
    }


async def test_without_the_response_extension_the_handshake_is_closed_before_accept() -> None:
    inner, sent = await run(websocket(extensions=False, origin=EVIL, host="127.0.0.1:8000"))
    assert not inner.scopes
    assert [(m["type"], m["code"]) for m in sent] == [("websocket.close", 4503)]


@pytest.mark.parametrize(
    "headers",
    [
        {"host": "127.0.0.1:8000"},  # no Origin: not a browser page (the Python client)
        {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"},
        {"host": "127.0.0.1:8000", "origin": APP},
    ],
)
async def test_same_host_listed_and_originless_handshakes_go_through(
    headers: dict[str, str],
) -> None:
    scope = websocket(**headers)
    inner, sent = await run(scope, origins=(APP,))
    assert inner.scopes == [scope]
    assert not sent


# -- CORS, through the whole app ----------------------------------------------------------------


@pytest.fixture
async def cors() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(cors_origins=APP, cors_credentials=True)
    transport = httpx.ASGITransport(app=create_app(settings=settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
        yield client


def preflight(origin: str, method: str = "POST", headers: str = "content-type") -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": method,
        "access-control-request-headers": headers,
    }


async def test_preflight_from_an_allowed_origin(cors: httpx.AsyncClient) -> None:
    requested = "authorization, content-type, idempotency-key, last-event-id, x-api-key"
    response = await cors.options("/api/publish", headers=preflight(APP, headers=requested))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    assert response.headers["access-control-allow-credentials"] == "true"
    assert {"GET", "POST", "DELETE"} <= set(
        response.headers["access-control-allow-methods"].split(", ")
    )
    allowed = {h.lower() for h in response.headers["access-control-allow-headers"].split(", ")}
    assert set(requested.split(", ")) <= allowed
    assert "Origin" in response.headers["vary"]


@pytest.mark.parametrize(
    "headers",
    [
        preflight(EVIL),
        preflight(APP, method="PUT"),
        preflight(APP, headers="x-unknown"),
    ],
)
async def test_preflight_refusals(cors: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await cors.options("/api/publish", headers=headers)
    assert response.status_code == 400
    if headers["origin"] == EVIL:
        assert "access-control-allow-origin" not in response.headers


async def test_simple_answers_name_only_allowed_origins(cors: httpx.AsyncClient) -> None:
    allowed = await cors.get("/healthz", headers={"origin": APP})
    assert allowed.headers["access-control-allow-origin"] == APP
    assert allowed.headers["access-control-expose-headers"].lower() == "x-tidings-stream-id"
    assert "Origin" in allowed.headers["vary"]
    refused = await cors.get("/healthz", headers={"origin": EVIL})
    assert refused.status_code == 200
    assert "access-control-allow-origin" not in refused.headers
    assert "Origin" in refused.headers["vary"]


async def test_a_refused_write_carries_cors_headers_for_an_allowed_origin(
    cors: httpx.AsyncClient,
) -> None:
    response = await cors.post(
        "/api/publish?channel=a",
        content=b"x",
        headers={"origin": APP, "content-type": "text/plain"},
    )
    assert response.status_code == 415
    assert response.headers["access-control-allow-origin"] == APP


async def test_any_origin() -> None:
    transport = httpx.ASGITransport(app=create_app(settings=Settings(cors_origins="*")))
    async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
        response = await client.options("/sse", headers=preflight(EVIL, "GET", "last-event-id"))
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
        answer = await client.get("/healthz", headers={"origin": EVIL})
        assert answer.headers["access-control-allow-origin"] == "*"


async def test_without_cors_origins_no_answer_has_a_cors_header() -> None:
    assert [m.cls for m in browser_middleware(Settings())] == [BrowserGuard]
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
        asked = await client.options("/api/publish", headers=preflight(APP))
        assert asked.status_code == 405
        answer = await client.get("/healthz", headers={"origin": APP})
        for response in (asked, answer):
            assert not any(name.startswith("access-control-") for name in response.headers)


def test_every_request_header_the_server_reads_is_allowed_by_cors() -> None:
    read = set()
    for path in SERVER.glob("*.py"):
        source = path.read_text()
        read |= set(re.findall(r'headers\.get\("([a-z-]+)"', source))
        read |= set(re.findall(r'name == b"([a-z-]+)"', source))
    # Set by the browser itself, never by a page; or by a proxy on the way.
    read -= {"content-length", "cookie", "host", "origin", "x-forwarded-for"}
    assert {"authorization", "x-api-key", "last-event-id"} <= read
    assert read <= {header.lower() for header in CORS_ALLOW_HEADERS}
