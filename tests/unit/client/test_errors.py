"""client/_errors.py: server error bodies and httpx's exceptions become Tidings errors."""

from __future__ import annotations

import httpx
import pytest

from tidings.client._errors import check_url, error_body, http_errors, stream_rejected
from tidings.errors import (
    InvalidURL,
    RequestTimeout,
    ServerUnavailable,
    StreamRejected,
    TidingsError,
)

URL = "http://tidings.test/api/publish"
REQUEST = httpx.Request("POST", URL)


@pytest.mark.parametrize("url", ["http://h", "https://h:1/x", "http://[::1]:8000"])
def test_check_url_returns_a_usable_url(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("localhost:8000", "must start with http:// or https://"),
        ("127.0.0.1:8000", "must start with http:// or https://"),
        ("ws://h/ws", "must start with http:// or https://"),
        ("", "must start with"),
        ("http://", "names no host"),
        ("http:///path", "names no host"),
    ],
)
def test_check_url_refuses_what_cannot_name_a_server(url: str, reason: str) -> None:
    with pytest.raises(InvalidURL, match=reason) as caught:
        check_url(url)
    assert (caught.value.code, caught.value.url) == ("invalid_url", url)
    assert isinstance(caught.value, ValueError)


def test_error_body_reads_a_tidings_error_and_nothing_else() -> None:
    body = b'{"error": {"code": "invalid_channel", "message": "contains a space"}}'
    assert error_body(body) == ("invalid_channel", "contains a space")
    assert error_body(body.decode()) == ("invalid_channel", "contains a space")
    for other in (
        b"",
        b"<html>",
        b"[]",
        b'{"error": "no"}',
        b'{"error": {"code": 1, "message": ""}}',
    ):
        assert error_body(other) is None


def test_stream_rejected_carries_the_servers_code_and_message() -> None:
    body = b'{"error": {"code": "permission_denied", "message": "subscribe is not allowed"}}'
    rejected = stream_rejected(403, body)
    assert (rejected.status, rejected.code) == (403, "permission_denied")
    assert rejected.message == "subscribe is not allowed"
    assert rejected.body == body.decode()
    assert str(rejected) == "server answered 403: permission_denied: subscribe is not allowed"
    plain = stream_rejected(404, b"Not Found")
    assert (plain.code, plain.message, str(plain)) == (
        "stream_rejected",
        "Not Found",
        "server answered 404: Not Found",
    )


@pytest.mark.parametrize(
    ("raised", "expected", "code"),
    [
        (httpx.ConnectError("refused", request=REQUEST), ServerUnavailable, "unreachable"),
        (httpx.ConnectTimeout("slow", request=REQUEST), ServerUnavailable, "unreachable"),
        (httpx.ReadError("reset", request=REQUEST), ServerUnavailable, "unreachable"),
        (httpx.RemoteProtocolError("junk", request=REQUEST), ServerUnavailable, "unreachable"),
        (httpx.ReadTimeout("late", request=REQUEST), RequestTimeout, "timeout"),
        (httpx.WriteTimeout("late", request=REQUEST), RequestTimeout, "timeout"),
        (httpx.PoolTimeout("busy", request=REQUEST), RequestTimeout, "timeout"),
        (httpx.UnsupportedProtocol("no scheme", request=REQUEST), InvalidURL, "invalid_url"),
        (httpx.InvalidURL("bad"), InvalidURL, "invalid_url"),
        (httpx.DecodingError("gzip", request=REQUEST), ServerUnavailable, "unreachable"),
    ],
)
def test_http_errors_become_tidings_errors_with_the_cause_kept(
    raised: Exception, expected: type[TidingsError], code: str
) -> None:
    with pytest.raises(expected) as caught, http_errors(URL, "publish", 2.5):
        raise raised
    assert caught.value.code == code
    assert caught.value.__cause__ is raised


def test_a_timeout_says_which_request_and_how_long() -> None:
    with pytest.raises(RequestTimeout) as caught, http_errors(URL, "publish", 2.5):
        raise httpx.ReadTimeout("late", request=REQUEST)
    assert (caught.value.op, caught.value.timeout) == ("publish", 2.5)
    assert isinstance(caught.value, TimeoutError)
    assert str(caught.value) == "no reply to publish within 2.5 s"


def test_other_errors_pass_through() -> None:
    with pytest.raises(KeyError), http_errors(URL, "publish", 1.0):
        raise KeyError("not httpx")
    with pytest.raises(StreamRejected), http_errors(URL, "publish", 1.0):
        raise StreamRejected(400)
