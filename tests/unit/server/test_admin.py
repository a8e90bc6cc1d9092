"""server/admin.py through httpx's in-memory ASGI transport: off without a key, refusals,
snapshots and their rates, the connection list, the test publish."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tidings.hub import Hub
from tidings.server import create_app
from tidings.server.admin import MIN_INTERVAL, Monitor
from tidings.server.state import ServerState
from tidings.settings import Settings

ADMIN_KEY = "an-admin-key-for-tests-0123"
API_KEY = "a-server-api-key-0123456789"
ADMIN = {"authorization": f"Admin {ADMIN_KEY}"}
ADMIN_PATHS = [
    ("GET", "/admin"),
    ("GET", "/admin/static/admin.js"),
    ("GET", "/admin/api/snapshot"),
    ("GET", "/admin/api/events"),
    ("GET", "/admin/api/errors"),
    ("GET", "/admin/api/connections"),
    ("DELETE", "/admin/api/connections/sse-1"),
    ("POST", "/admin/api/publish"),
]


def client_for(hub: Hub, **settings: Any) -> httpx.AsyncClient:
    app = create_app(hub, Settings(max_body_bytes=1024, **settings))
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://tidings")


@pytest.fixture
async def admin(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(hub, admin_key=ADMIN_KEY, api_keys=f"ops:{API_KEY}") as client:
        yield client


@pytest.mark.parametrize(("method", "path"), ADMIN_PATHS)
async def test_without_an_admin_key_everything_under_admin_is_not_found(
    hub: Hub, method: str, path: str
) -> None:
    async with client_for(hub) as client:
        response = await client.request(method, path, headers=ADMIN)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(("method", "path"), ADMIN_PATHS[2:])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Admin wrong-key-wrong-key-wrong"},
        {"authorization": f"Admin {ADMIN_KEY}x"},
        {"x-api-key": API_KEY},
        {"authorization": f"Bearer {ADMIN_KEY}"},
    ],
    ids=["none", "wrong", "longer", "api-key", "bearer"],
)
async def test_the_api_refuses_anything_but_the_admin_key(
    admin: httpx.AsyncClient, hub: Hub, method: str, path: str, headers: dict[str, str]
) -> None:
    body = {"channel": "chat:room", "data": 1} if method == "POST" else None
    # A JSON content type passes the cross-site write rule (server/browser.py).
    headers = {"content-type": "application/json", **headers}
    response = await admin.request(method, path, headers=headers, json=body)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert hub.stats().published == 0  # a refused publish published nothing


async def test_the_page_asks_for_the_key_and_needs_none_to_load(admin: httpx.AsyncClient) -> None:
    page = await admin.get("/admin")
    assert page.status_code == 200
    assert 'id="key"' in page.text
    assert 'type="password"' in page.text
    script = await admin.get("/admin/static/admin.js")
    assert script.status_code == 200
    assert "sessionStorage" in script.text


async def test_a_test_publish_goes_through_the_publish_rules(
    admin: httpx.AsyncClient, hub: Hub
) -> None:
    response = await admin.post(
        "/admin/api/publish", headers=ADMIN, json={"channel": "chat:room", "data": {"n": 1}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["offset"] == 1
    assert [event.data for event in (await hub.history("chat:room")).events] == [{"n": 1}]
    too_big = await admin.post(
        "/admin/api/publish", headers=ADMIN, json={"channel": "chat:room", "data": "x" * 2000}
    )
    assert too_big.status_code == 413
    bad = await admin.post("/admin/api/publish", headers=ADMIN, json={"channel": "no spaces"})
    assert bad.status_code == 400
    # A namespace closed to client publishes is closed to the admin's test events too.
    closed = await admin.post(
        "/admin/api/publish", headers=ADMIN, json={"channel": "ro:x", "data": 1}
    )
    assert closed.status_code == 403
    assert hub.stats().published == 1


async def test_disconnecting_an_unknown_connection_is_not_found(admin: httpx.AsyncClient) -> None:
    response = await admin.delete("/admin/api/connections/sse-999", headers=ADMIN)
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "not_found",
        "message": "no open connection 'sse-999'",
    }


@pytest.mark.parametrize("query", ["cursor=abc", "cursor=-1", "limit=0", "limit=1001", "limit=x"])
async def test_a_bad_page_request_is_a_400(admin: httpx.AsyncClient, query: str) -> None:
    response = await admin.get(f"/admin/api/connections?{query}", headers=ADMIN)
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("bad_request", "invalid_request")


async def test_an_empty_listing(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/admin/api/connections", headers=ADMIN)
    assert response.json() == {"connections": [], "next": None, "total": 0}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_snapshots_give_rates_from_two_readings(hub: Hub) -> None:
    app = create_app(hub, Settings(admin_key=ADMIN_KEY))
    state: ServerState = app.state.tidings
    clock = Clock()
    monitor = Monitor(state, clock=clock)
    first = monitor.snapshot()
    assert (first["publish_rate"], first["delivery_rate"], first["top_rates"]) == (0.0, 0.0, [])
    async with hub.subscribe("busy") as one, hub.subscribe("busy") as two, hub.subscribe("calm"):
        clock.now += 1.0
        monitor.snapshot()  # a reading with both channels watched
        for n in range(10):
            await hub.publish("busy", n)
        await hub.publish("calm", 0)
        clock.now += MIN_INTERVAL / 2
        assert monitor.snapshot()["publish_rate"] == 0.0  # too soon: the same snapshot
        clock.now += 2.0 - MIN_INTERVAL / 2
        snapshot = monitor.snapshot()
        assert snapshot["publish_rate"] == 5.5  # 11 publishes in 2 s
        assert snapshot["delivery_rate"] == 10.5  # 10 x 2 subscribers + 1, in 2 s
        assert snapshot["top_rates"] == [
            {"channel": "busy", "rate": 5.0},
            {"channel": "calm", "rate": 0.5},
        ]
        assert snapshot["top_subscribers"] == [
            {"channel": "busy", "subscribers": 2},
            {"channel": "calm", "subscribers": 1},
        ]
        assert snapshot["subscriptions"] == 3
        # Nobody read: 10 events wait in each outbox, but they are no connection's.
        assert one.pending_bytes
        assert two.pending_bytes
        assert snapshot["slow"] == []
