"""Autobahn conformance of the WebSocket stack, driven by kosoku's fuzzing client.

The cases need an echo peer, so they run against ``/ws/echo`` of
``tests/support/echo.py``, served here on uvicorn with the configuration
``tidings serve`` uses (``tidings.server.serve.uvicorn_config``): on the fast
path, Tidings' protocol classes, and the echo hands each connection off and
writes its frames through the ``tidings.write`` extension, as ``/ws`` does;
on the ASGI path, uvicorn's own classes and ASGI ``send``. Cases 9.* send
messages of up to 16 MiB, so they run on a second server whose
``ws_max_frame_bytes`` is 16 MiB; every other case runs with the defaults.
permessage-deflate is not offered, so 12.* and 13.* do not apply.

::

    python -m tests.support.autobahn          # 1-7, 9, 10 on both write paths (CI)
    python -m tests.support.autobahn --quick  # the cases that take no deliberate waits

Reports (Autobahn-style HTML and JSON) go to ``reports/autobahn/<path>/``.
The exit status is 1 when a case FAILED or hit an ERROR without being on
:data:`ALLOWED`, or when an allowed case passed (the entry is stale).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kosoku import FailureError, run_fuzzingclient

# The report writer is what kosoku's own CLI uses; kosoku is pinned in pyproject.toml.
from kosoku._report import write_reports

from tests.support.echo import WebSocketEcho, echo_app
from tidings.settings import Settings
from tidings.testing import run_server

if TYPE_CHECKING:
    from kosoku._kosoku import CaseResult

ROOT = Path(__file__).parents[2]
PATHS = ("fast", "asgi")
#: Framing, pings, reserved bits, opcodes, fragmentation, UTF-8, close handling.
PROTOCOL_CASES = ("1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*")
#: Limits and performance: messages up to 16 MiB.
LIMIT_CASES = ("9.*",)
#: Cases that wait on purpose (1-2 s each): left out of the quick selection.
TIMED_CASES = ("5.19", "5.20", "6.4.*")
LIMIT_FRAME_BYTES = 16 * 1024 * 1024

#: Cases allowed to fail, per write path, each with its reason. Keep it short.
ALLOWED: dict[str, dict[str, str]] = {
    "fast": {},
    "asgi": {
        "7.1.5": (
            "stock uvicorn websockets-sansio: a close frame received between the "
            "fragments of a message is answered with 1002 'incomplete fragmented "
            "message' instead of a normal close (FastWebSocketsProtocol fixes it)"
        ),
    },
}


@contextlib.asynccontextmanager
async def echo_server(
    path: str, *, max_frame_bytes: int | None = None
) -> AsyncIterator[tuple[str, WebSocketEcho]]:
    """Serve the echo on ``path`` ("fast" or "asgi"); yield its URL and the echo."""
    # Stock uvicorn logs every invalid UTF-8 message of 6.* as an error with
    # its traceback; the verdicts are what this run reports.
    settings = Settings(log_level="critical")
    if max_frame_bytes is not None:
        settings = Settings(log_level="critical", ws_max_frame_bytes=max_frame_bytes)
    echo = WebSocketEcho(max_frame_bytes=settings.ws_max_frame_bytes)
    async with run_server(echo_app(echo), settings=settings, fast_write=path == "fast") as url:
        yield url.replace("http://", "ws://") + "/ws/echo", echo


def handoff_problems(path: str, handed_off: int) -> list[str]:
    """The fast path must hand connections off (that is what it tests); the ASGI path must not."""
    if (path == "fast") == (handed_off > 0):
        return []
    return [f"{handed_off} connections were handed off to the fast write path on the {path} path"]


async def run_cases(
    url: str, include: Sequence[str], exclude: Sequence[str] = (), *, concurrency: int = 1
) -> list[CaseResult]:
    """Run the selected cases against ``url``; return every result, failed or not."""
    try:
        return list(await run_fuzzingclient(url, list(include), list(exclude), concurrency))
    except FailureError as failure:
        return list(failure.results)


def problems(results: Sequence[CaseResult], allowed: dict[str, str]) -> list[str]:
    """Failures not on the allow-list, and allow-list entries that passed."""
    found = []
    for result in results:
        if not result.passed and result.case_id not in allowed:
            found.append(
                f"{result.case_id}: {result.behavior.value}/{result.behavior_close.value} "
                f"{result.result} {result.result_close} ({result.description})"
            )
        elif result.passed and result.case_id in allowed:
            found.append(f"{result.case_id} passes: remove it from the allow-list")
    return found


def summary(results: Sequence[CaseResult]) -> Counter[str]:
    """Cases per verdict (the worse of the exchange and the closing handshake)."""
    counts: Counter[str] = Counter()
    for result in results:
        verdict = result.behavior.value
        if verdict in ("OK", "NON-STRICT", "INFORMATIONAL") and result.behavior_close.value not in (
            "OK",
            "INFORMATIONAL",
        ):
            verdict = result.behavior_close.value
        counts[verdict] += 1
    return counts


async def run_path(
    path: str, *, quick: bool, outdir: Path | None
) -> tuple[list[CaseResult], list[str]]:
    """All selected cases on one write path: protocol cases, then (unless quick) 9.*."""
    exclude = TIMED_CASES if quick else ()
    async with echo_server(path) as (url, echo):
        results = await run_cases(url, PROTOCOL_CASES, exclude)
    handed_off = echo.handed_off
    if not quick:
        async with echo_server(path, max_frame_bytes=LIMIT_FRAME_BYTES) as (url, echo):
            results += await run_cases(url, LIMIT_CASES)
        handed_off += echo.handed_off
    if outdir is not None and results:
        write_reports(results, str(outdir / path))
    return results, handoff_problems(path, handed_off) + problems(results, ALLOWED[path])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.autobahn")
    parser.add_argument("--quick", action="store_true", help="skip 9.* and the timed cases")
    parser.add_argument("--path", choices=(*PATHS, "both"), default="both")
    parser.add_argument("--outdir", type=Path, default=ROOT / "reports" / "autobahn")
    args = parser.parse_args(argv)
    failed = False
    for path in PATHS if args.path == "both" else (args.path,):
        results, found = asyncio.run(run_path(path, quick=args.quick, outdir=args.outdir))
        counts = ", ".join(
            f"{count} {verdict}" for verdict, count in sorted(summary(results).items())
        )
        print(f"autobahn [{path}]: {len(results)} cases: {counts}")
        for case, reason in ALLOWED[path].items():
            print(f"  allowed {case}: {reason}")
        for problem in found:
            print(f"  PROBLEM {problem}")
        failed = failed or bool(found) or not results
    print(f"reports in {args.outdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
