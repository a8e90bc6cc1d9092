"""gzip for streamed responses, flushed after every write so no event waits in the compressor.

A streamed response (SSE, the LLM relay's streams) is compressed when the
``sse_compression`` setting is ``"gzip"`` and the request's
``Accept-Encoding`` accepts gzip (:func:`accepts_gzip`). Each connection
then has a :class:`GzipStream`, its own deflate state, and every batch of
events written to it ends with a ``Z_SYNC_FLUSH``: the bytes sent so far
decode to every event sent so far, so compression never holds an event
back. The deflate dictionary is kept from one batch to the next, which is
where the saving on small, similar events comes from.

Theory of operation
-------------------

* **ASGI path**: :class:`GzipSend` wraps the ASGI ``send`` of one response.
  It adds ``Content-Encoding: gzip`` to the response start, and compresses
  and flushes every ``http.response.body``; the last one (``more_body``
  false) ends the gzip member.
* **fast path** (``tidings serve``, ``server/fastwrite.py``): the connection
  writes its events uncompressed and attaches the :class:`GzipStream` as the
  writer's encoder (``server/writer.py``, ``BodyEncoder``): the coalescing
  writer compresses each burst of writes in one call and puts it in one
  HTTP/1.1 chunk (:meth:`GzipStream.encode_batch`), so shared frames stay
  shared up to the compressor, and a burst costs one flush, not one per event.

Memory: a compressor with a 4 KiB window (``wbits`` 12) and ``memLevel`` 5,
the sizes websockets uses for permessage-deflate, holds about 38 KiB per
connection (``docs/operations.md``, "Compression").
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from starlette.types import Message, Send

__all__ = [
    "CONTENT_ENCODING",
    "GZIP_LEVEL",
    "GZIP_MEM_LEVEL",
    "GZIP_WBITS",
    "LAST_CHUNK",
    "SSE_COMPRESSION",
    "VARY",
    "GzipSend",
    "GzipStream",
    "accepts_gzip",
]

#: Values of the ``sse_compression`` setting.
SSE_COMPRESSION = ("off", "gzip")
#: Compression level: zlib's default, the best ratio per CPU for small text events.
GZIP_LEVEL = 6
#: Window of 2**12 bytes: several events of history for the dictionary, little memory.
GZIP_WBITS = 12
#: zlib's internal state size (1-9); 5 with ``wbits`` 12 keeps a stream near 38 KiB.
GZIP_MEM_LEVEL = 5
#: The header of every response that may be compressed, whether or not it is.
VARY = (b"vary", b"accept-encoding")
CONTENT_ENCODING = (b"content-encoding", b"gzip")
#: The last chunk of an HTTP/1.1 chunked body.
LAST_CHUNK = b"0\r\n\r\n"


def _quality(parameters: Iterable[str]) -> float:
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 0.0
    return 1.0


def accepts_gzip(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether ``Accept-Encoding`` (RFC 9110 12.5.3) accepts ``gzip`` (or ``x-gzip``, or ``*``).

    ``gzip`` named with ``q=0`` refuses it even when ``*`` accepts everything
    else; an unreadable ``q`` counts as 0.
    """
    named: float | None = None
    wildcard: float | None = None
    for key, value in headers:
        if key.lower() != b"accept-encoding":
            continue
        for entry in value.decode("latin-1").split(","):
            coding, *parameters = entry.split(";")
            coding = coding.strip().lower()
            if coding in ("gzip", "x-gzip"):
                named = max(named or 0.0, _quality(parameters))
            elif coding == "*":
                wildcard = _quality(parameters)
    quality = named if named is not None else wildcard
    return quality is not None and quality > 0


class GzipStream:
    """One response's gzip member, written in pieces that each decode at once."""

    __slots__ = ("_compressor",)

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(
            GZIP_LEVEL, zlib.DEFLATED, 16 + GZIP_WBITS, GZIP_MEM_LEVEL
        )

    def compress(self, data: bytes) -> bytes:
        """``data`` compressed and sync-flushed: with what came before, it decodes whole."""
        compressor = self._compressor
        return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes = b"") -> bytes:
        """``data`` compressed, then the end of the gzip member (its checksum and size)."""
        compressor = self._compressor
        return compressor.compress(data) + compressor.flush(zlib.Z_FINISH)

    # The fast path's BodyEncoder (server/writer.py): HTTP/1.1 chunks.
    def encode_batch(self, data: bytes) -> bytes:
        """:meth:`compress` in one HTTP/1.1 chunk (nothing for nothing: an empty
        chunk would end the body)."""
        out = self.compress(data)
        return b"%x\r\n%b\r\n" % (len(out), out) if out else b""

    def encode_last(self, data: bytes) -> bytes:
        """:meth:`finish` in one chunk, then the last chunk of the body."""
        out = self.finish(data)
        return b"%x\r\n%b\r\n%b" % (len(out), out, LAST_CHUNK)


class GzipSend:
    """The ASGI ``send`` of one gzip-coded streamed response (see the module docstring).

    Every ``http.response.body`` is compressed and flushed on its own; the
    one with ``more_body`` false ends the member. A ``Content-Length`` of the
    response start is dropped (the coded length is not known in advance).
    """

    __slots__ = ("_send", "stream")

    def __init__(self, send: Send, stream: GzipStream | None = None) -> None:
        self._send = send
        self.stream = stream if stream is not None else GzipStream()

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = [
                (key, value)
                for key, value in message.get("headers", ())
                if key.lower() not in (b"content-length", b"content-encoding")
            ]
            message = {**message, "headers": [*headers, CONTENT_ENCODING]}
        elif kind == "http.response.body":
            body = message.get("body", b"")
            if message.get("more_body", False):
                body = self.stream.compress(body)
            else:
                body = self.stream.finish(body)
            message = {**message, "body": body}
        await self._send(message)
