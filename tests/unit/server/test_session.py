"""POST/DELETE /api/session: a client's token in an HttpOnly, SameSite=Strict cookie."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.env import TIMEOUT
from tidings.hub import Hub
from tidings.server import create_app
from tidings.server.auth import mint_token
from tidings.settings import Settings, SettingsError

SECRET = "session-secret-session-secret-0123"
KEY = "publisher-key-publisher-key"
JSON = {"content-type": "application/json"}


def token(sub: str = "alice", ttl: float = 600) -> str:
    return mint_token(
        SECRET, sub=sub, ttl=ttl, grants={"history": ["chat:*"], "subscribe": ["chat:*"]}
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(jwt_secret=SECRET, api_keys=f"ops:{KEY}", token_cookie="tidings_token")
    async with Hub() as hub:
        transport = httpx.ASGITransport(app=create_app(hub, settings))
        async with httpx.AsyncClient(transport=transport, base_url="https://tidings") as client:
            yield client


async def test_a_bearer_token_becomes_a_strict_http_only_cookie(client: httpx.AsyncClient) -> None:
    bearer = token()
    response = await client.post(
        "/api/session", headers={**JSON, "authorization": f"Bearer {bearer}"}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    assert response.json()["sub"] == "alice"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"tidings_token={bearer};")
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/", "Max-Age="):
        assert attribute in cookie
    # The cookie alone now identifies the client on a read.
    history = await client.get("/api/history/chat:room", timeout=TIMEOUT)
    assert history.status_code == 200, history.text
    other = await client.get("/api/history/news", timeout=TIMEOUT)
    assert other.status_code == 403
    ended = await client.request("DELETE", "/api/session", headers=JSON, timeout=TIMEOUT)
    assert ended.status_code == 200
    assert 'tidings_token=""' in ended.headers["set-cookie"]
    assert (await client.get("/api/history/chat:room", timeout=TIMEOUT)).status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": KEY},
        {"authorization": f"ApiKey {KEY}"},
        {"authorization": "Bearer not-a-token"},
    ],
    ids=["nothing", "x-api-key", "apikey", "bad-token"],
)
async def test_only_a_valid_bearer_token_makes_a_session(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.post("/api/session", headers={**JSON, **headers}, timeout=TIMEOUT)
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


async def test_a_query_token_does_not_make_a_session(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/api/session?token={token()}", headers=JSON, timeout=TIMEOUT)
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


async def test_without_token_cookie_there_is_no_session_route() -> None:
    async with Hub() as hub:
        app = create_app(hub, Settings(jwt_secret=SECRET))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://tidings") as client:
            response = await client.post(
                "/api/session", headers={**JSON, "authorization": f"Bearer {token()}"}
            )
    assert response.status_code == 404


def test_cookie_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match="token_cookie_samesite must be"):
        Settings(token_cookie_samesite="loose")
    with pytest.raises(SettingsError, match="needs token_cookie_secure"):
        Settings(token_cookie_samesite="none", token_cookie_secure=False)
