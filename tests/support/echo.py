"""An echo peer on Tidings' WebSocket stack, for the Autobahn conformance run.

:func:`echo_app` mounts :class:`WebSocketEcho` at ``/ws/echo``. Under the
fast-write protocol classes (``tidings serve``'s) the echo takes the same
road as ``/ws``: it attaches to the ``tidings.write`` extension, hands the
connection off, and writes each message back as a frame straight to the
transport, pausing reading while the transport is paused. Elsewhere it uses
plain ASGI ``send``. A message over ``max_frame_bytes`` gets the close
``/ws`` gives it (1009).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send

from tidings.errors import FrameTooLarge
from tidings.server.writer import FAST_WRITE, WebSocketFastWrite
from tidings.wire import protocol
from tidings.wire.codes import CloseCode

__all__ = ["WebSocketEcho", "echo_app"]


class WebSocketEcho:
    """Every message comes back as it came; ``handed_off`` counts fast-path connections."""

    def __init__(self, *, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.handed_off = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        fast: WebSocketFastWrite | None = scope.get("extensions", {}).get(FAST_WRITE)
        if fast is not None:
            if _FastEcho(fast, self.max_frame_bytes).start():
                self.handed_off += 1
            return
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            text = message.get("text")
            data: str | bytes = text if text is not None else (message.get("bytes") or b"")
            try:
                protocol.check_size(data, self.max_frame_bytes)
            except FrameTooLarge as exc:
                await send(
                    {
                        "type": "websocket.close",
                        "code": CloseCode.MESSAGE_TOO_BIG,
                        "reason": str(exc),
                    }
                )
                return
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": data})


class _FastEcho:
    """One handed-off connection: the protocol's receiver and its write listener."""

    __slots__ = ("fast", "max_frame_bytes")

    def __init__(self, fast: WebSocketFastWrite, max_frame_bytes: int) -> None:
        self.fast = fast
        self.max_frame_bytes = max_frame_bytes

    def start(self) -> bool:
        """Attach and hand the connection off; False if the peer already left."""
        if self.fast.attach(self) is None:
            return False
        self.fast.hand_off(self.message_received)
        if self.fast.paused:
            self.fast.pause_reading()
        return True

    def message_received(self, data: str | bytes) -> None:
        try:
            protocol.check_size(data, self.max_frame_bytes)
        except FrameTooLarge as exc:
            self.fast.close(CloseCode.MESSAGE_TOO_BIG, str(exc))
            return
        if isinstance(data, str):
            self.fast.write(protocol.frame(data.encode()))
        else:
            self.fast.write(protocol.frame(data, binary=True))

    # -- WriteListener: a peer that does not read stops being read -----------------

    def pause_writing(self) -> None:
        self.fast.pause_reading()

    def resume_writing(self) -> None:
        self.fast.resume_reading()

    def connection_lost(self) -> None:
        pass

    def shutdown(self) -> None:
        pass  # the protocol sends its own close (1012)


def echo_app(echo: WebSocketEcho) -> Starlette:
    """An app with nothing but the echo route, ``/ws/echo``."""
    return Starlette(routes=[WebSocketRoute("/ws/echo", echo)])
