"""create_app(): the composition root that mounts every route on one hub."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from tidings.errors import TidingsError
from tidings.hub import Hub, MemoryBackend, Namespaces
from tidings.hub.backends.base import Backend
from tidings.jobs import Jobs, Runner
from tidings.jobs.demo import demo_jobs
from tidings.llm import Relay
from tidings.server import api, session
from tidings.server import jobs as job_routes
from tidings.server.admin import Monitor, admin_routes
from tidings.server.ai_sdk import ai_sdk_routes
from tidings.server.auth import Authority, TokenVerifier
from tidings.server.browser import browser_middleware
from tidings.server.channel_stream import ChannelStream
from tidings.server.errors import error_response
from tidings.server.hooks import Hooks, OnComplete, OnConnect, OnPublish, OnSubscribe
from tidings.server.limits import ConnectionLimits, ConnectionSlots
from tidings.server.llm import ChatCompletions, StreamView, list_models
from tidings.server.metrics import Metrics, metrics
from tidings.server.peer import Peers
from tidings.server.proxy import Proxy
from tidings.server.rates import PublishGate, PublishRates
from tidings.server.samples import SampleMetrics
from tidings.server.sse import SSEEndpoint, SSEKeepalive
from tidings.server.state import ServerState
from tidings.server.websocket import WebSocketEndpoint
from tidings.settings import Settings, SettingsError
from tidings.wire.codes import ErrorCode

__all__ = ["build_hooks", "build_hub", "create_app", "user_pages"]

logger = logging.getLogger(__name__)

#: The browser client (tidings.js, its types, its npm package.json): /static/, always.
STATIC = Path(__file__).parent / "static"
#: The demo pages and their CSS: / and /static/, only when the ``demo`` setting is on.
DEMO = Path(__file__).parent / "demo"
_STATUS_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.TOO_LARGE,
}


async def _favicon(request: Request) -> Response:
    return FileResponse(DEMO / "favicon.svg", media_type="image/svg+xml")


def _static_files(*, demo: bool) -> StaticFiles:
    """The files under /static/: the client always, the demo pages only with ``demo``."""
    # One mount over both directories: a second Mount at /static would never be reached.
    return StaticFiles(directory=STATIC, packages=[("tidings.server", DEMO.name)] if demo else None)


def build_backend(settings: Settings) -> Backend:
    """Create the backend that ``settings`` selects."""
    if settings.backend == "redis":
        # Imported on demand: redis is an optional dependency.
        redis_backend = importlib.import_module("tidings.hub.backends.redis")
        backend: Backend = redis_backend.RedisBackend(
            settings.redis_url,
            prefix=settings.redis_prefix,
            idempotency_window=settings.idempotency_window,
        )
        return backend
    return MemoryBackend(
        idempotency_window=settings.idempotency_window,
        history_total_bytes=settings.history_total_bytes,
    )


def build_hub(settings: Settings) -> Hub:
    """Create a hub configured by ``settings``."""
    return Hub(
        build_backend(settings),
        namespaces=settings.namespace_options(),
        outbox_max_bytes=settings.outbox_max_bytes,
        overflow=settings.overflow,
        presence_ttl=settings.presence_ttl,
    )


def build_authority(
    settings: Settings, namespaces: Namespaces, *, hooks: Hooks | None = None
) -> Authority:
    """Create the one authorisation point that ``settings`` configure, with ``hooks``.

    Raises:
        SettingsError: the JWT key file cannot be read or holds no key (the
            message names the file, never its content).
    """
    verifier = None
    if settings.jwt_secret or settings.jwt_key_file:
        try:
            verifier = TokenVerifier(
                secret=settings.jwt_secret or None,
                key_file=settings.jwt_key_file or None,
                audience=settings.jwt_audience or None,
                issuer=settings.jwt_issuer or None,
                leeway=settings.jwt_leeway,
            )
        except ValueError as exc:
            raise SettingsError(f"jwt_key_file: {exc}") from None
    return Authority(
        namespaces,
        verifier=verifier,
        api_keys=settings.api_key_map(),
        token_cookie=settings.token_cookie or None,
        peers=Peers(settings.trusted_networks()),
        hooks=hooks,
        admin_key=settings.admin_key or None,
    )


def build_hooks(
    settings: Settings,
    *,
    on_connect: OnConnect | None = None,
    on_subscribe: OnSubscribe | None = None,
    on_publish: OnPublish | None = None,
    on_complete: OnComplete | None = None,
) -> tuple[Hooks, Proxy | None]:
    """The app's hooks: the callables given, and the proxy hooks ``settings``
    configure (with the :class:`Proxy` that the app closes when it stops).

    Raises:
        SettingsError: a hook is given both as a callable and as a proxy URL.
    """
    given = {
        "connect": on_connect,
        "subscribe": on_subscribe,
        "publish": on_publish,
        "complete": on_complete,
    }
    for setting in settings.proxy_urls():
        name = setting.removeprefix("proxy_").removesuffix("_url")
        if given[name] is not None:
            raise SettingsError(f"on_{name} is given both as a callable and as {setting}")
    proxy = Proxy.from_settings(settings)
    if proxy is None:
        hooks = Hooks(
            on_connect, on_subscribe, on_publish, on_complete, timeout=settings.hook_timeout
        )
        return hooks, None
    hooks = Hooks(
        on_connect=on_connect or proxy.connect,
        on_subscribe=on_subscribe or proxy.subscribe,
        on_publish=on_publish or proxy.publish,
        on_complete=on_complete or proxy.complete,
        timeout=settings.hook_timeout,
    )
    return hooks, proxy


def user_pages(directory: str) -> StaticFiles:
    """``static_dir`` served at ``/``: files as they are, ``index.html`` for a directory.

    Starlette's StaticFiles refuses paths out of the directory (``..``, and
    symbolic links that lead out of it).

    Raises:
        SettingsError: ``directory`` does not exist or is not a directory.
    """
    path = Path(directory).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise SettingsError(f"static_dir: {directory} {what}")
    return StaticFiles(directory=path, html=True)


def publish_rates(settings: Settings) -> PublishRates:
    """The publish rate limits that ``settings`` configure."""
    return PublishRates(
        connection=settings.publish_rate_per_connection,
        address=settings.publish_rate_per_address,
        principal=settings.publish_rate_per_principal,
        burst=settings.publish_burst,
        clients=settings.publish_rate_clients,
    )


async def _tidings_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TidingsError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _STATUS_CODES.get(exc.status_code, ErrorCode.BAD_REQUEST)
    return error_response(
        status=exc.status_code, code=code, message=exc.detail, headers=exc.headers
    )


def create_app(
    hub: Hub | None = None,
    settings: Settings | None = None,
    *,
    on_connect: OnConnect | None = None,
    on_subscribe: OnSubscribe | None = None,
    on_publish: OnPublish | None = None,
    on_complete: OnComplete | None = None,
    jobs: Jobs | None = None,
) -> Starlette:
    """Build the Tidings ASGI app.

    Args:
        hub: The hub to serve; one built from ``settings`` when omitted. The
            app starts it on startup; it closes it on shutdown only if it
            built it.
        settings: Server settings; the defaults when omitted.
        on_connect, on_subscribe, on_publish: Async hooks that may refuse
            (raise :class:`~tidings.errors.Rejected`) or rewrite a client's
            connect, read or publish (``docs/howto/hooks.md``); each bounded
            by ``settings.hook_timeout``.
        on_complete: Awaited with each LLM generation's final
            :class:`~tidings.llm.GenerationRecord` once it has ended
            (``docs/llm-streaming.md``); what it raises is logged.
        jobs: The jobs ``POST /api/jobs/{name}`` may start (``docs/jobs.md``);
            when omitted, the ``demo`` job while ``settings.demo`` is on, and
            no job routes at all otherwise.

    Raises:
        SettingsError: ``static_dir`` is not a directory, a JWT key file
            cannot be used, or a hook is given both as a callable and as a
            proxy URL.

    The app is a Starlette app: mount it in your own app, or run it with any
    ASGI server. ``tidings serve`` runs it on uvicorn with the fast write path.
    """
    settings = settings or Settings()
    pages = user_pages(settings.static_dir) if settings.static_dir else None
    hooks, proxy = build_hooks(
        settings,
        on_connect=on_connect,
        on_subscribe=on_subscribe,
        on_publish=on_publish,
        on_complete=on_complete,
    )
    owns_hub = hub is None
    hub = hub if hub is not None else build_hub(settings)
    keepalive = SSEKeepalive(settings.sse_keepalive)
    llm = settings.llm
    relay = (
        Relay(
            hub,
            llm.router(),
            grace=llm.grace,
            cancel_unheard=llm.cancel_unheard,
            ttl=llm.ttl,
            max_generations=llm.max_generations,
            max_per_client=llm.max_generations_per_client,
            lease=llm.lease,
            on_complete=hooks.on_complete,
            hook_timeout=hooks.timeout,
        )
        if llm.enabled
        else None
    )
    if jobs is None and settings.demo:
        jobs = demo_jobs()
    runner = (
        Runner(
            hub,
            jobs,
            workers=settings.jobs_workers,
            queue_size=settings.jobs_queue,
            per_client=settings.jobs_per_client,
            max_records=settings.jobs_max,
            ttl=settings.jobs_ttl,
            shared=hub.backend.name != "memory",
        )
        if jobs is not None
        else None
    )
    authority = build_authority(settings, hub.namespaces, hooks=hooks)
    slots = ConnectionSlots(settings.max_connections, settings.max_connections_per_client)
    state = ServerState(
        hub=hub,
        settings=settings,
        keepalive=keepalive,
        authority=authority,
        slots=slots,
        relay=relay,
        runner=runner,
        gate=PublishGate(publish_rates(settings)),
        owns_hub=owns_hub,
    )
    state.metrics = Metrics(state)
    if settings.admin_key:
        state.admin = Monitor(state)
    sse = SSEEndpoint(
        hub,
        authority=authority,
        retry=settings.sse_retry,
        # Streams ended by a drain announce a retry spread over up to 5 s, so
        # their clients do not all come back in the same instant.
        retry_spread=min(settings.drain_timeout, 5.0),
        keepalive=keepalive,
        max_channels=settings.max_channels,
        compression=settings.sse_compression,
        connections=state.connections,
    )
    channel_stream = ChannelStream(hub, authority=authority, connections=state.connections)
    websocket = WebSocketEndpoint(
        hub,
        authority=authority,
        max_frame_bytes=settings.ws_max_frame_bytes,
        rate_limit=settings.ws_rate_limit,
        max_channels=settings.max_channels,
        ping_interval=settings.ws_ping_interval,
        pong_timeout=settings.ws_pong_timeout,
        connections=state.connections,
        gate=state.gate,
        max_reply_bytes=settings.max_reply_bytes,
        presence_info_max_bytes=settings.presence_info_max_bytes,
    )

    # The demo dashboard's sample metrics, published while someone watches.
    samples = SampleMetrics(hub) if settings.demo else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        logger.info("hub started with the %s backend", hub.backend.name)
        if runner is not None:
            await runner.start()
        admin = state.admin
        if admin is not None:
            admin.errors.attach()
        if samples is not None:
            samples.start()
        try:
            yield
        finally:
            try:
                if samples is not None:
                    await samples.aclose()
                await state.shutdown(close_hub=owns_hub)
            finally:
                if admin is not None:
                    admin.errors.detach()
                if proxy is not None:
                    await proxy.aclose()

    routes: list[BaseRoute] = [
        Route("/sse", sse, methods=["GET"]),
        Route("/sse/{channel:path}", sse, methods=["GET"]),
        WebSocketRoute("/ws", websocket),
        Route("/api/publish", api.publish, methods=["POST"]),
        Route("/api/history/{channel:path}", api.history, methods=["GET"]),
        Route("/api/stream/{channel:path}", channel_stream, methods=["GET"]),
        Route("/api/presence/{channel:path}", api.presence, methods=["GET"]),
        Route("/api/channels", api.channels, methods=["GET"]),
        Route("/api/stats", api.stats, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        *(
            [
                Route("/api/session", session.create_session, methods=["POST"]),
                Route("/api/session", session.end_session, methods=["DELETE"]),
            ]
            if settings.token_cookie
            else []
        ),
        Mount("/static", _static_files(demo=settings.demo), name="static"),
    ]
    if relay is not None:
        streams = StreamView(
            relay,
            retry=settings.sse_retry,
            keepalive=settings.sse_keepalive,
            compression=settings.sse_compression,
        )
        completions = ChatCompletions(
            relay,
            limits=llm.limits,
            max_body_bytes=llm.max_body_bytes,
            keepalive=settings.sse_keepalive,
            compression=settings.sse_compression,
        )
        routes.append(Route("/v1/chat/completions", completions, methods=["POST"]))
        routes.append(Route("/v1/models", list_models, methods=["GET"]))
        routes.append(Route("/v1/streams/{stream_id}", streams, methods=["GET", "DELETE"]))
        routes += ai_sdk_routes(relay, settings)
    if runner is not None:
        routes.append(Route("/api/jobs", job_routes.jobs, methods=["GET"]))
        routes.append(Route("/api/jobs/{job}", job_routes.start, methods=["POST"]))
        routes.append(Route("/api/jobs/{job}", job_routes.job, methods=["GET", "DELETE"]))
    if state.admin is not None:
        routes.extend(admin_routes())
    if pages is not None:
        # Last: every route above wins, then the user's files (their index.html at /).
        routes.append(Mount("/", pages, name="pages"))
    elif settings.demo:
        routes.append(Route("/", lambda request: FileResponse(DEMO / "index.html")))
        # Browsers ask for /favicon.ico on their own: the demo's icon, not a 404.
        routes.append(Route("/favicon.ico", _favicon, methods=["GET"]))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        # Outermost: a refused connection costs nothing more.
        middleware=[
            Middleware(ConnectionLimits, slots=slots, peers=authority.peers),
            *browser_middleware(settings),
        ],
        exception_handlers={TidingsError: _tidings_error, HTTPException: _http_error},
    )
    app.state.tidings = state
    return app
