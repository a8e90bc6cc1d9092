"""Pump: pulls an async iterable into one streamed HTTP response, as fast as the client reads.

The responses of ``server/streams.py`` and ``GET /api/stream/{channel}`` are
each a producer (an async iterable: a user's async generator, a database
cursor, a subscription's batches) and an encoder that turns each item into
bytes. A :class:`Pump` runs them as an ASGI app.

Theory of operation
-------------------

The pump asks the producer for its next item only when the client can take
more, so a slow reader makes the producer wait instead of the server's
memory grow:

* **fast path**: under ``tidings serve`` the scope offers the
  ``tidings.write`` extension (``server/writer.py``). The pump attaches as
  the connection's listener and writes each item, framed as an HTTP/1.1
  chunk, straight to the transport. When the transport goes above its
  high-water mark it calls ``pause_writing``; the pump then does not call
  the producer's ``__anext__`` until ``resume_writing``. At the end the pump
  gives the connection back (``release``) and ends the response with ASGI
  ``send``, so the connection can serve its next request.
* **ASGI path**: anywhere else, one ``http.response.body`` per item. A
  server applies flow control by not returning from ``send`` (uvicorn waits
  for the transport to drain before it writes), and the pump calls
  ``__anext__`` only after ``send`` returned.

Either way, after 1 MiB written without the producer ever waiting, the
pump lets the event loop run once, so a producer that never awaits cannot
hold the loop while a fast client keeps up (more often costs throughput:
each turn of the loop is a poll of the sockets).

The producer is closed (``contextlib.aclosing``) the moment the stream ends,
whatever ends it. The client going away (``http.disconnect``, or the
transport's ``connection_lost`` on the fast path) cancels the pump wherever
it waits, inside the producer included, so the producer's ``finally`` runs
at once even if it was idle. A producer that raises ends the stream with the
``error`` frame its response defines (an SSE ``error`` event, an NDJSON error
line) and a clean end of the response; with no error frame (raw bytes, where
a clean end would pass a truncated body for a whole one) the connection is
closed without the last chunk. :meth:`Pump.abort` ends the stream at once the
same way (a slow consumer of a channel stream). A server shutting down on the
fast path (``shutdown``) ends the stream cleanly with its ``shutdown`` frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, Final, Generic, Literal, TypeVar

from starlette.types import Message, Receive, Scope, Send

from tidings.server.writer import FAST_WRITE, HTTPFastWrite

__all__ = ["YIELD_EVERY", "Pump", "chunk"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Bytes written without the producer waiting after which the pump lets the loop run.
YIELD_EVERY: Final = 1 << 20
#: Longest wait, after an abort, for the server to see the connection close.
_LOST_WAIT: Final = 5.0

Stop = Literal["disconnect", "shutdown", "abort"]


def chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk (RFC 9112 7.1); never pass it empty."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class Pump(Generic[T]):
    """An ASGI app that streams ``producer`` to one client (see the module docstring).

    Args:
        producer: The items to send; closed when the stream ends, however it ends.
        encode: Turns an item into the bytes of the body (``b""``: nothing to send).
            An exception it raises counts as the producer's.
        headers: The response headers.
        head: Bytes sent before the first item.
        error: The last bytes of a stream whose producer raised; ``None``
            closes the connection without ending the response instead.
        ping: Bytes sent every ``keepalive`` seconds (an SSE comment).
        keepalive: Seconds between ``ping`` (``None``: no pings).
        shutdown: The last bytes of a stream the server stops (fast path).

    A pump serves one request. Once it has, :attr:`reason` says why the
    stream ended: ``"end"``, ``"error"``, ``"disconnect"``, ``"shutdown"``
    or ``"abort"``.
    """

    def __init__(
        self,
        producer: AsyncIterable[T],
        encode: Callable[[T], bytes],
        *,
        headers: Iterable[tuple[bytes, bytes]],
        status: int = 200,
        head: bytes = b"",
        error: Callable[[Exception], bytes] | None = None,
        ping: bytes = b"",
        keepalive: float | None = None,
        shutdown: Callable[[], bytes] | None = None,
    ) -> None:
        if keepalive is not None and (keepalive <= 0 or not ping):
            raise ValueError("keepalive needs ping bytes and a period > 0 seconds")
        self.producer = producer
        self.encode = encode
        self.headers = list(headers)
        self.status = status
        self.head = head
        self.error = error
        self.ping = ping
        self.keepalive = keepalive
        self.shutdown_frame = shutdown
        #: Why the stream ended (None while it runs).
        self.reason: str | None = None
        self._stop: Stop | None = None
        self._task: asyncio.Task[Any] | None = None
        # Whether an interruption should cancel the task: only while it pulls and writes.
        self._pulling = False
        self._paused = False
        self._resumed: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._fast: HTTPFastWrite | None = None
        self._lock: asyncio.Lock | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- interruptions ----------------------------------------------------------

    def abort(self) -> None:
        """End the stream now without ending the response; the connection closes."""
        if self._interrupt("abort") and self._fast is not None:
            self._fast.abort()

    def _interrupt(self, reason: Stop) -> bool:
        if self._stop is not None:
            return False
        self._stop = reason
        task = self._task
        if task is not None and self._pulling and not task.done():
            task.cancel()
        return True

    # Fast-path listener (server/writer.py's WriteListener).
    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter = self._resumed
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self) -> None:
        lost = self._lost
        if lost is not None and not lost.done():
            lost.set_result(None)
        self._interrupt("disconnect")

    def shutdown(self) -> None:
        self._interrupt("shutdown")

    # -- the stream ---------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        iterator = aiter(self.producer)
        closing: contextlib.AbstractAsyncContextManager[object] = (
            contextlib.aclosing(iterator)  # type: ignore[type-var]
            if hasattr(iterator, "aclose")
            else contextlib.nullcontext()
        )
        async with closing:
            await send(
                {"type": "http.response.start", "status": self.status, "headers": self.headers}
            )
            if scope.get("method") == "HEAD":
                await send({"type": "http.response.body", "body": b""})
                return
            failure = await self._stream(iterator, scope, receive, send)
        # The producer is closed before the response ends.
        await self._finish(failure, send)

    async def _stream(
        self, iterator: AsyncIterator[T], scope: Scope, receive: Receive, send: Send
    ) -> Exception | None:
        """Pull until the producer ends or fails (returned) or the stream is interrupted."""
        task = self._task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        if self.head:
            await send({"type": "http.response.body", "body": self.head, "more_body": True})
        fast: HTTPFastWrite | None = scope.get("extensions", {}).get(FAST_WRITE)
        write = None
        if fast is not None:
            self._lost = loop.create_future()
            write = fast.attach(self)
            if write is None:
                self._interrupt("disconnect")
                return None
            self._fast = fast
            self._paused = fast.paused
        watcher = loop.create_task(self._watch(receive)) if fast is None else None
        pinger = self._start_keepalive(send)
        self._pulling = True
        try:
            if write is not None:
                return await self._pull_fast(iterator, write)
            return await self._pull_asgi(iterator, send)
        except asyncio.CancelledError:
            if self._stop is None:
                raise  # cancelled from outside: not ours to swallow
            task.uncancel()
            return None
        finally:
            self._pulling = False
            if self._timer is not None:
                self._timer.cancel()
            for helper in (watcher, pinger):
                if helper is not None:
                    helper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await helper

    async def _pull_fast(
        self, iterator: AsyncIterator[T], write: Callable[[bytes], object]
    ) -> Exception | None:
        encode = self.encode
        budget = YIELD_EVERY
        loop = asyncio.get_running_loop()
        while True:
            if self._paused:
                # Above the high-water mark: the producer waits for the client.
                self._resumed = loop.create_future()
                try:
                    await self._resumed
                finally:
                    self._resumed = None
                continue
            try:
                data = encode(await anext(iterator))
            except StopAsyncIteration:
                return None
            except Exception as exc:
                return exc
            size = len(data)
            if not size:
                continue
            # One write of the framed chunk, even for big items: a single
            # buffer goes to the socket at once, several would be queued.
            write(b"%x\r\n%b\r\n" % (size, data))
            budget -= size
            if budget <= 0:
                budget = YIELD_EVERY
                await asyncio.sleep(0)

    async def _pull_asgi(self, iterator: AsyncIterator[T], send: Send) -> Exception | None:
        encode = self.encode
        budget = YIELD_EVERY
        while True:
            try:
                data = encode(await anext(iterator))
            except StopAsyncIteration:
                return None
            except Exception as exc:
                return exc
            if not data:
                continue
            await self._send(send, {"type": "http.response.body", "body": data, "more_body": True})
            budget -= len(data)
            if budget <= 0:
                budget = YIELD_EVERY
                await asyncio.sleep(0)

    async def _send(self, send: Send, message: Message) -> None:
        lock = self._lock
        if lock is None:
            await send(message)
        else:
            async with lock:
                await send(message)

    async def _finish(self, failure: Exception | None, send: Send) -> None:
        """End the response according to why the pull stopped."""
        fast = self._fast
        if failure is not None:
            logger.error("stream producer failed", exc_info=failure)
            if self.error is None and self._stop is None:
                self._stop = "abort"
                if fast is not None:
                    fast.abort()
        stop = self._stop
        self.reason = stop or ("error" if failure is not None else "end")
        if stop == "disconnect":
            return
        if stop == "abort":
            # Under a plain ASGI server, returning without the end of the
            # response makes it close the connection: the body stays visibly
            # incomplete. On the fast path the transport is aborted already.
            if self._lost is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_LOST_WAIT):
                        await asyncio.shield(self._lost)
            return
        tail = b""
        if failure is not None and self.error is not None:
            tail = self.error(failure)
        elif stop == "shutdown" and self.shutdown_frame is not None:
            tail = self.shutdown_frame()
        if fast is not None:
            fast.release()
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    # -- around the pull --------------------------------------------------------------

    async def _watch(self, receive: Receive) -> None:
        """ASGI path: turn ``http.disconnect`` into stopping the stream."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._interrupt("disconnect")
                return

    def _start_keepalive(self, send: Send) -> asyncio.Task[None] | None:
        """Start the pings: a timer on the fast path, a task (returned) on the ASGI path."""
        period = self.keepalive
        if period is None:
            return None
        loop = asyncio.get_running_loop()
        fast = self._fast
        if fast is None:
            self._lock = asyncio.Lock()
            return loop.create_task(self._ping_asgi(send, period))
        ping = chunk(self.ping)

        def tick() -> None:
            if not self._paused:
                fast.write(ping)
            self._timer = loop.call_later(period, tick)

        self._timer = loop.call_later(period, tick)
        return None

    async def _ping_asgi(self, send: Send, period: float) -> None:
        message = {"type": "http.response.body", "body": self.ping, "more_body": True}
        while True:
            await asyncio.sleep(period)
            try:
                await self._send(send, message)
            except OSError:
                self._interrupt("disconnect")  # the server says the client is gone
                return
