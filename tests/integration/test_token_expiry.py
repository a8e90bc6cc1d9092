"""Tokens that expire: SSE ends with ``expired``, a WebSocket closes with 4401 unless refreshed."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.env import TIMEOUT
from tidings.server.auth import mint_token
from tidings.settings import Settings
from tidings.testing import run_server

SECRET = "token-expiry-tests-secret-32-byt"
API_KEY = "expiry-api-key-0123456789"
GRANTS = {"subscribe": ["chat:*"], "publish": ["chat:*"]}
SETTINGS = Settings(log_level="warning", jwt_secret=SECRET, api_keys=f"ops:{API_KEY}")
EXPIRED = b'event: expired\ndata: {"reason":"token_expired"}\n\n'

pytestmark = pytest.mark.parametrize("fast_write", [True, False], ids=["fast", "asgi"])


def token(sub: str = "alice", ttl: float = 60) -> str:
    return mint_token(SECRET, sub=sub, ttl=ttl, grants=GRANTS)


async def test_sse_ends_with_expired_and_keeps_the_cursor(fast_write: bool) -> None:
    async with (
        run_server(settings=SETTINGS, fast_write=fast_write) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client,
    ):
        headers = {"Authorization": f"Bearer {token(ttl=2)}"}
        received = b""
        async with client.stream("GET", "/sse/chat:a", headers=headers) as response:
            assert response.status_code == 200
            async with asyncio.timeout(TIMEOUT):
                async for chunk in response.aiter_bytes():
                    if not received:
                        publish = {"channel": "chat:a", "data": 1}
                        answer = await client.post(
                            "/api/publish", json=publish, headers={"X-API-Key": API_KEY}
                        )
                        assert answer.status_code == 200
                    received += chunk
        # The stream ended by itself, with the expired event last and no id: line in it.
        assert received.endswith(EXPIRED)
        assert b"data: 1\n" in received
        last_block = received[: -len(EXPIRED)].rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
        assert last_block.startswith(b"id: ")


async def request(socket: ClientConnection, command: dict[str, Any]) -> dict[str, Any]:
    await socket.send(orjson.dumps(command).decode())
    async with asyncio.timeout(TIMEOUT):
        while True:
            reply = orjson.loads(await socket.recv())
            if isinstance(reply, dict) and reply.get("id") == command["id"]:
                return reply


def ws_connect(url: str, bearer: str) -> Any:
    return connect(
        url.replace("http", "ws", 1) + "/ws",
        subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {bearer}"},
        open_timeout=TIMEOUT,
    )


async def test_websocket_refresh_rules(fast_write: bool) -> None:
    async with (
        run_server(settings=SETTINGS, fast_write=fast_write) as url,
        ws_connect(url, token()) as socket,
    ):
        fresh = mint_token(SECRET, sub="alice", ttl=120, grants=GRANTS, now=1_000_000)
        reply = await request(socket, {"id": 1, "op": "refresh", "token": fresh})
        assert reply["error"]["code"] == "unauthorized"  # expired long ago
        reply = await request(socket, {"id": 2, "op": "refresh", "token": token("mallory")})
        assert reply["error"]["code"] == "permission_denied"
        reply = await request(socket, {"id": 3, "op": "refresh", "token": "not.a.token"})
        assert reply["error"]["code"] == "unauthorized"
        renewed = token(ttl=600)
        reply = await request(socket, {"id": 4, "op": "refresh", "token": renewed})
        assert reply["ok"] is True
        assert isinstance(reply["result"]["expires"], int)
        reply = await request(socket, {"id": 5, "op": "subscribe", "channel": "chat:x"})
        assert reply["ok"] is True


async def test_websocket_closes_with_4401_unless_refreshed(fast_write: bool) -> None:
    async with (
        run_server(settings=SETTINGS, fast_write=fast_write) as url,
        ws_connect(url, token(ttl=2)) as refreshed,
    ):
        reply = await request(refreshed, {"id": 1, "op": "refresh", "token": token(ttl=600)})
        assert reply["ok"] is True
        # Expires after the first connection's old deadline has passed.
        async with ws_connect(url, token(ttl=3)) as lapsing:
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(TIMEOUT):
                    await lapsing.recv()
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "token expired")
        assert (await request(refreshed, {"id": 2, "op": "ping"}))["ok"] is True
