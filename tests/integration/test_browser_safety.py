"""Browser safety over a real server, both write paths: CORS, WebSocket origins, writes.

The server has authentication configured (an API key and a JWT secret), as a
server facing browsers would; the ``open`` namespace stays open to anonymous
clients so the rules here are seen apart from the permission rules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess
from tidings.server.auth import mint_token

APP = "https://app.example"
EVIL = "https://evil.example"
KEY = "browser-test-key-0123456789"
SECRET = "browser-test-secret-0123456789abcdef"
CONFIG = f"""
cors_origins = "{APP}"
cors_credentials = true
api_keys = "test:{KEY}"
jwt_secret = "{SECRET}"
token_cookie = "tidings_token"

[namespaces.open]
anonymous = true
"""
CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module", params=["fast", "asgi"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    env = {"TIDINGS_FAST_WRITE": "1" if request.param == "fast" else "0"}
    with ServerProcess(env=env, config=CONFIG) as process:
        yield process


@pytest.fixture
def channel(channel: str) -> str:
    return f"open:{channel}"


def token(channel: str) -> str:
    return mint_token(SECRET, sub="ada", ttl=600, grants={"publish": [channel]})


async def published(client: httpx.AsyncClient, channel: str) -> list[Any]:
    response = await client.get(f"/api/history/{channel}", headers={"x-api-key": KEY})
    assert response.status_code == 200, response.text
    return [event["data"] for event in response.json()["events"]]


# -- CORS -------------------------------------------------------------------------------------


async def test_preflights(client: httpx.AsyncClient) -> None:
    asked = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type, idempotency-key",
    }
    allowed = await client.options("/api/publish", headers={"origin": APP, **asked})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == APP
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "Origin" in allowed.headers["vary"]
    refused = await client.options("/api/publish", headers={"origin": EVIL, **asked})
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


async def test_an_event_stream_answers_an_allowed_origin(
    client: httpx.AsyncClient, channel: str
) -> None:
    for origin, allowed in ((APP, True), (EVIL, False)):
        headers = {"origin": origin}
        async with client.stream("GET", f"/sse?channel={channel}", headers=headers) as response:
            assert response.status_code == 200
            assert ("access-control-allow-origin" in response.headers) is allowed
            assert "Origin" in response.headers["vary"]


# -- WebSocket origins ------------------------------------------------------------------------


def ws_url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


@pytest.mark.parametrize(
    "credential", [{}, {"X-API-Key": KEY}], ids=["anonymous", "with a credential"]
)
async def test_a_cross_site_handshake_gets_403_and_no_upgrade(
    server: ServerProcess, credential: dict[str, str]
) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with asyncio.timeout(TIMEOUT):
            await connect(ws_url(server), origin=EVIL, additional_headers=credential)
    response = caught.value.response
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    assert orjson.loads(response.body or b"") == {
        "error": {"code": "permission_denied", "message": "origin not allowed"}
    }


@pytest.mark.parametrize("origin", ["own", APP, None])
async def test_same_host_listed_and_originless_handshakes_connect(
    server: ServerProcess, origin: str | None
) -> None:
    if origin == "own":
        origin = f"http://127.0.0.1:{server.port}"
    url = ws_url(server)
    async with asyncio.timeout(TIMEOUT):
        async with connect(
            url,
            origin=origin,
            additional_headers={"X-API-Key": KEY},
            subprotocols=["tidings.v1.json"],
        ) as ws:
            await ws.send(orjson.dumps({"id": 1, "op": "ping"}).decode())
            assert orjson.loads(await ws.recv())["id"] == 1


# -- cross-site writes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {},
        {"content-type": "text/plain", "cookie": "tidings_token=TOKEN"},
    ],
    ids=["text", "form", "no content type", "cookie"],
)
async def test_a_simple_publish_without_a_header_credential_is_refused(
    client: httpx.AsyncClient, channel: str, headers: dict[str, str]
) -> None:
    headers = {k: v.replace("TOKEN", token(channel)) for k, v in headers.items()}
    for url in (
        f"/api/publish?channel={channel}",
        f"/api/publish?channel={channel}&token={token(channel)}",
    ):
        response = await client.post(url, content=b"hello", headers={"origin": EVIL, **headers})
        assert response.status_code == 415
        assert response.json()["error"]["code"] == "unsupported_media_type"
    assert await published(client, channel) == []


async def test_a_publish_with_json_or_a_header_credential_goes_through(
    client: httpx.AsyncClient, channel: str
) -> None:
    text = {"content-type": "text/plain"}
    answers = [
        await client.post("/api/publish", json={"channel": channel, "text": "json"}),
        await client.post(
            f"/api/publish?channel={channel}", content=b"key", headers={**text, "x-api-key": KEY}
        ),
        await client.post(
            f"/api/publish?channel={channel}",
            content=b"bearer",
            headers={**text, "authorization": f"Bearer {token(channel)}"},
        ),
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert await published(client, channel) == ["json", "key", "bearer"]


async def test_a_chat_completion_needs_json_or_a_header_credential(
    client: httpx.AsyncClient,
) -> None:
    def started() -> Any:
        return client.get("/api/stats", headers={"x-api-key": KEY})

    before = (await started()).json()["llm"]["started"]
    for headers in ({}, {"content-type": "text/plain"}):
        refused = await client.post(
            "/v1/chat/completions", content=orjson.dumps(CHAT), headers=headers
        )
        assert refused.status_code == 415
        assert refused.json()["error"]["code"] == "unsupported_media_type"
    assert (await started()).json()["llm"]["started"] == before
    answered = await client.post(
        "/v1/chat/completions", content=orjson.dumps(CHAT), headers={"x-api-key": KEY}
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["object"] == "chat.completion"


async def test_a_delete_needs_json_or_a_header_credential(client: httpx.AsyncClient) -> None:
    refused = await client.delete("/v1/streams/chatcmpl-nope")
    assert refused.status_code == 415
    assert refused.json()["error"]["code"] == "unsupported_media_type"
    passed = await client.delete("/v1/streams/chatcmpl-nope", headers={"x-api-key": KEY})
    assert passed.status_code == 404
