"""Spec vectors for the event-stream parser (WHATWG "Interpreting an event stream").

Each vector is an input stream and the events a conforming parser dispatches
(type, data, last event id), plus the reconnection time it leaves. They are
fed to ``SSEDecoder`` in unit tests and, through a real HTTP response split at
random points, to ``tidings.client.listen`` in integration tests.
"""

from __future__ import annotations

from typing import NamedTuple


class Vector(NamedTuple):
    name: str
    stream: bytes
    events: list[tuple[str, str, str]]  # (type, data, id)
    retry: int | None = None


VECTORS: list[Vector] = [
    Vector("simple", b"data: hello\n\n", [("message", "hello", "")]),
    Vector("multiline", b"data: a\ndata: b\n\n", [("message", "a\nb", "")]),
    Vector("crlf", b"data: a\r\ndata: b\r\n\r\n", [("message", "a\nb", "")]),
    Vector("cr", b"data: a\rdata: b\r\r", [("message", "a\nb", "")]),
    Vector("mixed endings", b"data: 1\rdata: 2\r\ndata: 3\n\n", [("message", "1\n2\n3", "")]),
    Vector("bom", b"\xef\xbb\xbfdata: x\n\n", [("message", "x", "")]),
    Vector("second bom is a field name", b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n", []),
    Vector("one space stripped", b"data:  x\ndata:y\n\n", [("message", " x\ny", "")]),
    Vector("comments", b": c\ndata: x\n:\n\n", [("message", "x", "")]),
    Vector("unknown field", b"foo: bar\ndata: x\n\n", [("message", "x", "")]),
    Vector("field without colon", b"data\n\n", [("message", "", "")]),
    Vector("empty data line", b"data:\ndata:\n\n", [("message", "\n", "")]),
    Vector(
        "event type",
        b"event: update\ndata: 1\n\ndata: 2\n\n",
        [("update", "1", ""), ("message", "2", "")],
    ),
    Vector("empty event type is message", b"event:\ndata: x\n\n", [("message", "x", "")]),
    Vector(
        "id persists",
        b"id: 1\ndata: a\n\ndata: b\n\n",
        [("message", "a", "1"), ("message", "b", "1")],
    ),
    Vector(
        "id reset by empty id",
        b"id: 1\ndata: a\n\nid\ndata: b\n\n",
        [("message", "a", "1"), ("message", "b", "")],
    ),
    Vector("id with nul ignored", b"id: 1\n\nid: 2\x003\ndata: x\n\n", [("message", "x", "1")]),
    Vector("id-only block", b"id: 7\n\n: nothing\n\n", []),
    Vector("no dispatch without data", b"event: x\nid: 3\n\n", []),
    Vector("retry digits", b"retry: 1500\ndata: x\n\n", [("message", "x", "")], 1500),
    Vector(
        "retry not digits ignored", b"retry: 15x\nretry: -1\ndata: x\n\n", [("message", "x", "")]
    ),
    Vector("trailing event discarded", b"data: a\n\ndata: b\n", [("message", "a", "")]),
    Vector("trailing line discarded", b"data: a\n\ndata: b", [("message", "a", "")]),
    Vector("utf-8", "data: café ☃ \U0001f600\n\n".encode(), [("message", "café ☃ \U0001f600", "")]),
    Vector("invalid utf-8 replaced", b"data: a\xffb\n\n", [("message", "a\ufffdb", "")]),
    Vector("colon in value", b"data: a:b: c\n\n", [("message", "a:b: c", "")]),
    Vector(
        "many events",
        b"".join(b"id: %d\ndata: %d\n\n" % (n, n) for n in range(50)),
        [("message", str(n), str(n)) for n in range(50)],
    ),
]
