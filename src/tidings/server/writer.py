"""The ``tidings.write`` ASGI scope extension: its name and interface.

A server that can write pre-encoded bytes straight to a connection's
transport puts an object with this interface in
``scope["extensions"]["tidings.write"]``. ``tidings serve`` does so through
the protocol classes in ``server/fastwrite.py``; under any other server the
extension is absent and the transports use plain ASGI ``send``.

Bytes written must already be framed for the connection: an HTTP/1.1 chunk
for a streaming response (after ``http.response.start`` went through ASGI),
a whole WebSocket frame for a WebSocket (after ``websocket.accept``). A
response with a content coding (gzip, ``server/compression.py``) attaches a
:class:`BodyEncoder` instead: it writes the body unframed, and the encoder
codes and frames each batch of writes on its way to the transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = [
    "FAST_WRITE",
    "BodyEncoder",
    "FastWrite",
    "HTTPFastWrite",
    "WebSocketFastWrite",
    "WriteListener",
]

FAST_WRITE = "tidings.write"


class WriteListener(Protocol):
    """What the transport tells the code that writes to it."""

    def pause_writing(self) -> None:
        """The transport buffer is above its high-water mark: stop writing."""

    def resume_writing(self) -> None:
        """The transport buffer drained: writing may resume."""

    def connection_lost(self) -> None:
        """The peer went away; nothing written from now on is sent."""

    def shutdown(self) -> None:
        """The server is shutting down: finish the response or close the socket."""


class BodyEncoder(Protocol):
    """Codes and frames an HTTP response body on the fast path, one batch of writes at a time."""

    def encode_batch(self, data: bytes) -> bytes:
        """``data`` (every write of one batch, joined) coded and framed in HTTP/1.1
        chunks, decodable by the client at once."""

    def encode_last(self, data: bytes) -> bytes:
        """The last batch, the end of the coding and the last chunk of the body."""


class FastWrite(Protocol):
    """Direct access to one connection's transport."""

    @property
    def paused(self) -> bool:
        """Whether the transport is above its high-water mark now."""

    def attach(self, listener: WriteListener) -> Callable[[bytes], object] | None:
        """Register ``listener`` and return the transport's ``write``; ``None`` if closed."""

    def detach(self) -> None:
        """Stop notifying the listener."""

    def write(self, data: bytes) -> None:
        """Write framed bytes now."""

    def abort(self) -> None:
        """Close the connection at once, dropping anything buffered."""


class HTTPFastWrite(FastWrite, Protocol):
    """The extension on an HTTP request: raw chunks, and a response that outlives its call."""

    def attach(
        self, listener: WriteListener, encoder: BodyEncoder | None = None
    ) -> Callable[[bytes], object] | None:
        """Register ``listener`` and return the connection's ``write``; ``None`` if closed.

        With ``encoder``, what is written is the body itself, unframed: each
        batch of writes goes through ``encoder.encode_batch`` to the transport.
        """

    def end(self) -> None:
        """Close the connection once what is buffered has been sent.

        With an encoder, what is buffered goes through ``encoder.encode_last``,
        which ends the body; without one, the caller has written the last chunk.
        """

    def release(self) -> None:
        """Stop writing through the extension; the response goes on through ASGI ``send``.

        What is buffered goes to the transport first, the listener hears
        nothing more, and the connection reads requests again, so the app can
        end the response with ``http.response.body`` and the connection can
        serve the next one. Not after :meth:`hand_off`.
        """

    def hand_off(self) -> None:
        """The response goes on after the ASGI call returns.

        From now on the protocol does not treat the app's return as the end
        of the response: the connection lives until the peer leaves, the
        listener's owner closes it, or the server shuts down (the listener is
        told). Data the peer sends is discarded. This frees the task and the
        coroutines that would otherwise sit idle for every open stream.
        """


class WebSocketFastWrite(FastWrite, Protocol):
    """The extension on a WebSocket connection: frames, plus the closing handshake."""

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake now, without waiting for ASGI ``send``.

        Sends the close frame after what is already buffered, tells the ASGI
        app ``websocket.disconnect``, and drops the connection if the peer does
        not complete the handshake in time. Does nothing once closing.
        """

    def hand_off(self, receiver: Callable[[str | bytes], object]) -> None:
        """Messages from the peer go to ``receiver`` from now on; the app may return.

        Messages already received and not yet read through ASGI ``receive``
        are given to ``receiver`` first, in order. The connection then lives
        without its ASGI call: the listener hears when it ends, and ``close``
        ends it from this side. This frees the task, the coroutines and the
        receive queue that would otherwise sit idle for every open socket.
        """

    def pause_reading(self) -> None:
        """Stop reading from the peer (backpressure for a handed-off receiver)."""

    def resume_reading(self) -> None:
        """Read from the peer again."""
