"""WebSocket test helpers: frame parsing, message decoding, and a protocol peer over ``websockets``.

::

    async with websockets.connect(url, subprotocols=["tidings.v1.json"]) as ws:
        peer = Peer(ws)
        reply = await peer.request("subscribe", channel="a")  # pushes meanwhile are kept
        push = await peer.push()
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import msgpack
import orjson
from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame
from websockets.streams import StreamReader

from tests.support.env import TIMEOUT
from tidings.wire.protocol import Format


def parse_frames(data: bytes) -> list[Frame]:
    """Split bytes written by the server into frames (server frames are unmasked)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError("incomplete frame")
    return frames


def decode(payload: str | bytes, fmt: Format = Format.JSON) -> list[dict[str, Any]]:
    """The messages in one frame: a batch (array) is unwrapped."""
    value = orjson.loads(payload) if fmt is Format.JSON else msgpack.unpackb(payload)
    return value if isinstance(value, list) else [value]


def encode(document: Any, fmt: Format = Format.JSON) -> str | bytes:
    if fmt is Format.JSON:
        return orjson.dumps(document).decode()
    packed: bytes = msgpack.packb(document)
    return packed


class Peer:
    """A Tidings protocol client over a ``websockets`` connection, for tests.

    ``request`` sends a command with a fresh id and returns its reply,
    keeping every push that arrives meanwhile for ``push()``; frames holding
    several messages (batches) are unwrapped.
    """

    def __init__(self, ws: ClientConnection, fmt: Format = Format.JSON) -> None:
        self.ws = ws
        self.fmt = fmt
        self.pushes: list[dict[str, Any]] = []
        self.replies: dict[Any, dict[str, Any]] = {}
        self.frames = 0
        self.batched = 0  # frames that carried more than one message
        self._ids = itertools.count(1)

    async def _read(self) -> None:
        data = await self.ws.recv()
        messages = decode(data, self.fmt)
        self.frames += 1
        if len(messages) > 1:
            self.batched += 1
        for message in messages:
            if "id" in message:
                self.replies[message["id"]] = message
            else:
                self.pushes.append(message)

    async def send(self, document: Any) -> None:
        await self.ws.send(encode(document, self.fmt))

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        await self.send({"id": request_id, "op": op, **fields})
        return await self.reply(request_id)

    async def reply(self, request_id: Any) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            while request_id not in self.replies:
                await self._read()
        return self.replies.pop(request_id)

    async def result(self, op: str, **fields: Any) -> Any:
        reply = await self.request(op, **fields)
        assert reply.get("ok") is True, reply
        return reply["result"]

    async def push(self, *, timeout: float = TIMEOUT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while not self.pushes:
                await self._read()
        return self.pushes.pop(0)

    async def pushes_of(self, count: int, *, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        return [await self.push(timeout=timeout) for _ in range(count)]
