"""TidingsError → HTTP status, JSON body and WebSocket close code, in one table.

Every error response of the HTTP API has the same shape::

    {"error": {"code": "invalid_channel", "message": "invalid channel name 'a b': ..."}}

``code`` is one of :class:`tidings.wire.codes.ErrorCode`; a WebSocket error
reply carries the same code. When an error ends a WebSocket connection
instead (a handshake refused, an oversized message), the close code comes
from the same row. Transports ask :func:`http_status` and :func:`close_code`;
none of them keeps a mapping of its own.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import JSONResponse
from starlette.types import Scope, Send

from tidings.errors import (
    AlreadySubscribed,
    BackendUnavailable,
    FrameTooLarge,
    HookFailed,
    InvalidArguments,
    InvalidChannel,
    InvalidCursor,
    InvalidPublication,
    ModelNotFound,
    PermissionDenied,
    ProtocolError,
    ProxyUnavailable,
    PublishError,
    QueueFull,
    RateLimited,
    Rejected,
    ShuttingDown,
    StreamRejected,
    SubscriptionClosed,
    TidingsError,
    TooManyConnections,
    Unauthorized,
    UnknownJob,
    UpstreamError,
    UpstreamTimeout,
)
from tidings.server.rates import retry_seconds
from tidings.wire.codes import CloseCode, ErrorCode

__all__ = [
    "CHALLENGE",
    "CODE_STATUS",
    "ERRORS",
    "close_code",
    "error_body",
    "error_headers",
    "error_response",
    "http_status",
    "reject_handshake",
]

#: The challenge every 401 answer carries (RFC 6750 section 3).
CHALLENGE = ("www-authenticate", "Bearer")

#: (error class, HTTP status, WebSocket close code), checked in order: the
#: first class an error is an instance of decides. An error outside every
#: row is a 500 and closes with 1011.
ERRORS: tuple[tuple[type[TidingsError], int, CloseCode], ...] = (
    (FrameTooLarge, 413, CloseCode.MESSAGE_TOO_BIG),
    (RateLimited, 429, CloseCode.RATE_LIMITED),
    (InvalidCursor, 400, CloseCode.BAD_REQUEST),
    (InvalidArguments, 422, CloseCode.BAD_REQUEST),
    (ModelNotFound, 404, CloseCode.BAD_REQUEST),
    (ProtocolError, 400, CloseCode.BAD_REQUEST),
    (InvalidChannel, 400, CloseCode.BAD_REQUEST),
    (InvalidPublication, 400, CloseCode.BAD_REQUEST),
    (AlreadySubscribed, 400, CloseCode.BAD_REQUEST),
    (SubscriptionClosed, 400, CloseCode.BAD_REQUEST),
    (Unauthorized, 401, CloseCode.UNAUTHORIZED),
    (PermissionDenied, 403, CloseCode.BAD_REQUEST),
    # A hook's refusal carries its own status (400-499); 403 is its default.
    (Rejected, 403, CloseCode.FORBIDDEN),
    (HookFailed, 500, CloseCode.INTERNAL_ERROR),
    (ProxyUnavailable, 503, CloseCode.TRY_AGAIN_LATER),
    (BackendUnavailable, 503, CloseCode.INTERNAL_ERROR),
    (ShuttingDown, 503, CloseCode.SHUTDOWN),
    (TooManyConnections, 503, CloseCode.TRY_AGAIN_LATER),
    (PublishError, 500, CloseCode.INTERNAL_ERROR),
    (QueueFull, 429, CloseCode.BAD_REQUEST),
    (UnknownJob, 404, CloseCode.BAD_REQUEST),
    (UpstreamTimeout, 504, CloseCode.INTERNAL_ERROR),
    (UpstreamError, 502, CloseCode.INTERNAL_ERROR),
    (StreamRejected, 502, CloseCode.INTERNAL_ERROR),
)

#: Codes whose status is more precise than their class's.
CODE_STATUS: dict[str, int] = {
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.RATE_LIMITED: 429,
}


def _row(exc: TidingsError) -> tuple[int, CloseCode]:
    for cls, status, code in ERRORS:
        if isinstance(exc, cls):
            return status, code
    return 500, CloseCode.INTERNAL_ERROR


def http_status(exc: TidingsError) -> int:
    """Return the HTTP status for ``exc`` (500 when no row matches)."""
    if isinstance(exc, Rejected):
        return exc.status
    if exc.code in CODE_STATUS:
        return CODE_STATUS[exc.code]
    return _row(exc)[0]


def close_code(exc: TidingsError) -> CloseCode:
    """Return the WebSocket close code for ``exc`` when it ends a connection."""
    return _row(exc)[1]


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON error body: ``{"error": {"code": …, "message": …}}``."""
    return {"error": {"code": code, "message": message}}


def error_headers(status: int, exc: TidingsError | None = None) -> dict[str, str]:
    """Headers an error answer of ``status`` must carry: the challenge of a 401, and
    ``Retry-After`` (whole seconds, at least 1) when ``exc`` says when to retry."""
    headers = dict([CHALLENGE]) if status == 401 else {}
    retry_after = exc.retry_after if exc is not None else None
    if retry_after is not None:
        headers["retry-after"] = str(retry_seconds(retry_after))
    return headers


def error_response(
    exc: TidingsError | None = None,
    *,
    status: int | None = None,
    code: ErrorCode | str | None = None,
    message: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Build the JSON error response for ``exc``, or for an explicit code and message."""
    if exc is not None:
        status = status or http_status(exc)
        code = code or exc.code
        message = message or str(exc)
    assert status is not None
    assert code is not None
    return JSONResponse(
        error_body(str(code), message or ""),
        status_code=status,
        headers=error_headers(status, exc) | dict(headers or {}),
    )


async def reject_handshake(exc: TidingsError, scope: Scope, send: Send) -> None:
    """Refuse the handshake: an HTTP error with a JSON body when the server can send one."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = orjson.dumps(error_body(exc.code, str(exc)))
        status = http_status(exc)
        extra = [
            (name.encode(), value.encode()) for name, value in error_headers(status, exc).items()
        ]
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": close_code(exc)})
