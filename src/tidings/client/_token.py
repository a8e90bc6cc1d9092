"""Tokens on the client side: the ``get_token`` callback, the header, the expiry.

The clients never verify a token (the server does); they only read its
``exp`` claim to know when to ask for a new one, so no JWT library is needed
here: a JWT is ``header.payload.signature``, each part base64url (RFC 7519 3,
RFC 7515 2: no padding), and the payload is a JSON object.
"""

from __future__ import annotations

import base64
import binascii
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeAlias

import orjson

__all__ = [
    "AsyncTokenSource",
    "TokenSource",
    "authorization",
    "fetch_token",
    "fetch_token_sync",
    "token_expiry",
]

#: A callable that returns a fresh token (the synchronous listener accepts only this kind).
TokenSource: TypeAlias = Callable[[], str]
#: A callable that returns a fresh token, or an awaitable of one.
AsyncTokenSource: TypeAlias = Callable[[], str | Awaitable[str]]


def authorization(token: str) -> dict[str, str]:
    """The request header that carries ``token``."""
    return {"authorization": f"Bearer {token}"}


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (unix seconds), read WITHOUT verifying it.

    Returns None for anything that is not a JWT with a numeric ``exp``: an
    opaque token simply never gets a proactive refresh.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def _checked(token: object) -> str:
    if not isinstance(token, str) or not token:
        raise TypeError(f"get_token must return a non-empty str, not {token!r}")
    return token


def fetch_token_sync(get_token: TokenSource) -> str:
    """Call a synchronous ``get_token``; refuse a coroutine function clearly."""
    result: object = get_token()
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited: do not leave a warning behind
        raise TypeError("listen_sync() needs a synchronous get_token; use listen() for async ones")
    return _checked(result)


async def fetch_token(get_token: AsyncTokenSource) -> str:
    """Call ``get_token`` (sync or async) and return its token."""
    result = get_token()
    if inspect.isawaitable(result):
        result = await result
    return _checked(result)
