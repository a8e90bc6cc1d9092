"""client/socket.py without sockets: URLs, frames, close codes, use before connecting."""

from __future__ import annotations

import msgpack
import orjson
import pytest

from tidings.client.socket import Socket, close_error, socket_url, split_frame
from tidings.errors import ConnectionClosed, InvalidURL, ProtocolError
from tidings.wire.codes import CloseCode
from tidings.wire.protocol import Format

# -- URLs, frames, errors, close codes ------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws"),
        ("https://example.com/", "wss://example.com/ws"),
        ("ws://h:1/ws", "ws://h:1/ws"),
        ("wss://h/custom/path?token=x", "wss://h/custom/path?token=x"),
    ],
)
def test_socket_url(given: str, expected: str) -> None:
    assert socket_url(given) == expected


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("ftp://h/ws", "must start with ws://, wss://, http:// or https://"),
        ("127.0.0.1:8000", "must start with ws://"),
        ("ws://", "names no host"),
    ],
)
def test_socket_url_refuses_what_is_not_a_websocket_url(bad: str, reason: str) -> None:
    with pytest.raises(InvalidURL, match=reason) as caught:
        socket_url(bad)
    assert (caught.value.code, caught.value.url) == ("invalid_url", bad)
    assert isinstance(caught.value, ValueError)


def test_a_frame_holds_one_message_or_a_batch() -> None:
    one = {"channel": "a", "offset": 1}
    two = [{"id": 1, "ok": True, "result": {}}, one]
    assert split_frame(orjson.dumps(one).decode(), Format.JSON) == [one]
    assert split_frame(orjson.dumps(two).decode(), Format.JSON) == two
    assert split_frame(msgpack.packb(two), Format.MSGPACK) == two
    with pytest.raises(ProtocolError):
        split_frame(b"\x81", Format.JSON)  # JSON travels in text frames
    with pytest.raises(ProtocolError):
        split_frame("{", Format.JSON)


@pytest.mark.parametrize(
    "code",
    [
        CloseCode.PROTOCOL_ERROR,
        CloseCode.INVALID_DATA,
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.BAD_REQUEST,
        CloseCode.UNAUTHORIZED,
        CloseCode.FORBIDDEN,
        4999,
    ],
)
def test_final_close_codes(code: int) -> None:
    closed = close_error(code, "no")
    assert isinstance(closed, ConnectionClosed)
    assert (closed.close_code, closed.reason, closed.reconnect) == (code, "no", False)


@pytest.mark.parametrize(
    "code",
    [
        CloseCode.NORMAL,
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.SHUTDOWN,
        CloseCode.HEARTBEAT_TIMEOUT,
        CloseCode.SLOW_CONSUMER,
        CloseCode.RATE_LIMITED,
        4000,
        4499,
    ],
)
def test_retryable_close_codes(code: int) -> None:
    assert close_error(code).reconnect


def test_a_drop_without_a_close_frame_is_1006_and_retried() -> None:
    closed = close_error(None)
    assert (closed.close_code, closed.reconnect) == (CloseCode.ABNORMAL_CLOSURE, True)


# -- the socket before it connects ----------------------------------------------------


async def test_a_socket_is_used_inside_async_with() -> None:
    socket = Socket("ws://127.0.0.1:9/ws")
    with pytest.raises(RuntimeError, match="async with"):
        await socket.publish("c", 1)
    with pytest.raises(RuntimeError, match="async with"):
        await socket.subscribe("c")
    with pytest.raises(ValueError, match="msgpackx"):
        Socket("ws://h/ws", format="msgpackx")  # type: ignore[arg-type]
