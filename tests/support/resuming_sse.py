"""ResumingSSE: a light SSE client over a raw socket that resumes and records everything.

::

    crowd = Crowd()
    tally = crowd.tally("sse-0", ["a", "b"])
    async with running(ResumingSSE(proxy_url, tally).run()):
        await crowd.caught_up({"a": 10, "b": 10}, timeout=TIMEOUT, what="the events")

It behaves as a browser's ``EventSource``: ``GET /sse?channel=…`` over
HTTP/1.1, and when the stream ends (or the connection breaks) it waits what
the stream's last ``retry:`` asked and connects again with the last ``id:``
it received as ``Last-Event-ID``. It keeps no filter: every event the server
sends is recorded in its :class:`~tests.support.resuming.Tally` as it
comes, so a duplicate, a gap or a ``reset`` shows. One coroutine and one
socket per client, so a test process can run hundreds of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlencode, urlsplit

import orjson

from tests.support.env import TIMEOUT
from tests.support.resuming import Tally
from tidings.wire.cursor import decode_cursor
from tidings.wire.sse import SSEDecoder, SSEEvent

__all__ = ["ResumingSSE"]


class ResumingSSE:
    def __init__(self, url: str, tally: Tally) -> None:
        address = urlsplit(url)
        assert address.hostname is not None, url
        assert address.port is not None, url
        self.host, self.port = address.hostname, address.port
        self.target = "/sse?" + urlencode([("channel", channel) for channel in tally.channels])
        self.tally = tally
        #: The cursor to resume from: the last ``id:`` received (empty: start live).
        self.last_event_id = ""
        #: The reconnection delay, in seconds: the last ``retry:`` received (50 ms before one).
        self.retry = 0.05
        #: Streams that ended cleanly (their last chunk received).
        self.ended = 0

    async def run(self) -> None:
        """Connect, and connect again whenever the stream ends, until cancelled."""
        while True:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
                async with asyncio.timeout(TIMEOUT):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    await self._session(reader, writer)
                finally:
                    writer.transport.abort()
                    self.tally.set_connected(False)
            await asyncio.sleep(self.retry)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = f"GET {self.target} HTTP/1.1\r\nHost: {self.host}\r\nAccept: text/event-stream\r\n"
        if self.last_event_id:
            head += f"Last-Event-ID: {self.last_event_id}\r\n"
        writer.write(f"{head}\r\n".encode())
        async with asyncio.timeout(TIMEOUT):
            answer = await reader.readuntil(b"\r\n\r\n")
        if not answer.startswith(b"HTTP/1.1 200") or b"chunked" not in answer.lower():
            self.tally.problem(f"refused: {answer[:300]!r}")
            return
        decoder = SSEDecoder(last_event_id=self.last_event_id)
        while chunk := await self._chunk(reader):
            for event in decoder.feed(chunk):
                self._record(event)
            self.last_event_id = decoder.last_event_id
            if decoder.retry is not None:
                self.retry = decoder.retry / 1000
            if not self.tally.connected:  # the stream's first block: subscribed
                self.tally.set_connected(True)
        self.ended += 1

    @staticmethod
    async def _chunk(reader: asyncio.StreamReader) -> bytes:
        """The next chunk of a chunked body; ``b""`` for the last one."""
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        return chunk[:-2]

    def _record(self, event: SSEEvent) -> None:
        if event.event != "message":
            self.tally.problem(f"unexpected {event.event} event: {event.data[:200]}")
            return
        # The first entry of the cursor names the event's channel and offset.
        channel, (_, offset) = next(iter(decode_cursor(event.id).items()))
        if channel not in self.tally.events:
            self.tally.problem(f"event of another channel: {event}")
            return
        self.tally.record(channel, offset, orjson.loads(event.data))
