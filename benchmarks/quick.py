"""Regression guard: a one-minute fan-out run, printed as ratios to ``raw_floor``.

Runs the shared harness (``../shared/bench``) on a small matrix: Tidings,
``raw_floor`` and ``node_ws``, SSE and WebSocket, N = 100 and 1,000, one
repetition. Prints Tidings' deliveries/s as a fraction of the floor measured
in the same run, flags any cell under 0.8 times the floor, and exits 1 if there is one.
Run it before a release (``make bench-quick``); it is not part of the test
suite, because timings on a shared machine are not assertions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
BENCH = HERE.parent.parent / "shared" / "bench"
FLOOR_RATIO = 0.8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--python", default="/tmp/benchvenv/bin/python", help="the harness's Python"
    )
    parser.add_argument("--ns", default="100,1000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        command = [
            args.python,
            str(BENCH / "run.py"),
            "--extra-targets",
            str(HERE / "targets.json"),
            "--targets",
            "raw_floor,tidings,node_ws",
            "--transports",
            "sse,ws",
            "--ns",
            args.ns,
            "--reps",
            "1",
            "--out",
            out,
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        (result,) = Path(out).glob("*.json")
        runs = json.loads(result.read_text())["runs"]
    samples: dict[tuple[str, str, int], list[float]] = {}
    for run in runs:
        samples.setdefault((run["target"], run["transport"], run["n"]), []).append(
            run["deliveries_per_s"]
        )
    rates = {key: statistics.median(values) for key, values in samples.items()}
    slow = False
    print(f"{'transport':>9} {'N':>6}  {'tidings':>9}  {'node_ws':>9}")
    for transport in ("sse", "ws"):
        for n in sorted({key[2] for key in rates}):
            floor = rates.get(("raw_floor", transport, n))
            mine = rates.get(("tidings", transport, n))
            node = rates.get(("node_ws", transport, n))
            if not floor or mine is None:
                continue
            ratio = mine / floor
            slow |= ratio < FLOOR_RATIO
            flag = "  < 0.8x floor" if ratio < FLOOR_RATIO else ""
            node_text = f"{node / floor:8.2f}x" if node else "        -"
            print(f"{transport:>9} {n:>6}  {ratio:8.2f}x  {node_text}{flag}")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
