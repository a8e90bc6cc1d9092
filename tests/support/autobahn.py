"""Autobahn conformance of the WebSocket stack, driven by kosoku's fuzzing client.

The cases need an echo peer, so they run against ``/ws/echo`` of a real
``tidings serve`` started with ``ws_conformance_echo = true``: the same
uvicorn protocol class, limits and settings as ``/ws``. Cases 9.* send
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
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kosoku import FailureError, run_fuzzingclient

# The report writer is what kosoku's own CLI uses; kosoku is pinned in pyproject.toml.
from kosoku._report import write_reports

from tests.support.server import ServerProcess

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


def server_env(path: str, *, max_frame_bytes: int | None = None) -> dict[str, str]:
    env = {
        "TIDINGS_FAST_WRITE": "1" if path == "fast" else "0",
        "TIDINGS_WS_CONFORMANCE_ECHO": "1",
        "TIDINGS_DEMO": "0",
    }
    if max_frame_bytes is not None:
        env["TIDINGS_WS_MAX_FRAME_BYTES"] = str(max_frame_bytes)
    return env


def echo_url(server: ServerProcess) -> str:
    return server.url.replace("http://", "ws://") + "/ws/echo"


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
    with ServerProcess(env=server_env(path)) as server:
        results = await run_cases(echo_url(server), PROTOCOL_CASES, exclude)
    if not quick:
        with ServerProcess(env=server_env(path, max_frame_bytes=LIMIT_FRAME_BYTES)) as server:
            results += await run_cases(echo_url(server), LIMIT_CASES)
    if outdir is not None and results:
        write_reports(results, str(outdir / path))
    return results, problems(results, ALLOWED[path])


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
