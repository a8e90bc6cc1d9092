"""errors.py and wire/codes.py agree; the server's table maps every error."""

from __future__ import annotations

import inspect

import orjson

import tidings.errors as errors
from tidings.server.errors import ERRORS, close_code, error_response, http_status
from tidings.wire.codes import CloseCode, ErrorCode


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


def test_temporary_refusals_say_when_to_retry() -> None:
    limited = errors.RateLimited(10, retry_after=0.25, what="publishes", scope="per client address")
    assert http_status(limited) == 429
    assert limited.retry_after == 0.25
    assert "10 publishes per second per client address" in str(limited)
    response = error_response(limited)
    assert response.headers["retry-after"] == "1"
    assert orjson.loads(response.body)["error"]["code"] == "rate_limited"
    assert error_response(errors.RateLimited(1, retry_after=2.5)).headers["retry-after"] == "3"
    assert "retry-after" not in error_response(errors.RateLimited(1)).headers
    draining = errors.ShuttingDown()
    assert (http_status(draining), draining.code, draining.retry_after) == (503, "unavailable", 1.0)
    assert isinstance(draining, errors.PublishError)
    assert error_response(draining).headers["retry-after"] == "1"
    assert close_code(draining) == CloseCode.SHUTDOWN


def test_big_integers_are_a_protocol_error() -> None:
    refused = errors.IntegerOutOfRange("1" * 40)
    assert (http_status(refused), refused.code) == (400, "invalid_json")
    assert "1111111111..." in str(refused)
    assert isinstance(refused, ValueError)


def test_close_codes() -> None:
    assert close_code(errors.FrameTooLarge(10, 5)) == CloseCode.MESSAGE_TOO_BIG
    assert close_code(errors.RateLimited(10)) == CloseCode.RATE_LIMITED
    assert close_code(errors.InvalidChannel("a b", "space")) == CloseCode.BAD_REQUEST
    assert close_code(errors.PermissionDenied("a", "subscribe")) == CloseCode.BAD_REQUEST
    assert close_code(errors.BackendUnavailable("redis")) == CloseCode.INTERNAL_ERROR
    assert close_code(errors.TidingsError("?")) == CloseCode.INTERNAL_ERROR


def test_hub_errors_keep_their_wire_codes() -> None:
    already = errors.AlreadySubscribed("a")
    assert (already.channel, already.code) == ("a", "already_subscribed")
    closed = errors.SubscriptionClosed("shutdown")
    assert (closed.reason, closed.code) == ("shutdown", "subscription_closed")
    for error in (already, closed):
        assert (http_status(error), close_code(error)) == (400, CloseCode.BAD_REQUEST)


def test_the_table_has_one_row_per_class_and_subclasses_first() -> None:
    classes = [cls for cls, _, _ in ERRORS]
    assert len(classes) == len(set(classes))
    for index, cls in enumerate(classes):
        for earlier in classes[:index]:
            assert not issubclass(cls, earlier), f"{earlier.__name__} shadows {cls.__name__}"


def test_errors_carry_their_attributes() -> None:
    error = errors.InvalidChannel("a b", "contains ' '")
    assert isinstance(error, ValueError)
    assert (error.channel, error.reason) == ("a b", "contains ' '")
    too_large = errors.FrameTooLarge(10, 5)
    assert (too_large.size, too_large.limit, too_large.code) == (10, 5, "too_large")
