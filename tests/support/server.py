"""ServerProcess: a real ``tidings serve`` subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from tests.support.env import TIMEOUT
from tests.support.tls import TLSFiles
from tidings.testing import free_port


class ServerProcess:
    """Start, restart and stop ``python -m tidings serve`` as a user would run it.

    Settings come from ``env`` (``TIDINGS_*`` variables) and ``config`` (TOML
    text written to a temporary file). With ``tls``, it serves HTTP/2 over
    TLS (``--http2``) at an ``https://`` URL. ``python`` is the interpreter
    (another venv's, to run an installed wheel). The process is stopped by its PID.
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        config: str | None = None,
        args: Sequence[str] = (),
        port: int | None = None,
        tls: TLSFiles | None = None,
        python: str | Path = sys.executable,
    ) -> None:
        self.port = port or free_port()
        self.python = str(python)
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.env = {**os.environ, "TIDINGS_LOG_LEVEL": "warning", **(env or {})}
        self.args = list(args)
        if tls is not None:
            self.args += ["--http2", "--certfile", str(tls.cert), "--keyfile", str(tls.key)]
        self._dir = tempfile.TemporaryDirectory(prefix="tidings-test-")
        if config is not None:
            path = Path(self._dir.name) / "tidings.toml"
            path.write_text(config)
            self.args += ["--config", str(path)]
        self.log_path = Path(self._dir.name) / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = TIMEOUT * 3) -> ServerProcess:
        """Start the server; return once it answers ``/healthz``, within ``timeout`` seconds."""
        command = [self.python, "-m", "tidings", "serve", "--port", str(self.port), *self.args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        verify = self.tls.client_context() if self.tls else True
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1, verify=verify).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def rss_kib(self) -> int:
        """The server's resident memory now, in KiB (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def kill(self) -> None:
        """Kill -9: no cleanup, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=TIMEOUT)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL if it does not exit in time."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=TIMEOUT * 2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=TIMEOUT)

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
