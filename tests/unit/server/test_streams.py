"""server/streams.py: how items become SSE events and NDJSON lines, and bad arguments."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tidings.errors import PermissionDenied
from tidings.hub import Event, Reset
from tidings.server import NDJSONResponse, ServerSentEvent, SSEResponse, StreamResponse
from tidings.server.streams import EventStream, encode_ndjson, encode_sse, error_object
from tidings.types import Position
from tidings.wire.sse import SSEDecoder


@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("plain", b"data: plain\n\n"),
        ("two\r\nlines", b"data: two\ndata: lines\n\n"),
        ("caf\u00e9".encode(), "data: caf\u00e9\n\n".encode()),
        ({"a": [1, None]}, b'data: {"a":[1,null]}\n\n'),
        (Point(1, 2), b'data: {"x":1,"y":2}\n\n'),
        (7, b"data: 7\n\n"),
        (
            ServerSentEvent("hi", event="note", id="3", retry=1.5),
            b"retry: 1500\nid: 3\nevent: note\ndata: hi\n\n",
        ),
        (ServerSentEvent({"n": 1}), b'data: {"n":1}\n\n'),
        (ServerSentEvent(comment="just a comment"), b": just a comment\n\n"),
        (
            Event("a", "ep", 4, b'{"k":1}', event="tick"),
            b'id: a:ep:4\nevent: tick\ndata: {"k":1}\n\n',
        ),
    ],
)
def test_encode_sse(item: Any, expected: bytes) -> None:
    assert encode_sse(item) == expected


def test_a_reset_is_framed_as_on_the_sse_route() -> None:
    (event,) = SSEDecoder().feed(encode_sse(Reset("a", Position("ep", 2), "epoch")))
    assert event.event == "reset"
    assert orjson.loads(event.data) == {
        "channel": "a",
        "epoch": "ep",
        "offset": 2,
        "reason": "epoch",
    }


@pytest.mark.parametrize(
    "item",
    [
        b"\xff not utf-8",
        ServerSentEvent("x", id="bad\nid"),
        ServerSentEvent("x", event="bad\revent"),
        object(),
    ],
)
def test_items_that_cannot_be_events_raise(item: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        encode_sse(item)


def test_encode_ndjson() -> None:
    assert encode_ndjson({"a": "b\nc"}) == b'{"a":"b\\nc"}\n'
    with pytest.raises(TypeError):
        encode_ndjson({"x": object()})


def test_error_object_hides_foreign_errors() -> None:
    assert error_object(RuntimeError("password=hunter2")) == {
        "code": "internal",
        "message": "the stream failed",
    }
    denied = PermissionDenied("orders", "subscribe")
    assert error_object(denied) == {"code": "permission_denied", "message": str(denied)}


async def nothing() -> AsyncIterator[Any]:
    return
    yield


def test_responses_refuse_what_they_cannot_stream() -> None:
    with pytest.raises(TypeError, match="async iterable"):
        NDJSONResponse([1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async iterable"):
        StreamResponse(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        SSEResponse(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="channels go with a hub"):
        SSEResponse(nothing(), "channel")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="keepalive"):
        EventStream(nothing(), keepalive=0)
    with pytest.raises(ValueError, match="retry"):
        EventStream(nothing(), retry=-1)


def test_response_headers() -> None:
    response = NDJSONResponse(nothing(), headers={"X-Trace": "t", "Cache-Control": "private"})
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["cache-control"] == "private"  # yours win
    assert response.headers["x-trace"] == "t"
    raw = StreamResponse(nothing(), media_type="text/csv")
    assert raw.media_type == "text/csv"
    assert raw.headers["content-type"] == "text/csv"
