"""TidingsError → HTTP status and JSON body, in one table.

Every error response of the HTTP API has the same shape::

    {"error": {"code": "invalid_channel", "message": "invalid channel name 'a b': ..."}}

``code`` is one of :class:`tidings.wire.codes.ErrorCode`.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from tidings.errors import (
    BackendUnavailable,
    FrameTooLarge,
    InvalidChannel,
    InvalidCursor,
    InvalidPublication,
    PermissionDenied,
    ProtocolError,
    PublishError,
    QueueFull,
    StreamRejected,
    TidingsError,
    UpstreamError,
    UpstreamTimeout,
)
from tidings.wire.codes import ErrorCode

__all__ = ["CODE_STATUS", "HTTP_STATUS", "error_response", "http_status"]

#: Checked in order; the first class an error is an instance of decides.
HTTP_STATUS: tuple[tuple[type[TidingsError], int], ...] = (
    (FrameTooLarge, 413),
    (InvalidCursor, 400),
    (ProtocolError, 400),
    (InvalidChannel, 400),
    (InvalidPublication, 400),
    (PermissionDenied, 403),
    (BackendUnavailable, 503),
    (PublishError, 500),
    (QueueFull, 429),
    (UpstreamTimeout, 504),
    (UpstreamError, 502),
    (StreamRejected, 502),
)


#: Codes whose status is more precise than their class's.
CODE_STATUS: dict[str, int] = {
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.RATE_LIMITED: 429,
}


def http_status(exc: TidingsError) -> int:
    """Return the HTTP status for ``exc`` (500 when no row matches)."""
    if exc.code in CODE_STATUS:
        return CODE_STATUS[exc.code]
    for cls, status in HTTP_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


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
        error_body(str(code), message or ""), status_code=status, headers=dict(headers or {})
    )
