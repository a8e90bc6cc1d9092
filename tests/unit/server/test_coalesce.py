"""server/coalesce.py: writes within a burst reach the transport in one call, in order."""

from __future__ import annotations

import asyncio

from tidings.server.coalesce import FLUSH_AT, CoalescingWriter


class Transport:
    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append([data])

    def writelines(self, lines: list[bytes]) -> None:
        self.calls.append(list(lines))

    def is_closing(self) -> bool:
        return self.closing


async def turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_writes_between_two_turns_go_out_together_in_order() -> None:
    transport = Transport()
    writer = CoalescingWriter(transport)  # type: ignore[arg-type]
    other = Transport()
    second = CoalescingWriter(other)  # type: ignore[arg-type]
    writer.write(b"1")
    second.write(b"a")
    await asyncio.sleep(0)  # a publisher that yields between publishes
    writer.write(b"2")
    assert transport.calls == []
    await turns(3)
    assert transport.calls == [[b"1", b"2"]]
    assert other.calls == [[b"a"]]
    writer.write(b"3")
    await turns(3)
    assert transport.calls == [[b"1", b"2"], [b"3"]]


async def test_a_large_backlog_flushes_at_once() -> None:
    transport = Transport()
    writer = CoalescingWriter(transport)  # type: ignore[arg-type]
    chunk = b"x" * 1024
    for _ in range(FLUSH_AT // len(chunk) + 1):
        writer.write(chunk)
    assert len(transport.calls) == 1  # flushed without waiting for the turn
    await turns(3)


async def test_flush_discard_and_closing_transport() -> None:
    transport = Transport()
    writer = CoalescingWriter(transport)  # type: ignore[arg-type]
    writer.write(b"now")
    writer.flush()
    assert transport.calls == [[b"now"]]
    writer.write(b"never")
    writer.discard()
    await turns(3)
    assert transport.calls == [[b"now"]]
    transport.closing = True
    writer.write(b"too late")
    await turns(3)
    assert transport.calls == [[b"now"]]
    assert writer.pending_bytes == 0


class Upper:
    """A BodyEncoder that shows what it was given: each batch in brackets."""

    def encode_batch(self, data: bytes) -> bytes:
        return b"[" + data.upper() + b"]"

    def encode_last(self, data: bytes) -> bytes:
        return b"[" + data.upper() + b"]END"


async def test_an_encoder_gets_each_burst_joined_and_the_last_one_ends_the_body() -> None:
    transport = Transport()
    writer = CoalescingWriter(transport, Upper())  # type: ignore[arg-type]
    writer.write(b"a")
    writer.write(b"b")
    await turns(3)
    assert transport.calls == [[b"[AB]"]]
    writer.write(b"c")
    writer.finish()
    assert transport.calls == [[b"[AB]"], [b"[C]END"]]
    assert writer.pending_bytes == 0


async def test_finish_without_an_encoder_is_a_flush() -> None:
    transport = Transport()
    writer = CoalescingWriter(transport)  # type: ignore[arg-type]
    writer.write(b"x")
    writer.finish()
    assert transport.calls == [[b"x"]]
    transport.closing = True
    encoded = CoalescingWriter(transport, Upper())  # type: ignore[arg-type]
    encoded.write(b"y")
    encoded.finish()
    assert transport.calls == [[b"x"]]  # a closing transport gets nothing
