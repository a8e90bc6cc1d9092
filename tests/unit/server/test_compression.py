"""server/compression.py: Accept-Encoding, gzip flushed per write, the ASGI send wrapper."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from starlette.types import Message

from tidings.server.compression import (
    LAST_CHUNK,
    GzipSend,
    GzipStream,
    accepts_gzip,
)


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (b"gzip", True),
        (b"GZip", True),
        (b"gzip, deflate, br, zstd", True),
        (b"deflate;q=1, gzip;q=0.5", True),
        (b"x-gzip", True),
        (b"*", True),
        (b"br, *;q=0.1", True),
        (b"gzip;q=0", False),
        (b"gzip;q=0.000", False),
        (b"*, gzip;q=0", False),  # named beats the wildcard
        (b"*;q=0", False),
        (b"identity", False),
        (b"br, deflate", False),
        (b"", False),
        (b"gzip;q=nonsense", False),
        (b"gzip ; Q=0.8", True),
    ],
)
def test_accept_encoding(value: bytes, accepted: bool) -> None:
    assert accepts_gzip([(b"accept-encoding", value)]) is accepted


def test_no_accept_encoding_and_headers_split_over_lines() -> None:
    assert accepts_gzip([]) is False
    assert accepts_gzip([(b"accept", b"gzip")]) is False
    assert accepts_gzip([(b"accept-encoding", b"br"), (b"Accept-Encoding", b"gzip")]) is True


def test_every_piece_decodes_at_once_and_the_end_is_a_whole_member() -> None:
    stream = GzipStream()
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    events = [b'data: {"n": %d, "text": "hello hello hello"}\n\n' % n for n in range(50)]
    wire = 0
    for event in events:
        piece = stream.compress(event)
        wire += len(piece)
        assert decoder.decompress(piece) == event  # nothing held back
    assert wire < sum(map(len, events)) / 2  # the dictionary carries over
    assert decoder.decompress(stream.finish(b": bye\n\n")) == b": bye\n\n"
    assert decoder.eof
    assert decoder.unused_data == b""


def dechunk(body: bytes) -> tuple[list[bytes], bytes]:
    """The chunks of an HTTP/1.1 chunked body, and what follows the last chunk."""
    chunks = []
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return chunks, rest
        chunks.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        body = rest[size + 2 :]


def test_fast_path_encoder_frames_each_batch_in_one_chunk() -> None:
    stream = GzipStream()
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    batch = stream.encode_batch(b"data: 1\n\ndata: 2\n\n")
    (chunk,), rest = dechunk(batch + LAST_CHUNK)
    assert rest == b"\r\n"
    assert decoder.decompress(chunk) == b"data: 1\n\ndata: 2\n\n"
    last = stream.encode_last(b"retry: 100\n\n")
    assert last.endswith(LAST_CHUNK)
    (chunk,), rest = dechunk(last)
    assert decoder.decompress(chunk) == b"retry: 100\n\n"
    assert decoder.eof


def test_an_empty_batch_after_a_flush_writes_no_empty_chunk() -> None:
    stream = GzipStream()
    stream.encode_batch(b"x")
    out = stream.encode_batch(b"")
    # Never "0\r\n\r\n": that would end the response.
    assert not out.startswith(b"0\r\n")


async def test_gzip_send_codes_the_response_and_flushes_every_body() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    coded = GzipSend(send)
    headers = [(b"content-type", b"text/event-stream"), (b"content-length", b"12")]
    await coded({"type": "http.response.start", "status": 200, "headers": headers})
    start: dict[str, Any] = sent[0]
    assert start["headers"] == [
        (b"content-type", b"text/event-stream"),
        (b"content-encoding", b"gzip"),
    ]
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    await coded({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    assert decoder.decompress(sent[-1]["body"]) == b"data: 1\n\n"
    assert sent[-1]["more_body"] is True
    await coded({"type": "http.response.body", "body": b"data: 2\n\n"})
    assert decoder.decompress(sent[-1]["body"]) == b"data: 2\n\n"
    assert decoder.eof
