"""A client reading 1 KiB/s from a producer that could emit 1 GiB: the server's
memory stays flat and the producer waits, on both write paths."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.env import TIMEOUT

ROOT = Path(__file__).parents[2]
#: How long the slow client reads, one KiB a second.
SECONDS = 10
#: The bound on the server's RSS growth while it does (a generous one).
RSS_BOUND = 32 * 1024 * 1024
#: What the producer may have made: socket buffers, transport buffer, slack.
PRODUCED_BOUND = 64 * 1024 * 1024


class StreamServer:
    """``python -m tests.support.stream_app`` as a subprocess, stopped by its PID."""

    def __init__(self, mode: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.stream_app", mode],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the stream app did not start: {line!r}")
        self.url = line
        self.port = int(line.rsplit(":", 1)[1])

    def rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def produced(self) -> int:
        return int(httpx.get(self.url + "/produced", timeout=TIMEOUT).json()["bytes"])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=TIMEOUT)
        finally:
            assert self.process.stdout is not None
            self.process.stdout.close()


@pytest.fixture(params=["fast", "asgi"])
def stream_server(request: pytest.FixtureRequest) -> Iterator[StreamServer]:
    server = StreamServer(request.param)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/ndjson", "/bytes"])
def test_slow_reader_keeps_memory_flat(stream_server: StreamServer, path: str) -> None:
    assert stream_server.produced() == 0  # and the server has answered once
    baseline = peak = stream_server.rss()  # before the stream starts
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(("127.0.0.1", stream_server.port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        head = sock.recv(1024)
        assert head.startswith(b"HTTP/1.1 200 "), head[:200]
        received = len(head)
        for _ in range(SECONDS):
            time.sleep(1)  # the client's pace: one KiB a second
            received += len(sock.recv(1024))
            peak = max(peak, stream_server.rss())
        produced = stream_server.produced()
    finally:
        sock.close()
    growth = peak - baseline
    assert growth < RSS_BOUND, f"RSS grew {growth} bytes"
    assert produced < PRODUCED_BOUND, f"{produced} bytes produced for {received} read"
    print(f"{path}: RSS +{growth / 1024:.0f} KiB, {produced / 1024:.0f} KiB produced")
