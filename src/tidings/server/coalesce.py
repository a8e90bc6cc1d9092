"""CoalescingWriter: one transport call per connection per burst of writes.

A fast-path connection writes through a :class:`CoalescingWriter` instead of
calling ``transport.write`` for every frame. A write appends the (shared,
pre-encoded) bytes to the connection's pending list; one flusher per event
loop then hands each connection's pending frames to the transport in one
``writelines`` call, which uvloop turns into one ``writev``.

Theory of operation
-------------------

The flusher runs two loop turns after the first write it sees: the first turn
lets every task that was ready run once more, so a publisher that yields
between publishes (``await asyncio.sleep(0)``, or many independent request
handlers) gets its next publish into the same flush. Under load this halves
the syscalls per delivery or better; when idle it adds two loop turns,
microseconds, to an event's latency. Order is kept because every write to a
connection (events, replies, pings, the last chunk) goes through its writer.
A writer holding more than ``FLUSH_AT`` bytes flushes at once, so a publisher
that never yields cannot grow memory: past that, the transport's own flow
control and the subscription's bounded outbox take over as before.

A writer may have an encoder (a content coding, ``server/compression.py``):
then each flush joins what is pending and writes it through the encoder, so
a burst is compressed in one call and flushed once, and every flush leaves
the client able to decode everything written so far.
"""

from __future__ import annotations

import asyncio
import weakref

from tidings.server.writer import BodyEncoder

__all__ = ["FLUSH_AT", "CoalescingWriter"]

#: Bytes a writer may hold before it flushes without waiting for the turn.
FLUSH_AT = 64 * 1024


class _Flusher:
    """Flushes every writer with something pending, two loop turns after the first write."""

    __slots__ = ("__weakref__", "_armed", "_dirty", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[CoalescingWriter] = []
        self._armed = False

    def add(self, writer: CoalescingWriter) -> None:
        self._dirty.append(writer)
        if not self._armed:
            self._armed = True
            self._loop.call_soon(self._arm)

    def _arm(self) -> None:
        # One more turn: tasks that were ready when the first write happened
        # get to run (and to write) before the flush.
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._armed = False
        dirty, self._dirty = self._dirty, []
        for writer in dirty:
            writer.flush()


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)


def _flusher_of(loop: asyncio.AbstractEventLoop) -> _Flusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _Flusher(loop)
    return flusher


class CoalescingWriter:
    """Buffers a connection's writes until its loop's flusher runs (see the module docstring)."""

    __slots__ = ("_encoder", "_flusher", "_pending", "_size", "_transport")

    def __init__(
        self, transport: asyncio.WriteTransport, encoder: BodyEncoder | None = None
    ) -> None:
        self._transport = transport
        self._encoder = encoder
        self._flusher = _flusher_of(asyncio.get_running_loop())
        # One list per connection, reused: a new list per flush would be a
        # container allocation per connection per burst, and work for the GC.
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        pending = self._pending
        if not pending:
            self._size = 0
            self._flusher.add(self)
        pending.append(data)
        self._size += len(data)
        if self._size > FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Hand everything pending to the transport now."""
        pending = self._pending
        if not pending:
            return
        transport = self._transport
        if not transport.is_closing():
            if self._encoder is not None:
                transport.write(self._encoder.encode_batch(b"".join(pending)))
            elif len(pending) == 1:
                transport.write(pending[0])
            else:
                transport.writelines(pending)  # buffers each item; keeps no reference to the list
        pending.clear()

    def finish(self) -> None:
        """Flush for the last time: through the encoder's ``encode_last`` when there is one."""
        encoder = self._encoder
        if encoder is None:
            self.flush()
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(encoder.encode_last(data))

    def discard(self) -> None:
        """Forget what is pending (the peer left, or must not get more data)."""
        self._pending.clear()

    @property
    def pending_bytes(self) -> int:
        return self._size if self._pending else 0
