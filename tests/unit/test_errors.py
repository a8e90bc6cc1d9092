"""errors.py and wire/codes.py agree; the HTTP table maps every error."""

from __future__ import annotations

import inspect

import tidings.errors as errors
from tidings.server.errors import http_status
from tidings.wire.codes import CloseCode, ErrorCode, should_reconnect


def error_classes() -> list[type[errors.TidingsError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.TidingsError)
    ]


def test_every_error_code_is_a_wire_code() -> None:
    for cls in error_classes():
        assert cls.code in set(ErrorCode), f"{cls.__name__}.code {cls.code!r} is not an ErrorCode"


def test_every_error_class_is_exported() -> None:
    assert {cls.__name__ for cls in error_classes()} == set(errors.__all__)


def test_http_statuses() -> None:
    assert http_status(errors.InvalidChannel("a b", "space")) == 400
    assert http_status(errors.FrameTooLarge(10, 5)) == 413
    assert http_status(errors.PermissionDenied("a", "publish")) == 403
    assert http_status(errors.BackendUnavailable("redis")) == 503
    assert http_status(errors.ProtocolError("x", code="unsupported_media_type")) == 415
    assert http_status(errors.TidingsError("?")) == 500


def test_close_code_ranges() -> None:
    for code in CloseCode:
        if 4000 <= code < 4500:
            assert should_reconnect(code), code
        elif 4500 <= code < 5000:
            assert not should_reconnect(code), code
    assert should_reconnect(CloseCode.SERVICE_RESTART)
    assert not should_reconnect(CloseCode.MESSAGE_TOO_BIG)


def test_errors_carry_their_attributes() -> None:
    error = errors.InvalidChannel("a b", "contains ' '")
    assert isinstance(error, ValueError)
    assert (error.channel, error.reason) == ("a b", "contains ' '")
    too_large = errors.FrameTooLarge(10, 5)
    assert (too_large.size, too_large.limit, too_large.code) == (10, 5, "too_large")
