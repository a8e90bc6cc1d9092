"""server/api.py through httpx's in-memory ASGI transport: every refusal changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tidings.hub import ClientInfo, Hub
from tidings.server import create_app
from tidings.settings import Settings


@pytest.fixture
async def client(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(hub, Settings(max_body_bytes=1024))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
        yield client


#: A server API key: a text/plain publish needs a credential in a header (server/browser.py).
API_KEY = "test-key-0123456789abcdef"


@pytest.fixture
async def keyed(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends a server API key with every request."""
    app = create_app(hub, Settings(max_body_bytes=1024, api_keys=f"test:{API_KEY}"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://tidings", headers={"x-api-key": API_KEY}
    ) as client:
        yield client


async def test_publish_json_and_text(
    client: httpx.AsyncClient, keyed: httpx.AsyncClient, hub: Hub
) -> None:
    response = await client.post("/api/publish", json={"channel": "a", "data": {"x": [1, 2]}})
    assert response.status_code == 200
    body = response.json()
    assert body["channel"] == "a"
    assert body["offset"] == 1
    response = await client.post(
        "/api/publish", json={"channel": "a", "text": "plain", "event": "note", "key": "k1"}
    )
    assert response.json()["offset"] == 2
    response = await keyed.post(
        "/api/publish?channel=a&event=log",
        content=b"raw\ntext",
        headers={"content-type": "text/plain"},
    )
    assert response.json()["offset"] == 3
    events = (await hub.history("a")).events
    assert [(e.data, e.event, e.is_text) for e in events] == [
        ({"x": [1, 2]}, "message", False),
        ("plain", "note", True),
        ("raw\ntext", "log", True),
    ]


async def test_idempotency_key_header_and_field(client: httpx.AsyncClient, hub: Hub) -> None:
    first = await client.post(
        "/api/publish", json={"channel": "a", "data": 1}, headers={"idempotency-key": "h"}
    )
    again = await client.post(
        "/api/publish", json={"channel": "a", "data": 1}, headers={"idempotency-key": "h"}
    )
    assert first.json() == again.json()
    assert (await hub.position("a")).offset == 1


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"{not json", {}, 400, "invalid_json"),
        (b"[1, 2]", {}, 400, "bad_request"),
        (b'{"data": 1}', {}, 400, "bad_request"),
        (b'{"channel": "a"}', {}, 400, "bad_request"),
        (b'{"channel": "a", "data": 1, "text": "x"}', {}, 400, "bad_request"),
        (b'{"channel": "a", "data": 1, "extra": true}', {}, 400, "bad_request"),
        (b'{"channel": "a b", "data": 1}', {}, 400, "invalid_channel"),
        (b'{"channel": 7, "data": 1}', {}, 400, "invalid_channel"),
        (b'{"channel": "a", "data": 1, "event": "reset"}', {}, 400, "invalid_publication"),
        (b'{"channel": "a", "data": 1, "event": 5}', {}, 400, "bad_request"),
        (b'{"channel": "a", "text": 5}', {}, 400, "bad_request"),
        (b'{"channel": "a", "data": 1, "key": 5}', {}, 400, "bad_request"),
        (b'{"channel": "ro:x", "data": 1}', {}, 403, "permission_denied"),
        (b'{"channel": "a", "data": "' + b"x" * 1100 + b'"}', {}, 413, "too_large"),
        (
            b"a=1",
            {"content-type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
    ],
)
async def test_bad_publishes_are_refused_and_publish_nothing(
    client: httpx.AsyncClient,
    hub: Hub,
    content: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    headers = {"content-type": "application/json", **headers}
    response = await client.post("/api/publish", content=content, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert hub.stats().published == 0


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"x" * 1025, 413, "too_large"),
        (b"hello", 400, "bad_request"),  # no ?channel=
    ],
)
async def test_bad_text_publishes_are_refused_and_publish_nothing(
    keyed: httpx.AsyncClient, hub: Hub, content: bytes, status: int, code: str
) -> None:
    response = await keyed.post(
        "/api/publish", content=content, headers={"content-type": "text/plain"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert hub.stats().published == 0


async def test_text_body_must_be_utf8(keyed: httpx.AsyncClient, hub: Hub) -> None:
    response = await keyed.post(
        "/api/publish?channel=a", content=b"\xff\xfe", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_publication"
    assert hub.stats().published == 0


async def test_oversized_body_by_content_length_is_refused_before_reading(
    client: httpx.AsyncClient, hub: Hub
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"{}"

    response = await client.post(
        "/api/publish",
        content=body(),
        headers={"content-length": "999999", "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert hub.stats().published == 0


async def test_history(client: httpx.AsyncClient, hub: Hub) -> None:
    first = await hub.publish("h", {"n": 1})
    await hub.publish("h", text="two")
    body = (await client.get("/api/history/h")).json()
    assert body["offset"] == 2
    assert body["reset"] is None
    assert [(e["offset"], e["data"], e.get("text", False)) for e in body["events"]] == [
        (1, {"n": 1}, False),
        (2, "two", True),
    ]
    since = (await client.get(f"/api/history/h?since={first.epoch}:1")).json()
    assert [e["offset"] for e in since["events"]] == [2]
    by_cursor = (await client.get(f"/api/history/h?since=h:{first.epoch}:1&limit=5")).json()
    assert [e["offset"] for e in by_cursor["events"]] == [2]
    assert [e["offset"] for e in (await client.get("/api/history/h?limit=1")).json()["events"]] == [
        2
    ]
    stale = (await client.get("/api/history/h?since=other:3")).json()
    assert stale["events"] == []
    assert stale["reset"] == {"epoch": first.epoch, "offset": 2, "reason": "epoch"}


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("/api/history/a%20b", 400, "invalid_channel"),
        ("/api/history/a?since=nonsense", 400, "invalid_cursor"),
        ("/api/history/a?limit=-1", 400, "bad_request"),
        ("/api/history/a?limit=10001", 400, "bad_request"),
        ("/api/history/hidden:x", 403, "permission_denied"),
        ("/api/nothing", 404, "not_found"),
    ],
)
async def test_bad_history_requests(
    client: httpx.AsyncClient, url: str, status: int, code: str
) -> None:
    response = await client.get(url)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


async def test_channels_stats_and_health(client: httpx.AsyncClient, hub: Hub) -> None:
    await hub.publish("z", 1)
    await hub.publish("y", 1)
    channels = (await client.get("/api/channels")).json()["channels"]
    assert [c["channel"] for c in channels] == ["y", "z"]
    assert channels[0]["offset"] == 1
    assert channels[0]["history"] == 1
    stats = (await client.get("/api/stats")).json()
    for key in ("connections", "subscribers", "channels", "published", "delivered", "dropped"):
        assert key in stats
    assert stats["published"] == 2
    assert (await client.get("/healthz")).json() == {"status": "ok", "backend": "memory"}


async def test_publish_method_not_allowed(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/publish")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


async def test_presence_lists_member_subscriptions(client: httpx.AsyncClient, hub: Hub) -> None:
    assert (await client.get("/api/presence/room")).json() == {
        "channel": "room",
        "clients": [],
        "next": None,
    }
    async with hub.subscription(client=ClientInfo("c1", "u1", {"name": "ada"})) as member:
        await member.add("room")
        response = await client.get("/api/presence/room")
        assert response.json()["clients"] == [
            {"client": "c1", "user": "u1", "info": {"name": "ada"}}
        ]
    response = await client.get("/api/presence/a%20b")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_channel")
    response = await client.get("/api/presence/quiet:x")
    assert (response.status_code, response.json()["error"]["code"]) == (403, "permission_denied")
