"""hypercorn_config() and serve_h2(): how ``tidings serve --http2`` runs an app on Hypercorn.

HTTP/2 multiplexes every stream of an origin over one TLS connection, so a
browser is no longer held to about six SSE streams per origin as it is over
HTTP/1.1. Hypercorn negotiates ``h2`` or ``http/1.1`` by ALPN on the same port;
WebSocket stays on HTTP/1.1 (the Upgrade handshake). The app is the same
``create_app()`` on the plain ASGI path: the fast write path belongs to
uvicorn's HTTP/1.1 protocols (``server/serve.py``).

This module is imported only when HTTP/2 is asked for: Hypercorn is the
``http2`` extra (``pip install 'tidings[http2]'``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from asyncio import AbstractEventLoop
from collections.abc import Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.server.serve import exit_now, start_deadline
from tidings.settings import Settings, SettingsError

__all__ = ["GRACEFUL_SECONDS", "hypercorn_config", "serve_h2"]

logger = logging.getLogger(__name__)

#: Seconds Hypercorn gives open connections from the signal on, as uvicorn did;
#: the app's drain (generations included) still has ``drain_timeout``.
GRACEFUL_SECONDS = 5.0
_ExceptionHandler = Callable[[AbstractEventLoop, dict[str, Any]], None]
#: Extra seconds after which a shutdown that still waits on connections is cut short.
_SHUTDOWN_MARGIN = 1.0


def hypercorn_config(settings: Settings) -> Config:
    """The Hypercorn configuration for ``settings``; the TLS files are loaded once to check them.

    Raises:
        SettingsError: ``certfile`` or ``keyfile`` cannot be read, or they are
            not a PEM certificate chain and its private key.
    """
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.certfile = settings.certfile
    config.keyfile = settings.keyfile
    config.alpn_protocols = ["h2", "http/1.1"]
    config.graceful_timeout = GRACEFUL_SECONDS
    config.backlog = 4096
    config.websocket_max_message_size = settings.ws_max_frame_bytes
    # Hypercorn has no pong timeout; on this plain ASGI path Tidings also closes
    # a peer whose sends stay blocked for ws_ping_interval + ws_pong_timeout.
    config.websocket_ping_interval = settings.ws_ping_interval
    # The request-head limits and the keep-alive idle deadline, as far as
    # Hypercorn has them (server/guard.py holds the rest under uvicorn only).
    config.h11_max_incomplete_size = settings.max_url_bytes + settings.max_header_bytes
    config.h2_max_header_list_size = settings.max_header_bytes
    config.keep_alive_timeout = settings.idle_timeout
    # Records go through `logging`, at the level `tidings serve` set.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = logging.getLogger("hypercorn.access")
    check_tls_files(config)
    return config


def check_tls_files(config: Config) -> None:
    """Load the certificate and key as Hypercorn will, and say which file is wrong."""
    for name, path in (("certfile", config.certfile), ("keyfile", config.keyfile)):
        try:
            with open(path or "", "rb"):
                pass
        except OSError as exc:
            raise SettingsError(f"{name}: cannot read {path}: {exc.strerror}") from None
    try:
        config.create_ssl_context()
    except ssl.SSLError as exc:
        # OpenSSL's reason ("[SSL] PEM lib", "KEY_VALUES_MISMATCH"), never the key's bytes.
        reason = (exc.strerror or exc.__class__.__name__).partition(" (_ssl.c")[0]
        raise SettingsError(
            f"certfile/keyfile: not a PEM certificate chain and its private key ({reason})"
        ) from None


async def serve_h2(app: Starlette, settings: Settings, config: Config | None = None) -> None:
    """Serve ``app`` over TLS with HTTP/2 until SIGINT or SIGTERM, then drain and stop.

    The app's lifespan runs around Hypercorn here rather than inside it, so
    that at a signal its shutdown (``ServerState.shutdown``: publishes
    refused, running generations finished or cancelled, open streams end
    with ``shutdown``, the hub closes, all within ``drain_timeout``) comes
    first, while Hypercorn stops accepting. Hypercorn gives open connections
    :data:`GRACEFUL_SECONDS` from the signal on, so a generation streamed over
    a connection still open then is cut there (it keeps running until the
    deadline; its client resumes ``/v1/streams/{id}``). A second signal
    exits at once.
    """
    config = config or hypercorn_config(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(number: int) -> None:
        if stop.is_set():
            exit_now(number)
        name = signal.Signals(number).name
        logger.info("%s: draining (up to %g s)", name, settings.drain_timeout)
        start_deadline(settings.drain_timeout)
        stop.set()

    for number in signals:
        loop.add_signal_handler(number, on_signal, number)
    loop.set_exception_handler(_quiet_when_stopping(stop))
    try:
        async with app.router.lifespan_context(app):
            serving = loop.create_task(
                serve(_LifespanDone(app), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
            )
            stopping = loop.create_task(stop.wait())
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            deadline = loop.time() + settings.drain_timeout
            state = getattr(app.state, "tidings", None)
            if state is not None:
                await state.shutdown(close_hub=state.owns_hub, wait=settings.drain_timeout)
        if not serving.done():
            left = max(0.0, deadline - loop.time())
            await asyncio.wait({serving}, timeout=min(left, GRACEFUL_SECONDS) + _SHUTDOWN_MARGIN)
        if not serving.done():
            logger.warning("connections still open after shutdown: closing them")
            serving.cancel()
        await _finished(serving, stop.is_set())
    finally:
        for number in signals:
            loop.remove_signal_handler(number)


def _quiet_when_stopping(stop: asyncio.Event) -> _ExceptionHandler:
    """An event-loop exception handler that drops cancellations once shutdown has begun.

    Connections still open at the end of the graceful period are cancelled
    (a WebSocket closed during the last ping period still has Hypercorn's
    ping loop waiting), also while the loop closes; asyncio reports each as
    an error. They are expected. It stays installed until the loop ends.
    """

    def handle(loop: AbstractEventLoop, context: dict[str, Any]) -> None:
        if stop.is_set() and isinstance(context.get("exception"), asyncio.CancelledError):
            return
        loop.default_exception_handler(context)

    return handle


async def _finished(serving: asyncio.Task[None], stopping: bool) -> None:
    """Wait for Hypercorn's end; once shutting down, a failure closing leftovers is only logged."""
    try:
        await serving
    except asyncio.CancelledError:
        if not serving.cancelled():
            raise
    except Exception as exc:
        if not stopping:
            raise
        logger.warning("while closing connections at shutdown: %r", exc)


class _LifespanDone:
    """The app for Hypercorn: requests go to ``app``; the lifespan is answered here.

    ``serve_h2`` runs the app's lifespan itself, around Hypercorn.
    """

    __slots__ = ("app",)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            await send({"type": f"{message['type']}.complete"})
            if message["type"] == "lifespan.shutdown":
                return
