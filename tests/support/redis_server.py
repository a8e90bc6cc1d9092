"""A ``redis-server`` of a test's own, for tests that stop, pause or kill Redis."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.env import TIMEOUT, unavailable
from tidings.testing import free_port

__all__ = ["RedisServer", "own_redis_server", "redis_answers"]


def redis_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis at ``host:port`` answers PING."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` of the test's own, stopped by its PID.

    Without ``data_dir`` it keeps nothing (a restart loses everything); with
    one, it writes every command to an append-only file there first.
    """

    def __init__(self, binary: str, port: int, data_dir: Path | None = None) -> None:
        self.binary = binary
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.data_dir is None:
            command += ["--appendonly", "no"]
        else:
            command += [
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.data_dir),
            ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if redis_answers("127.0.0.1", self.port):
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def kill(self) -> None:
        """Kill it (resumed first, should a test have stopped it with SIGSTOP)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=TIMEOUT)


@contextmanager
def own_redis_server(data_dir: Path | None = None) -> Iterator[RedisServer]:
    """Start a ``redis-server`` on a free port, and kill it at the end.

    Skips (fails under TIDINGS_STRICT=1) when ``redis-server`` is not installed.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed")
    server = RedisServer(binary, free_port(), data_dir=data_dir)
    server.start()
    try:
        yield server
    finally:
        server.kill()
