"""Browser safety: CORS, the WebSocket ``Origin`` allow-list, and no cross-site writes.

Theory of operation
-------------------

A browser sends requests on behalf of any page its user has open, and a page
from another site may *send* far more than it may *read*. Three rules, applied
in front of every route by :func:`browser_middleware`, keep such a page from
reading or changing anything:

1. **CORS** (``cors_origins``, ``cors_credentials``): Starlette's
   ``CORSMiddleware`` answers preflights and lets the listed origins read
   answers. With no ``cors_origins`` it is not installed at all, so no answer
   carries a CORS header and browsers keep other sites from reading.
2. **WebSocket origin**: a WebSocket handshake is not covered by CORS, and a
   page on any site may open one. A handshake whose ``Origin`` is neither this
   server's own host (the request's ``Host``, over http or https) nor one of
   ``cors_origins`` (``*`` allows any) is refused with HTTP 403
   ``permission_denied`` before the upgrade. A handshake without ``Origin``
   does not come from a browser page and is let through.
3. **No state change from a simple request**: a page may POST a form or a
   ``text/plain`` body to any site without asking first (a CORS "simple"
   request). So a ``POST``, ``PUT``, ``PATCH`` or ``DELETE`` must carry a JSON
   content type or a credential in a header (``Authorization`` or
   ``X-API-Key``): a page can send neither to another site unless a
   preflight allowed it. Anything else is refused with 415
   ``unsupported_media_type`` before the app reads the body. A cookie or a
   ``?token=`` does not count: a browser sends those cross-site too.

The guard only decides whether a request goes on; it never wraps ``send``,
so a stream that passes costs nothing more per event.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import orjson
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.server.errors import error_body, error_response
from tidings.server.llm import STREAM_ID_HEADER
from tidings.settings import Settings
from tidings.wire.codes import CloseCode, ErrorCode

__all__ = [
    "CORS_ALLOW_HEADERS",
    "CORS_EXPOSE_HEADERS",
    "CORS_METHODS",
    "UNSAFE_METHODS",
    "BrowserGuard",
    "browser_middleware",
    "origin_allowed",
    "refuse_handshake",
    "write_allowed",
]

logger = logging.getLogger(__name__)

#: Methods that may change something: they need a JSON body or a header credential.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Request headers whose presence a cross-site page cannot fake without a preflight.
CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key"})
#: Methods the routes answer, allowed in a preflight.
CORS_METHODS = ("GET", "HEAD", "POST", "DELETE")
#: Every request header a Tidings route reads (besides CORS-safelisted ones).
CORS_ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "X-API-Key",
)
#: Response headers a page on an allowed origin may read.
CORS_EXPOSE_HEADERS = (STREAM_ID_HEADER,)

_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def _normal(origin: str) -> str:
    """``origin`` in lower case and without its scheme's default port."""
    origin = origin.strip().lower()
    scheme, _, authority = origin.partition("://")
    default = _DEFAULT_PORTS.get(scheme)
    if default and authority.endswith(f":{default}"):
        return origin.removesuffix(f":{default}")
    return origin


def origin_allowed(origin: str, host: str | None, allowed: Iterable[str]) -> bool:
    """Tell whether a WebSocket handshake from ``origin`` may go on.

    Args:
        origin: The handshake's ``Origin`` header.
        host: Its ``Host`` header: this server's own origins are that host
            over http and https. None when the request has none.
        allowed: The configured origins (``cors_origins``); ``*`` allows any.
    """
    origin = _normal(origin)
    own = {_normal(f"{scheme}://{host}") for scheme in ("http", "https")} if host else set()
    return any(entry == "*" or _normal(entry) == origin for entry in allowed) or origin in own


def _json_media_type(value: str) -> bool:
    # The essence: "application/json; charset=utf-8" -> "application/json".
    essence = value.partition(";")[0].strip().lower()
    return essence == "application/json" or (
        essence.startswith("application/") and essence.endswith("+json")
    )


def write_allowed(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Tell whether a state-changing request is one a cross-site page cannot send unasked.

    It is when it carries a JSON content type (``application/json`` or
    ``application/…+json``) or an ``Authorization`` or ``X-API-Key`` header
    (with a value).

    Args:
        headers: The request's ASGI headers (names in lower case).
    """
    for name, value in headers:
        if name in CREDENTIAL_HEADERS and value.strip():
            return True
        if name == b"content-type" and _json_media_type(value.decode("latin-1")):
            return True
    return False


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            text: str = value.decode("latin-1")
            return text
    return None


class BrowserGuard:
    """ASGI middleware: the WebSocket origin rule and the cross-site write rule.

    Args:
        app: The app to guard.
        origins: Origins allowed besides this server's own (``cors_origins``;
            ``*`` allows any).
    """

    def __init__(self, app: ASGIApp, *, origins: Sequence[str] = ()) -> None:
        self.app = app
        self.origins = tuple(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            if not write_allowed(scope.get("headers", ())):
                await self._refuse_write(scope, receive, send)
                return
        elif scope["type"] == "websocket":
            origin = _header(scope, b"origin")
            if origin is not None and not origin_allowed(
                origin, _header(scope, b"host"), self.origins
            ):
                logger.info("refused a WebSocket handshake from origin %r", origin[:200])
                await refuse_handshake(scope, send, "origin not allowed")
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse_write(scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        response = error_response(
            status=415,
            code=ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            message=(
                f"a {method} request needs Content-Type: application/json, or an "
                "Authorization or X-API-Key header (so that no other web site can send it)"
            ),
        )
        await response(scope, receive, send)


async def refuse_handshake(scope: Scope, send: Send, message: str) -> None:
    """Refuse a WebSocket handshake with 403 ``permission_denied``, before any upgrade.

    The answer is an HTTP 403 with the JSON error body when the server offers
    the ``websocket.http.response`` extension, else a close before accept
    (which servers answer with a bare 403).
    """
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = orjson.dumps(error_body(ErrorCode.PERMISSION_DENIED, message))
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "websocket.http.response.start", "status": 403, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": CloseCode.FORBIDDEN, "reason": message})


def browser_middleware(settings: Settings) -> list[Middleware]:
    """The middleware ``create_app`` mounts for ``settings``, outermost first.

    CORS only when ``cors_origins`` is set; the guard always.
    """
    origins = settings.cors_origin_list()
    stack = []
    if origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_credentials=settings.cors_credentials,
                allow_methods=CORS_METHODS,
                allow_headers=CORS_ALLOW_HEADERS,
                expose_headers=CORS_EXPOSE_HEADERS,
            )
        )
    stack.append(Middleware(BrowserGuard, origins=origins))
    return stack
