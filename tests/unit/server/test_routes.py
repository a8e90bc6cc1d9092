"""Every route of the app is public by name or refuses a request without credentials.

The public list is documented in docs/reference/http.md ("Authentication and
refusals"). Every other route, including each one added later, must answer
401 to a request with no credentials once a JWT secret is configured: a
route that forgets to ask ``authorize()`` fails here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.types import Message

from tests.support.env import TIMEOUT
from tidings.hub import Hub
from tidings.server import create_app
from tidings.settings import Settings

SECRET = "a-route-table-secret-of-32-bytes"

#: The routes anyone may use, authentication or not (docs/reference/http.md).
PUBLIC = frozenset(
    {"/healthz", "/readyz", "/static", "/", "/favicon.ico", "/admin", "/admin/static"}
)
#: The admin routes exist only with an admin key: the table is built with one.
ADMIN_KEY = "an-admin-key-of-24-chars"

#: A value for each path parameter, so a refusal is about identity, not input.
PARAMS = {
    "channel": "chat:room",
    "stream_id": "chatcmpl-0123456789abcdef",
    "chat_id": "chat-1",
    "connection_id": "sse-1",
    "job": "demo",
}

#: A body for the routes that read one, valid but for the missing identity.
BODIES: dict[str, dict[str, Any]] = {
    "/api/publish": {"channel": "chat:room", "data": 1},
    "/admin/api/publish": {"channel": "chat:room", "data": 1},
    "/api/jobs/{job}": {"steps": 1},
    "/v1/chat/completions": {
        "model": "demo",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    },
}


def walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, BaseRoute]]:
    """Every route with its full path; a mount's own routes are walked too."""
    for route in routes:
        if isinstance(route, Mount):
            path = prefix + route.path
            if path in PUBLIC:
                yield path, route
            else:
                inner = route.routes
                assert inner, f"mount {path} has no route table to check"
                yield from walk(list(inner), path)
        elif isinstance(route, Route | WebSocketRoute):
            yield prefix + route.path, route
        else:
            pytest.fail(f"route {route!r} is of a kind this test cannot check")


def concrete(path: str) -> str:
    for name, value in PARAMS.items():
        path = path.replace(f"{{{name}:path}}", value).replace(f"{{{name}}}", value)
    assert "{" not in path, f"no value for a parameter of {path}"
    return path


SETTINGS = Settings(jwt_secret=SECRET, token_cookie="tidings_token", admin_key=ADMIN_KEY)


def app() -> Starlette:
    return create_app(Hub(), SETTINGS)


def table() -> list[tuple[str, BaseRoute]]:
    return list(walk(list(app().routes)))


def http_cases() -> list[tuple[str, str]]:
    cases = []
    for path, route in table():
        if path in PUBLIC or not isinstance(route, Route):
            continue
        for method in sorted(route.methods or ("GET",)):
            cases.append((method, path))
    return cases


def websocket_cases() -> list[str]:
    return [
        path for path, route in table() if path not in PUBLIC and isinstance(route, WebSocketRoute)
    ]


def test_every_route_is_public_or_checked_below() -> None:
    checked = {path for _, path in http_cases()} | set(websocket_cases())
    assert {path for path, _ in table()} == checked | PUBLIC
    # The list covers what the app really serves, not a stale guess.
    assert {
        "/sse",
        "/ws",
        "/api/publish",
        "/api/stats",
        "/metrics",
        "/v1/chat/completions",
        "/admin/api/events",
        "/admin/api/connections/{connection_id}",
    } <= checked


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub() as hub:
        yield hub


@pytest.mark.parametrize(
    "url",
    [
        "/healthz",
        "/readyz",
        "/static/tidings.js",
        "/",
        "/favicon.ico",
        "/admin",
        "/admin/static/admin.js",
    ],
)
async def test_the_public_routes_answer_without_credentials(hub: Hub, url: str) -> None:
    transport = httpx.ASGITransport(app=create_app(hub, SETTINGS))
    async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
        response = await client.get(url, timeout=TIMEOUT)
    assert response.status_code == 200


@pytest.mark.parametrize(("method", "path"), http_cases())
async def test_every_non_public_http_route_refuses_no_credentials(
    hub: Hub, method: str, path: str
) -> None:
    transport = httpx.ASGITransport(app=create_app(hub, SETTINGS))
    async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
        url = concrete(path) + ("?channel=chat:room" if path == "/sse" else "")
        body = BODIES.get(path)
        # A JSON content type passes the cross-site write rule (server/browser.py),
        # so what answers is the authorisation of the route itself.
        headers = {"content-type": "application/json"}
        response = await client.request(method, url, json=body, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 401, (method, path, response.text)
    assert response.headers["www-authenticate"] == "Bearer"
    if method != "HEAD":
        assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("path", websocket_cases())
async def test_every_websocket_route_refuses_the_handshake(hub: Hub, path: str) -> None:
    application = create_app(hub, SETTINGS)
    sent: list[Message] = []
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "server": ("tidings", 80),
        "path": concrete(path),
        "raw_path": concrete(path).encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"tidings")],
        "subprotocols": ["tidings.v1.json"],
        "extensions": {"websocket.http.response": {}},
    }
    messages = [{"type": "websocket.connect"}]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    await application(scope, receive, send)
    assert sent[0]["type"] == "websocket.http.response.start", sent
    assert sent[0]["status"] == 401
    assert (b"www-authenticate", b"Bearer") in sent[0]["headers"]
    assert all(message["type"] != "websocket.accept" for message in sent)


def test_static_dir_adds_only_its_public_mount_after_every_route(tmp_path: Path) -> None:
    settings = dataclasses.replace(SETTINGS, static_dir=str(tmp_path))
    with_pages = [route.path for route in create_app(Hub(), settings).routes]
    # Last, so every route above (each checked by the tests above) still answers
    # first; it takes the demo's "/" and "/favicon.ico" (your directory serves
    # its own) and is public like them (docs/reference/http.md).
    demo_only = {"/", "/favicon.ico"}
    assert with_pages == [route.path for route in app().routes if route.path not in demo_only] + [
        ""
    ]
