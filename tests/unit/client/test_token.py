"""client/_token.py: the header, the unverified expiry, the get_token calls."""

from __future__ import annotations

import base64

import orjson
import pytest

from tidings.client._token import authorization, fetch_token, fetch_token_sync, token_expiry
from tidings.server.auth import mint_token

SECRET = "s" * 32


def jwt_with(claims: object) -> str:
    payload = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{payload}.c2ln"


def test_authorization() -> None:
    assert authorization("abc") == {"authorization": "Bearer abc"}


def test_token_expiry_reads_exp_without_verifying() -> None:
    assert token_expiry(mint_token(SECRET, sub="ada", ttl=60, now=1000)) == 1060.0
    assert token_expiry(jwt_with({"exp": 12.5})) == 12.5
    for payload in ({"sub": "x"}, {"exp": "soon"}, {"exp": True}, [1]):
        assert token_expiry(jwt_with(payload)) is None
    for token in ("opaque", "a.b", "a.!!!.c", "a.bm90IGpzb24.c", ""):
        assert token_expiry(token) is None


async def test_fetch_token_takes_sync_and_async_callables() -> None:
    async def coroutine() -> str:
        return "a"

    assert await fetch_token(lambda: "s") == "s"
    assert await fetch_token(coroutine) == "a"
    with pytest.raises(TypeError):
        await fetch_token(lambda: "")


def test_fetch_token_sync_refuses_coroutines() -> None:
    async def coroutine() -> str:
        return "a"

    assert fetch_token_sync(lambda: "s") == "s"
    with pytest.raises(TypeError, match="synchronous"):
        fetch_token_sync(coroutine)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fetch_token_sync(lambda: None)  # type: ignore[arg-type, return-value]
