"""NginxProcess: Debian's nginx with the documented Tidings config, in front of a test server.

The site config is ``examples/deploy/nginx.conf``, the file docs/deployment.md
includes verbatim; only its listen address and upstream port are changed to
free loopback ports. nginx runs in the foreground with its prefix, logs,
temporary files and pid file under a directory of the test, and is stopped
by its PID.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.env import TIMEOUT, unavailable
from tidings.testing import free_port

NGINX = Path("/usr/sbin/nginx")
SITE = Path(__file__).parents[2] / "examples" / "deploy" / "nginx.conf"
#: What the documented site config says, and what the test puts in its place.
LISTEN = "listen 80;"
UPSTREAM = "server 127.0.0.1:8000;"


def site_config(upstream_port: int, port: int) -> str:
    """The documented site config, listening on ``port`` in front of ``upstream_port``."""
    text = SITE.read_text()
    assert text.count(LISTEN) == 1, f"{SITE} has no single {LISTEN!r}"
    assert text.count(UPSTREAM) == 1, f"{SITE} has no single {UPSTREAM!r}"
    return text.replace(LISTEN, f"listen 127.0.0.1:{port};").replace(
        UPSTREAM, f"server 127.0.0.1:{upstream_port};"
    )


def main_config(prefix: Path) -> str:
    """The top of an nginx.conf, as Debian's, with every path under ``prefix``."""
    user = ""
    if os.geteuid() == 0:  # workers would otherwise run as nobody, outside the test's directory
        user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};\n"
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {prefix / 'access.log'};\n"
        f"{temp}\n"
        "    include tidings.conf;\n"
        "}\n"
    )


class NginxProcess:
    """``nginx -p DIR -c DIR/nginx.conf -g 'daemon off; pid …; error_log …;'`` on a free port."""

    def __init__(self, directory: Path, upstream_port: int) -> None:
        if not NGINX.is_file():
            unavailable(f"nginx is not installed ({NGINX}; apt-get install nginx)")
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (directory / "tidings.conf").write_text(site_config(upstream_port, self.port))
        (directory / "nginx.conf").write_text(main_config(directory))
        self.error_log = directory / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> NginxProcess:
        globals_ = f"daemon off; pid {self.directory / 'nginx.pid'}; error_log {self.error_log};"
        command = [str(NGINX), "-e", str(self.error_log), "-p", f"{self.directory}/"]
        command += ["-c", str(self.directory / "nginx.conf"), "-g", globals_]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + TIMEOUT * 2
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen within {TIMEOUT * 2} s:\n{self.log()}")

    def log(self) -> str:
        return self.error_log.read_text(errors="replace")[-4000:] if self.error_log.exists() else ""

    def stop(self) -> None:
        """Stop (SIGTERM: nginx's fast shutdown), then SIGKILL if it does not exit in time."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=TIMEOUT)

    def __enter__(self) -> NginxProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
