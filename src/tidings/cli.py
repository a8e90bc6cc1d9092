"""The ``tidings`` command: serve, publish, listen.

``tidings serve`` runs the ASGI app on uvicorn (uvloop, httptools) with the
fast write path; ``publish`` and ``listen`` talk to a running server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

import orjson

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:8000"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidings",
        description="Real-time streaming server: SSE, WebSocket and streaming HTTP from one hub.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000)")
    serve.add_argument("--config", metavar="FILE", help="TOML settings file (or TIDINGS_CONFIG)")
    serve.add_argument(
        "--log-level", choices=("critical", "error", "warning", "info", "debug", "trace")
    )
    serve.add_argument("--backend", choices=("memory", "redis"), help="where history lives")
    serve.add_argument("--redis-url", help="Redis URL for --backend redis")
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

    publish = commands.add_parser("publish", help="publish an event to a running server")
    publish.add_argument("channel")
    publish.add_argument("data", help="JSON, or plain text when it is not valid JSON")
    publish.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default {DEFAULT_URL})")
    publish.add_argument("--event", default="message", help="event type (default message)")
    publish.add_argument("--key", help="idempotency key")
    kind = publish.add_mutually_exclusive_group()
    kind.add_argument("--text", action="store_true", help="publish DATA as plain text")
    kind.add_argument("--json", action="store_true", help="require DATA to be JSON")

    listen = commands.add_parser("listen", help="print events as they arrive; resume after drops")
    listen.add_argument("channels", nargs="+", metavar="CHANNEL")
    listen.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default {DEFAULT_URL})")
    listen.add_argument("--last-event-id", help="cursor to resume from")
    listen.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    args = _build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "publish":
        return _publish(args)
    return _listen(args)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tidings.server.app import create_app
    from tidings.settings import SettingsError, load_settings
    from tidings.testing import uvicorn_config

    try:
        settings = load_settings(
            args.config,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            backend=args.backend,
            redis_url=args.redis_url,
            fast_write=args.fast_write,
            demo=args.demo,
        )
    except SettingsError as exc:
        print(f"tidings: {exc}", file=sys.stderr)
        return 2
    level = logging.getLevelName(settings.log_level.upper()) if settings.log_level != "trace" else 5
    logging.basicConfig(level=level, format="%(levelname)-8s %(name)s: %(message)s")
    try:
        app = create_app(settings=settings)
    except ImportError as exc:
        print(f"tidings: {exc} (install the extra: pip install 'tidings[redis]')", file=sys.stderr)
        return 2
    config = uvicorn_config(app, settings, loop="uvloop")
    uvicorn.Server(config).run()
    return 0


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
                print(f"tidings: DATA is not valid JSON: {args.data[:80]!r}", file=sys.stderr)
                return 2
            body["text"] = args.data
    try:
        response = httpx.post(f"{args.url.rstrip('/')}/api/publish", json=body, timeout=10)
    except httpx.HTTPError as exc:
        print(f"tidings: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"tidings: {response.status_code} {response.text}", file=sys.stderr)
        return 1
    print(response.text)
    return 0


def _listen(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tidings.client.sse import ConnectionState, Reset, listen
    from tidings.errors import ReconnectExhausted, StreamRejected

    console = Console(highlight=False)
    errors = Console(stderr=True, highlight=False)

    def on_state(state: ConnectionState) -> None:
        if state is ConnectionState.RECONNECTING:
            errors.print("[yellow]connection lost; reconnecting…[/]")
        elif state is ConnectionState.OPEN:
            errors.print(f"[green]listening to {', '.join(args.channels)} on {args.url}[/]")

    def emit(document: dict[str, Any]) -> None:
        sys.stdout.write(orjson.dumps(document).decode() + "\n")
        sys.stdout.flush()

    async def run() -> None:
        async with listen(
            args.url, args.channels, last_event_id=args.last_event_id, on_state=on_state
        ) as events:
            async for item in events:
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
                        errors.print(
                            f"[red]reset {item.channel}: {item.reason}, "
                            f"continuing after #{item.position.offset}[/]"
                        )
                elif args.json:
                    emit(
                        {
                            "channel": item.channel,
                            "offset": item.offset,
                            "event": item.type,
                            "data": item.data,
                            "id": item.id,
                        }
                    )
                else:
                    console.print(
                        f"[bold]{item.channel}[/] #{item.offset} [cyan]{item.type}[/] ",
                        end="",
                    )
                    console.out(item.data, highlight=False)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 130
    except StreamRejected as exc:
        errors.print(f"[red]tidings: {exc}[/]")
        return 1
    except ReconnectExhausted as exc:
        errors.print(f"[red]tidings: {exc}[/]")
        return 1
    return 0
