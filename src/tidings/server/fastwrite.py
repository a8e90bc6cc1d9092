"""uvicorn protocol classes that offer the ``tidings.write`` scope extension.

``tidings serve`` passes these to ``uvicorn.Config(http=…)``. They behave
exactly like uvicorn's own classes and add one thing: each request's scope
carries an object (``server/writer.py``) through which a streaming response
writes pre-encoded bytes straight to the transport and hears about flow
control, connection loss and shutdown, skipping the per-message cost of ASGI
``send``. This is the one module that knows uvicorn's internals; the pinned
uvicorn range in ``pyproject.toml`` is what it was written and tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tidings.server.writer import FAST_WRITE, WriteListener

__all__ = ["FastHttpToolsProtocol"]


class _HTTPFastWrite:
    """The extension object for one HTTP request (see ``server/writer.py``)."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: FastHttpToolsProtocol) -> None:
        self._protocol = protocol

    @property
    def paused(self) -> bool:
        return bool(self._protocol.flow.write_paused)

    def attach(self, listener: WriteListener) -> Callable[[bytes], object] | None:
        protocol = self._protocol
        transport = protocol.transport
        if transport is None or transport.is_closing() or protocol.cycle.disconnected:
            return None
        protocol.fast_listener = listener
        return transport.write

    def detach(self) -> None:
        self._protocol.fast_listener = None

    def write(self, data: bytes) -> None:
        self._protocol.transport.write(data)

    def abort(self) -> None:
        self._protocol.transport.abort()

    def close(self) -> None:
        self._protocol.transport.close()

    def hand_off(self) -> None:
        protocol = self._protocol
        protocol.handed_off = True
        # uvicorn then neither logs nor closes when the app returns, and the
        # request's scope and body buffers can go.
        protocol.cycle.response_complete = True
        protocol.cycle.scope = None  # type: ignore[assignment]
        protocol.scope = None  # type: ignore[assignment]
        protocol.headers = None  # type: ignore[assignment]


class FastHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the ``tidings.write`` extension."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_listener: WriteListener | None = None
        self.handed_off = False

    def data_received(self, data: bytes) -> None:
        if self.handed_off:
            return  # a handed-off stream reads nothing more; EOF still ends it
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        scope["extensions"] = {FAST_WRITE: _HTTPFastWrite(self)}

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.fast_listener is not None:
            self.fast_listener.pause_writing()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.fast_listener is not None:
            self.fast_listener.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        listener, self.fast_listener = self.fast_listener, None
        super().connection_lost(exc)
        if listener is not None:
            listener.connection_lost()

    def shutdown(self) -> None:
        listener = self.fast_listener
        if listener is not None:
            listener.shutdown()
        super().shutdown()
