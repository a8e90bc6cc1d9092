"""``POST /api/session`` and ``DELETE /api/session``: a client's token in a cookie.

A browser page that holds a token (from the application's own login) can
store it in the ``token_cookie`` cookie, so that ``EventSource`` and
WebSocket connections of the same site carry it without a ``?token=`` in
their URLs. The cookie is ``HttpOnly`` and, by default, ``Secure`` and
``SameSite=Strict``; it lives as long as the token. A cookie never counts as
a credential for a state-changing request (``server/browser.py``), so a
cross-site page cannot act with it. Mounted only when ``token_cookie`` is set.
"""

from __future__ import annotations

import time
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

from tidings.errors import Unauthorized
from tidings.server.auth import Action
from tidings.server.state import ServerState
from tidings.wire import protocol

__all__ = ["create_session", "end_session"]


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.tidings
    return state


def _json(content: object) -> Response:
    return Response(
        protocol.encode_message(content, protocol.Format.JSON), media_type="application/json"
    )


async def create_session(request: Request) -> Response:
    """Store the request's bearer token in the token cookie; answer its ``sub`` and ``expires``."""
    state = _state(request)
    principal = state.authority.principal(request.scope)
    state.authority.authorize(principal, Action.SESSION)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        # Only a token from the Authorization header goes into the cookie.
        raise Unauthorized("missing", "POST /api/session needs Authorization: Bearer <token>")
    token = token.strip()
    settings = state.settings
    response = _json({"sub": principal.sub, "expires": principal.expires})
    max_age = None if principal.expires is None else max(0, int(principal.expires - time.time()))
    samesite: Literal["strict", "lax", "none"] = settings.token_cookie_samesite  # type: ignore[assignment]
    response.set_cookie(
        settings.token_cookie,
        token,
        max_age=max_age,
        path="/",
        secure=settings.token_cookie_secure,
        httponly=True,
        samesite=samesite,
    )
    return response


async def end_session(request: Request) -> Response:
    """Clear the token cookie (the request must carry a token, the cookie's own will do)."""
    state = _state(request)
    state.authority.authorize(state.authority.principal(request.scope), Action.SESSION)
    response = _json({"ended": True})
    response.delete_cookie(
        state.settings.token_cookie,
        path="/",
        secure=state.settings.token_cookie_secure,
        httponly=True,
        samesite=state.settings.token_cookie_samesite,  # type: ignore[arg-type]
    )
    return response
