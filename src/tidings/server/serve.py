"""uvicorn_config() and Server: how ``tidings serve`` runs an app on uvicorn, fast write
path included, and stops it without losing a publish.

The fast write path (``server/fastwrite.py``) and the protocol-level limits
(``server/guard.py``) subclass uvicorn's protocols and read private names of
uvicorn and websockets, so they are used only with the releases they were
tested against (:data:`TESTED_VERSIONS`, the same range as the bounds in
``pyproject.toml``). Outside that range Tidings logs one warning and serves
on the plain ASGI path with uvicorn's own classes, which every ASGI server
supports, rather than failing in odd ways in the middle of a connection.

uvicorn closes its connections before it runs the app's lifespan shutdown,
so an app cannot stop publishing before its subscribers go by itself.
At SIGTERM or SIGINT, :class:`Server` stops accepting connections, then stops
the Tidings app in order (``ServerState.shutdown``: publishes refused with
503, running generations finished or cancelled, subscribers closed) within
``drain_timeout`` seconds, and only then lets uvicorn close what is left.
The process then exits with status 0; a second signal ends it at once
(:func:`exit_now`), and a drain that overruns its deadline by
:data:`DEADLINE_MARGIN` is ended the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import threading
from importlib.metadata import version
from types import FrameType

import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import HTTPProtocolType, WSProtocolType

from tidings.server.state import ServerState
from tidings.settings import Settings

__all__ = [
    "DEADLINE_MARGIN",
    "TESTED_VERSIONS",
    "Server",
    "exit_now",
    "fast_write_problem",
    "start_deadline",
    "uvicorn_config",
]

logger = logging.getLogger(__name__)

#: Per package, the lowest release the fast write path supports and the first it
#: was not tested against (``>=low,<high``, as in ``pyproject.toml``).
TESTED_VERSIONS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "uvicorn": ((0, 54), (0, 55)),
    "websockets": ((15, 0), (17, 5)),
}


def release(text: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"17.4.1rc1"`` → ``(17, 4, 1)``."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def _dotted(numbers: tuple[int, ...]) -> str:
    return ".".join(map(str, numbers))


def fast_write_problem() -> str | None:
    """Why the installed uvicorn or websockets rules out the fast write path; None if it fits."""
    for package, (low, high) in TESTED_VERSIONS.items():
        installed = version(package)
        if not low <= release(installed) < high:
            return (
                f"{package} {installed} is outside the range the fast write path was "
                f"tested with (>={_dotted(low)},<{_dotted(high)})"
            )
    return None


def uvicorn_config(
    app: ASGIApp, settings: Settings, *, fast_write: bool | None = None, **options: object
) -> uvicorn.Config:
    """The uvicorn configuration ``tidings serve`` uses for ``app``.

    ``fast_write`` (default: ``settings.fast_write``) picks the fast write
    protocol classes (``server/fastwrite.py``) over the plain ASGI path; both
    enforce the protocol-level limits of ``server/guard.py``. With an
    untested uvicorn or websockets release, a warning is logged and uvicorn's
    own classes are used instead: the plain ASGI path without those limits
    (the app's own limits, ``server/limits.py``, still hold).
    ``options`` go to ``uvicorn.Config`` as they are.
    """
    fast = settings.fast_write if fast_write is None else fast_write
    http: type[asyncio.Protocol] | HTTPProtocolType = "httptools"
    ws: type[asyncio.Protocol] | WSProtocolType = "websockets-sansio"
    if (problem := fast_write_problem()) is not None:
        logger.warning(
            "%s: serving on the plain ASGI path with uvicorn's own protocol classes "
            "(no fast write, no request-head limits or deadlines)",
            problem,
        )
    else:
        # Imported only once the versions are known to fit: these modules
        # subclass private uvicorn and websockets classes at import time.
        from tidings.server import guard

        limits = guard.ProtocolLimits.from_settings(settings)
        if fast:
            from tidings.server.fastwrite import FastHttpToolsProtocol, FastWebSocketsProtocol

            http_class: type[asyncio.Protocol] = FastHttpToolsProtocol
            ws_class: type[asyncio.Protocol] = FastWebSocketsProtocol
        else:
            http_class, ws_class = guard.GuardedHttpToolsProtocol, guard.GuardedWebSocketsProtocol
        http, ws = guard.with_limits(http_class, limits), guard.with_limits(ws_class, limits)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=http,
        ws=ws,
        # Pushes are framed once and shared by every connection, which
        # per-connection compression state defeats: permessage-deflate only when
        # asked for (a connection that takes it is served on the ASGI path).
        ws_per_message_deflate=settings.ws_compression == "deflate",
        ws_max_size=settings.ws_max_frame_bytes,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_pong_timeout,
        lifespan="on",
        # Tidings reads X-Forwarded-For itself, from trusted_proxies only
        # (server/peer.py): the app sees the socket's peer unchanged.
        proxy_headers=False,
        log_level=settings.log_level,
        # Idle keep-alive connections (between requests); server/guard.py covers
        # the time before a request head is in and a body's.
        timeout_keep_alive=settings.idle_timeout,  # type: ignore[arg-type]  # a float works
        timeout_graceful_shutdown=settings.drain_timeout,  # type: ignore[arg-type]
        backlog=4096,
        **options,  # type: ignore[arg-type]
    )


#: Seconds past ``drain_timeout`` after which a drain still running is cut short.
DEADLINE_MARGIN = 1.0


def exit_now(signum: int) -> None:
    """End the process at once, as a second SIGTERM or SIGINT asks: status 128 + signal."""
    logger.warning("%s again: exiting without draining", signal.Signals(signum).name)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(128 + signum)


def start_deadline(seconds: float) -> threading.Timer:
    """Exit the process (status 1) unless it is gone ``seconds`` + :data:`DEADLINE_MARGIN`
    from now: the drain's deadline holds even when the event loop is stuck."""

    def overrun() -> None:
        logger.error("drain still running %.3g s after its deadline: exiting", DEADLINE_MARGIN)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)

    timer = threading.Timer(seconds + DEADLINE_MARGIN, overrun)
    timer.daemon = True
    timer.start()
    return timer


class Server(uvicorn.Server):
    """A uvicorn server that drains its Tidings app before it closes connections.

    The app is ``config.app`` when it is a Tidings app (``create_app``);
    any other app is served and stopped as uvicorn does. The drain lasts at
    most ``config.timeout_graceful_shutdown`` seconds (``drain_timeout``).
    Unlike uvicorn, a stop by signal exits with status 0 rather than
    re-raising the signal, and a second signal exits at once.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            exit_now(sig)
        logger.info("%s: draining (up to %g s)", signal.Signals(sig).name, self._drain_seconds())
        start_deadline(self._drain_seconds())
        self.should_exit = True

    def _drain_seconds(self) -> float:
        return float(self.config.timeout_graceful_shutdown or 0)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state: ServerState | None = getattr(
            getattr(self.config.app, "state", None), "tidings", None
        )
        if not isinstance(state, ServerState) or self.force_exit:
            await super().shutdown(sockets)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain_seconds()
        for server in self.servers:
            server.close()  # no new connection from now on
        try:
            await state.shutdown(close_hub=state.owns_hub, wait=self._drain_seconds())
        except Exception:
            logger.exception("draining the server failed")
        # uvicorn's own wait for the connections left gets what remains.
        self.config.timeout_graceful_shutdown = max(0.1, deadline - loop.time())  # type: ignore[assignment]
        await super().shutdown(sockets)
