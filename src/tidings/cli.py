"""The ``tidings`` command: serve, publish, listen, token, jobs, bench.

``tidings serve`` runs the ASGI app on uvicorn (uvloop, httptools) with the
fast write path, or with ``--http2`` on Hypercorn over TLS; it refuses to
listen beyond loopback with no authentication configured unless anonymous
access is asked for. ``publish``, ``listen`` and ``jobs``
talk to a running server; ``token`` mints a development token.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import logging
import logging.config
import os
import re
import shlex
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson

from tidings import __version__
from tidings.client.backoff import Backoff

__all__ = ["main", "server_url"]

DEFAULT_URL = "http://127.0.0.1:8000"
#: Where the client commands find the server when ``--url`` is not given.
URL_HELP = "server URL (default: $TIDINGS_URL, else from $TIDINGS_HOST and $TIDINGS_PORT, else "
URL_HELP += f"{DEFAULT_URL})"
#: Exit status of ``listen`` after Ctrl-C, as a shell reports a command that SIGINT ended.
INTERRUPTED = 130
#: Seconds per ``--ttl`` suffix.
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)\Z")


def parse_ttl(text: str) -> float:
    """Read a duration: seconds, or a number with an ``s``, ``m``, ``h`` or ``d`` suffix."""
    match = _TTL.match(text.strip())
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90, 30m, 1h or 7d")
    return float(match[1]) * _TTL_UNITS[match[2] or "s"]


def say(line: str) -> None:
    """Tell the user one thing: one line on stderr, never wrapped."""
    sys.stderr.write(f"tidings: {line}\n")
    sys.stderr.flush()


class UsageError(Exception):
    """A client command cannot start; the message is the line to print."""


def server_url(url: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The server a client command talks to.

    ``--url``, else ``TIDINGS_URL``, else ``http://TIDINGS_HOST:TIDINGS_PORT``
    (the variables ``tidings serve`` binds with; a wildcard host such as
    ``0.0.0.0`` means this machine), each defaulting to 127.0.0.1 and 8000.

    Raises:
        UsageError: ``TIDINGS_PORT`` is not a port number.
    """
    if url:
        return url
    if environ.get("TIDINGS_URL"):
        return environ["TIDINGS_URL"]
    host = environ.get("TIDINGS_HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = environ.get("TIDINGS_PORT") or "8000"
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise UsageError("TIDINGS_PORT must be a port number 1-65535")
    return f"http://{host}:{int(port)}"


def error_line(command: str, status: int, body: str, reason: str = "") -> str:
    """``publish: 400 invalid_channel: …`` from a server's JSON error; never the raw body."""
    try:
        error = orjson.loads(body)["error"]
        code, message = str(error["code"]), " ".join(str(error["message"]).split())
    except (orjson.JSONDecodeError, KeyError, TypeError):
        if not reason and status in {known.value for known in HTTPStatus}:
            reason = HTTPStatus(status).phrase
        return f"{command}: {status} {reason}".rstrip()
    return f"{command}: {status} {code}: {message}"


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (tried and released at once), or None."""
    if port == 0:
        return None
    try:
        addresses = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"cannot serve on {host}: {exc.strerror}"
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"port {port} is in use; pass --port"
                return f"cannot serve on {host}:{port}: {exc.strerror or exc}"
    return None


class AnnouncedBackoff(Backoff):
    """``listen``'s reconnection schedule: each delay said before it is waited.

    Each delay is uniform between the previous one (at least half the step)
    and the step, rather than full jitter, so the delays a person watches grow
    up to ``cap`` and never shrink until a connection succeeds.
    """

    def __init__(self, announce: Callable[[float], None]) -> None:
        super().__init__()
        self.announce = announce
        self.last = 0.0

    def next_delay(self) -> float:
        upper = self.upper(self.attempt)
        self.last = self.rng.uniform(max(upper / 2, self.last), upper)
        self.attempt += 1
        self.announce(self.last)
        return self.last

    def reset(self) -> None:
        super().reset()
        self.last = 0.0


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback interface (only this machine can connect)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidings",
        description="Real-time streaming server: SSE, WebSocket and streaming HTTP from one hub.",
    )
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000)")
    serve.add_argument("--config", metavar="FILE", help="TOML settings file (or TIDINGS_CONFIG)")
    serve.add_argument(
        "--log-level", choices=("critical", "error", "warning", "info", "debug", "trace")
    )
    serve.add_argument(
        "--log-format", choices=("text", "json"), help="text (default) or one JSON object per line"
    )
    serve.add_argument("--backend", choices=("memory", "redis"), help="where history lives")
    serve.add_argument("--redis-url", help="Redis URL for --backend redis")
    serve.add_argument("--redis-prefix", help="prefix of every Redis key (default tidings:)")
    serve.add_argument(
        "--no-fast-write",
        dest="fast_write",
        action="store_false",
        default=None,
        help="write through plain ASGI send (for comparison and debugging)",
    )
    serve.add_argument(
        "--no-demo", dest="demo", action="store_false", default=None, help="no demo pages"
    )
    serve.add_argument(
        "--static",
        dest="static_dir",
        metavar="DIR",
        help="serve the files of DIR at / (its index.html at /); the demo stays under /static/",
    )
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=None,
        help="serve a non-loopback --host with no authentication configured",
    )
    serve.add_argument(
        "--http2",
        action="store_true",
        default=None,
        help="serve HTTP/2 and HTTP/1.1 over TLS on Hypercorn (needs --certfile and --keyfile)",
    )
    serve.add_argument("--certfile", metavar="FILE", help="TLS certificate chain (PEM)")
    serve.add_argument("--keyfile", metavar="FILE", help="TLS private key (PEM)")
    serve.add_argument(
        "--sse-compression",
        choices=("off", "gzip"),
        help="gzip SSE streams for clients that accept it, flushed per batch (default off)",
    )
    serve.add_argument(
        "--ws-compression",
        choices=("off", "deflate"),
        help="permessage-deflate for WebSocket clients that offer it (default off)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        help="at SIGTERM or SIGINT, time to drain before exiting (default 30)",
    )

    publish = commands.add_parser("publish", help="publish an event to a running server")
    publish.add_argument("channel")
    publish.add_argument("data", help="JSON, or plain text when it is not valid JSON")
    publish.add_argument("--url", help=URL_HELP)
    publish.add_argument("--event", default="message", help="event type (default message)")
    publish.add_argument("--key", help="idempotency key")
    kind = publish.add_mutually_exclusive_group()
    kind.add_argument("--text", action="store_true", help="publish DATA as plain text")
    kind.add_argument("--json", action="store_true", help="require DATA to be JSON")
    publish.add_argument(
        "--api-key",
        default=os.environ.get("TIDINGS_API_KEY"),
        help="server API key, sent as X-API-Key (default: $TIDINGS_API_KEY)",
    )

    token = commands.add_parser("token", help="print a development token signed with jwt_secret")
    token.add_argument("--sub", required=True, help="the user id (the token's subject)")
    for grant in ("subscribe", "publish", "presence", "history"):
        token.add_argument(
            f"--{grant}",
            action="append",
            default=[],
            metavar="CHANNEL",
            help=f"a channel or pattern ('chat:*') the token may {grant}; repeatable",
        )
    token.add_argument(
        "--jobs",
        action="append",
        default=[],
        metavar="NAME",
        help="a job name or pattern ('report.*') the token may start; repeatable",
    )
    token.add_argument(
        "--ttl", type=parse_ttl, default=3600.0, help="lifetime: 90, 30m, 1h, 7d (default 1h)"
    )
    token.add_argument("--config", metavar="FILE", help="TOML settings file (or TIDINGS_CONFIG)")

    jobs = commands.add_parser("jobs", help="list, start, cancel and watch jobs")
    actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("list", "list the jobs this server keeps"),
        ("start", "start a job; print its id, or watch it with --watch"),
        ("cancel", "cancel a job; print its record"),
        ("watch", "draw a job's progress until it ends"),
    ):
        command = actions.add_parser(action, help=text)
        if action == "start":
            command.add_argument("name", help="the job's name")
            command.add_argument("arguments", nargs="?", default="{}", help="a JSON object")
            command.add_argument("--watch", action="store_true", help="then watch it")
        elif action != "list":
            command.add_argument("id", help="the job's id")
        command.add_argument("--url", help=URL_HELP)
        command.add_argument(
            "--api-key",
            default=os.environ.get("TIDINGS_API_KEY"),
            help="server API key, sent as X-API-Key (default: $TIDINGS_API_KEY)",
        )

    listen = commands.add_parser("listen", help="print events as they arrive; resume after drops")
    listen.add_argument("channels", nargs="+", metavar="CHANNEL")
    listen.add_argument("--url", help=URL_HELP)
    listen.add_argument("--last-event-id", help="cursor to resume from")
    listen.add_argument("--json", action="store_true", help="one JSON object per line")
    bench = commands.add_parser(
        "bench", help="measure fan-out: N subscribers, M publishes, exact counts and latency"
    )
    bench.add_argument("--url", help=URL_HELP)
    bench.add_argument("--transport", choices=("sse", "ws"), default="sse")
    bench.add_argument("-n", "--subscribers", type=int, default=100, help="default 100")
    bench.add_argument("-m", "--messages", type=int, default=1000, help="default 1000")
    bench.add_argument(
        "--rate", type=float, help="messages per second (default: as fast as possible)"
    )
    bench.add_argument("--size", type=int, default=128, help="bytes per message (default 128)")
    bench.add_argument(
        "--publishers", type=int, default=4, help="concurrent publishers (default 4)"
    )
    bench.add_argument("--time-limit", type=float, default=60.0, help="seconds (default 60)")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    args = _build_parser().parse_args(argv)
    if args.command in ("publish", "listen", "bench", "jobs"):
        try:
            args.url = server_url(args.url)
        except UsageError as exc:
            say(str(exc))
            return 2
    if args.command == "serve":
        return _serve(args)
    if args.command == "publish":
        return _publish(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "token":
        return _token(args)
    if args.command == "jobs":
        return _jobs(args)
    return _listen(args)


def _serve(args: argparse.Namespace) -> int:
    from tidings.server.app import create_app
    from tidings.server.logs import logging_config
    from tidings.server.serve import Server, uvicorn_config
    from tidings.settings import SettingsError, load_settings

    try:
        settings = load_settings(
            args.config,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            log_format=args.log_format,
            backend=args.backend,
            redis_url=args.redis_url,
            redis_prefix=args.redis_prefix,
            fast_write=args.fast_write,
            demo=args.demo,
            static_dir=args.static_dir,
            allow_anonymous=args.allow_anonymous,
            http2=args.http2,
            certfile=args.certfile,
            keyfile=args.keyfile,
            drain_timeout=args.drain_timeout,
            sse_compression=args.sse_compression,
            ws_compression=args.ws_compression,
        )
    except SettingsError as exc:
        say(str(exc))
        return 2
    if settings.backend != "redis" and (args.redis_url or args.redis_prefix):
        flag = "--redis-url" if args.redis_url else "--redis-prefix"
        say(f"{flag} needs --backend redis (the backend is {settings.backend})")
        return 2
    exposed = not is_loopback(settings.host)
    if exposed and not settings.authentication and not settings.allow_anonymous:
        say(
            f"refusing to serve {settings.host} with no authentication: set "
            "jwt_secret, jwt_key_file or api_keys, or pass --allow-anonymous"
        )
        return 2
    log_config = logging_config(settings)
    logging.config.dictConfig(log_config)
    try:
        app = create_app(settings=settings)
    except SettingsError as exc:
        say(str(exc))
        return 2
    except ImportError as exc:
        say(f"{exc} (install the extra: pip install 'tidings[redis]')")
        return 2
    if settings.backend == "redis":
        problem = _check_redis(settings)
        if problem:
            say(problem)
            return 1
    if problem := port_problem(settings.host, settings.port):
        say(problem)
        return 1
    if settings.http2:
        return _serve_h2(app, settings)
    config = uvicorn_config(app, settings, loop="uvloop", log_config=log_config)
    try:
        Server(config).run()
    except KeyboardInterrupt:  # before the server took over SIGINT
        say("stopped")
        return INTERRUPTED
    say("stopped")  # by SIGTERM or Ctrl-C, drained
    return 0


def _serve_h2(app: Any, settings: Any) -> int:
    """Serve on Hypercorn over TLS (HTTP/2 and HTTP/1.1); imported only here."""
    from tidings.settings import SettingsError

    try:
        from tidings.server.serve_h2 import hypercorn_config, serve_h2
    except ImportError as exc:
        say(f"{exc} (install the extra: pip install 'tidings[http2]')")
        return 2
    try:
        config = hypercorn_config(settings)
    except SettingsError as exc:
        say(str(exc))
        return 2
    import uvloop

    try:
        uvloop.run(serve_h2(app, settings, config))
    except KeyboardInterrupt:  # before the server took over SIGINT
        say("stopped")
        return INTERRUPTED
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            say(f"port {settings.port} is in use; pass --port")
        else:
            say(f"cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}")
        return 1
    say("stopped")  # by SIGTERM or Ctrl-C, drained
    return 0


def _check_redis(settings: Any) -> str | None:
    """Connect once to the configured Redis; return what is wrong, or None."""
    from tidings.errors import BackendUnavailable
    from tidings.hub.backends.redis import RedisBackend

    async def check() -> None:
        backend = RedisBackend(settings.redis_url, prefix=settings.redis_prefix)
        try:
            await backend.start()
        finally:
            await backend.aclose()

    try:
        asyncio.run(check())
    except BackendUnavailable as exc:
        return str(exc)
    return None


def _publish(args: argparse.Namespace) -> int:
    import httpx

    body: dict[str, Any] = {"channel": args.channel, "event": args.event}
    if args.key:
        body["key"] = args.key
    if args.text:
        body["text"] = args.data
    else:
        try:
            body["data"] = orjson.loads(args.data)
        except orjson.JSONDecodeError:
            if args.json:
                say(f"DATA is not valid JSON: {args.data[:80]!r}")
                return 2
            body["text"] = args.data
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    try:
        response = httpx.post(
            f"{args.url.rstrip('/')}/api/publish", json=body, headers=headers, timeout=10
        )
    except httpx.HTTPError:
        say(f"cannot reach {args.url}")
        return 1
    if response.status_code != 200:
        say(error_line("publish", response.status_code, response.text, response.reason_phrase))
        return 1
    print(response.text)
    return 0


def _token(args: argparse.Namespace) -> int:
    from tidings.server.auth import mint_token
    from tidings.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        say(str(exc))
        return 2
    if not settings.jwt_secret:
        say("token needs jwt_secret (TIDINGS_JWT_SECRET) to sign with")
        return 2
    grants = {
        grant: patterns
        for grant in ("subscribe", "publish", "presence", "history", "jobs")
        if (patterns := getattr(args, grant))
    }
    token = mint_token(
        settings.jwt_secret,
        sub=args.sub,
        ttl=args.ttl,
        grants=grants,
        audience=settings.jwt_audience or None,
        issuer=settings.jwt_issuer or None,
    )
    print(token)
    return 0


def json_or_text(data: str) -> Any:
    """An event's data as ``listen --json`` prints it: the JSON value when the
    data is JSON (as the server sends published JSON), else the text."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data


def _listen(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tidings.client.sse import ConnectionState, Reset, listen
    from tidings.errors import ReconnectExhausted, StreamRejected

    console = Console(highlight=False, soft_wrap=True)
    dropped = False
    cursor = args.last_event_id or ""

    def on_state(state: ConnectionState) -> None:
        nonlocal dropped
        if state is ConnectionState.RECONNECTING:
            dropped = True
        elif state is ConnectionState.OPEN:
            say(f"listening to {', '.join(args.channels)} on {args.url}")

    def announce(delay: float) -> None:
        nonlocal dropped
        if dropped:
            say(f"connection to {args.url} lost, reconnecting in {delay:.1f}s…")
        else:
            say(f"cannot reach {args.url}, retrying in {delay:.1f}s…")
        dropped = False

    def emit(document: dict[str, Any]) -> None:
        sys.stdout.write(orjson.dumps(document).decode() + "\n")
        sys.stdout.flush()

    async def run() -> None:
        async with listen(
            args.url,
            args.channels,
            last_event_id=args.last_event_id,
            backoff=AnnouncedBackoff(announce),
            on_state=on_state,
        ) as events:
            nonlocal cursor
            async for item in events:
                cursor = events.last_event_id
                if isinstance(item, Reset):
                    if args.json:
                        emit(
                            {
                                "reset": item.channel,
                                "epoch": item.position.epoch,
                                "offset": item.position.offset,
                                "reason": item.reason,
                            }
                        )
                    else:
                        say(
                            f"reset {item.channel}: {item.reason}, "
                            f"continuing after #{item.position.offset}"
                        )
                elif args.json:
                    emit(
                        {
                            "channel": item.channel,
                            "offset": item.offset,
                            "event": item.event,
                            "data": json_or_text(item.data),
                            "id": item.id,
                        }
                    )
                else:
                    console.print(
                        f"[bold]{item.channel}[/] #{item.offset} [cyan]{item.event}[/] ",
                        end="",
                    )
                    console.out(item.data, highlight=False)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        # The cursor of the last event printed: the same command with it misses nothing.
        say(f"stopped; resume with --last-event-id {shlex.quote(cursor)}" if cursor else "stopped")
        return INTERRUPTED
    except StreamRejected as exc:
        say(error_line("listen", exc.status, exc.body))
        return 1
    except ReconnectExhausted as exc:
        say(str(exc))
        return 1
    return 0


#: How ``jobs watch`` ends: completed 0, anything else 1.
_JOB_ENDS = {"completed": 0, "failed": 1, "cancelled": 1}


def _jobs(args: argparse.Namespace) -> int:
    import httpx

    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    try:
        with httpx.Client(base_url=args.url, headers=headers, timeout=10) as http:
            if args.action == "start":
                return _start_job(args, http)
            if args.action == "list":
                response = http.get("/api/jobs")
            elif args.action == "cancel":
                response = http.delete(
                    f"/api/jobs/{args.id}", headers={"content-type": "application/json"}
                )
            else:
                response = http.get(f"/api/jobs/{args.id}")
    except httpx.HTTPError:
        say(f"cannot reach {args.url}")
        return 1
    if response.status_code != 200:
        say(error_line(f"jobs {args.action}", response.status_code, response.text))
        return 1
    if args.action == "watch":
        return _watch_job(args, response.json())
    print(response.text)
    return 0


def _start_job(args: argparse.Namespace, http: Any) -> int:
    try:
        arguments = orjson.loads(args.arguments)
    except orjson.JSONDecodeError:
        say(f"ARGUMENTS is not valid JSON: {args.arguments[:80]!r}")
        return 2
    response = http.post(f"/api/jobs/{args.name}", json=arguments)
    if response.status_code != 202:
        say(error_line("jobs start", response.status_code, response.text))
        return 1
    started = response.json()
    if not args.watch:
        print(response.text)
        return 0
    return _watch_job(args, {**started, "name": args.name, "progress": {}})


def _watch_job(args: argparse.Namespace, job: dict[str, Any]) -> int:
    """Draw a job's progress bar from its stream; the exit status says how it ended."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from tidings.client.sse import Reset, listen
    from tidings.errors import ReconnectExhausted, StreamRejected

    state = job.get("state", "queued")
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task(f"{job.get('name', 'job')} {state}", total=100)
        progress = job.get("progress") or {}
        bar.update(task, completed=progress.get("percent") or 0)

        async def follow() -> str:
            headers = {"X-API-Key": args.api_key} if args.api_key else None
            async with listen(args.url.rstrip("/") + job["stream"], headers=headers) as events:
                async for item in events:
                    if isinstance(item, Reset):
                        continue
                    data = json_or_text(item.data)
                    data = data if isinstance(data, dict) else {}
                    if item.event == "log":
                        bar.console.print(
                            f"[dim]{data.get('level', 'info')}[/] {data.get('message')}"
                        )
                    elif item.event == "progress":
                        message = data.get("message") or ""
                        bar.update(task, completed=data.get("percent") or 0, description=message)
                    elif item.event in _JOB_ENDS:
                        bar.update(task, description=item.event)
                        if item.event == "completed":
                            bar.update(task, completed=100)
                            bar.console.print_json(data=data.get("result"))
                        elif item.event == "failed":
                            error = data.get("error") or {}
                            bar.console.print(
                                f"failed: {error.get('type')}: {error.get('message')}"
                            )
                        return str(item.event)
            return "cancelled"

        if state in _JOB_ENDS:
            bar.update(task, description=state)
            if state == "completed":
                bar.console.print_json(data=job.get("result"))
            return _JOB_ENDS[state]
        try:
            return _JOB_ENDS[asyncio.run(follow())]
        except KeyboardInterrupt:
            return INTERRUPTED
        except (StreamRejected, ReconnectExhausted) as exc:
            say(f"jobs watch: {exc}")
            return 1


def _bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from tidings.bench import BenchConfig, BenchProgress, BenchResult, run_bench

    try:
        config = BenchConfig(
            url=args.url,
            transport=args.transport,
            subscribers=args.subscribers,
            messages=args.messages,
            rate=args.rate,
            size=args.size,
            publishers=args.publishers,
            time_limit=args.time_limit,
        )
    except ValueError as exc:
        say(str(exc))
        return 2
    console = Console(stderr=args.json)
    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=args.json) as progress:
        connected = progress.add_task("connected", total=config.subscribers)
        published = progress.add_task("published", total=config.messages)
        delivered = progress.add_task("delivered", total=None)

        def show(state: BenchProgress) -> None:
            progress.update(connected, completed=state.connected)
            progress.update(published, completed=state.published)
            progress.update(delivered, completed=state.delivered, total=state.expected or None)

        import uvloop

        result: BenchResult = uvloop.run(run_bench(config, show))
    if args.json:
        sys.stdout.write(orjson.dumps(result.to_json()).decode() + "\n")
    else:
        table = Table(
            title=f"tidings bench: {config.transport} x {config.subscribers} on {config.url}"
        )
        table.add_column("measure")
        table.add_column("value", justify="right")
        rows = [
            ("subscribers connected", f"{result.connected:,} / {result.subscribers:,}"),
            ("messages published", f"{result.published:,} / {result.messages:,}"),
            ("deliveries", f"{result.delivered:,} / {result.expected:,}"),
            ("deliveries/s", f"{result.deliveries_per_second:,.0f}"),
            ("publishes/s", f"{result.publishes_per_second:,.0f}"),
            (
                "latency p50 / p99 / max",
                f"{result.latency_p50_ms:.2f} / "
                f"{result.latency_p99_ms:.2f} / {result.latency_max_ms:.2f} ms",
            ),
            ("missing", f"{result.missing:,}"),
            ("duplicates", f"{result.duplicates:,}"),
            ("out of order", "n/a" if result.out_of_order is None else f"{result.out_of_order:,}"),
        ]
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)
        for error in result.errors:
            console.print(f"[red]{error}[/]")
        if result.timed_out:
            console.print("[yellow]the time limit ended the run[/]")
    clean = not (result.missing or result.duplicates or result.out_of_order or result.errors)
    return 0 if clean and not result.timed_out else 1
