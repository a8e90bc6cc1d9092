"""A small SSE test reader over httpx: raw bytes and decoded events, with timeouts."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from tests.support.env import TIMEOUT
from tidings.wire.sse import SSEDecoder, SSEEvent


class SSEReader:
    """Reads one SSE response: ``await reader.events(n)``, ``reader.raw``."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.decoder = SSEDecoder()
        self.raw = bytearray()
        #: Bytes as they came off the wire (before any content decoding).
        self.wire_bytes = 0
        self._pending: list[SSEEvent] = []
        self._chunks = response.aiter_raw()

    def _decode(self, chunk: bytes) -> bytes:
        return chunk

    async def _read_more(self) -> None:
        chunk = await anext(self._chunks)
        self.wire_bytes += len(chunk)
        chunk = self._decode(chunk)
        self.raw += chunk
        self._pending += self.decoder.feed(chunk)

    async def events(self, count: int, *, timeout: float = TIMEOUT) -> list[SSEEvent]:
        """Return the next ``count`` events; fail if they do not come in time."""
        async with asyncio.timeout(timeout):
            while len(self._pending) < count:
                await self._read_more()
        taken, self._pending = self._pending[:count], self._pending[count:]
        return taken

    async def until(self, marker: bytes, *, timeout: float = TIMEOUT) -> None:
        """Read until ``marker`` appears in the raw bytes."""
        async with asyncio.timeout(timeout):
            while marker not in self.raw:
                await self._read_more()

    async def until_end(self, *, timeout: float = TIMEOUT) -> bytes:
        """Read to the end of the response (its last chunk); fail if it does not end
        in time; return all it read."""
        async with asyncio.timeout(timeout):
            async for chunk in self._chunks:
                self.raw += chunk
                self._pending += self.decoder.feed(chunk)
        return bytes(self.raw)

    async def aclose(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]

    @property
    def last_event_id(self) -> str:
        return self.decoder.last_event_id


class GzipSSEReader(SSEReader):
    """An SSE reader of a gzip-coded response, decompressing each piece as it arrives
    (``zlib.decompressobj(16 + MAX_WBITS)``): an event is read only if everything
    it needs was flushed to the wire."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response)
        self.decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def _decode(self, chunk: bytes) -> bytes:
        return self.decompressor.decompress(chunk)

    @property
    def ended(self) -> bool:
        """Whether the gzip member is complete (its trailer was read and checked)."""
        return self.decompressor.eof


@asynccontextmanager
async def open_sse(
    client: httpx.AsyncClient, url: str, *, headers: dict[str, str] | None = None
) -> AsyncIterator[SSEReader]:
    """Open an SSE stream; the response must be 200 text/event-stream."""
    async with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200, (await response.aread())[:500]
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        reader = SSEReader(response)
        try:
            yield reader
        finally:
            await reader.aclose()
