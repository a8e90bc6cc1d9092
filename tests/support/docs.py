"""The Python and shell blocks of README.md and docs/, run with Sybil against a real server.

Each page is one :class:`Page`: its own namespace (its Python blocks share it in
page order, as one script would, with ``__name__ == "__main__"``) and its own
``tidings serve`` (memory backend) on a free port, started at the first block
that needs it. In every block ``127.0.0.1:8000``, where ``tidings serve``
listens by default, becomes that server's address; shell blocks also get
``TIDINGS_URL``.

HTML comments, which a reader of the page does not see, say what else to do:

- ``<!-- include: examples/NAME.py -->`` right before a block: the block must
  equal that file (tests/integration/test_examples.py runs the file).
- ``<!-- skip: next "why" -->`` (Sybil's): the next block is not run, for the
  reason given; ``skip: start "why"`` … ``skip: end`` for several.
- ``<!-- server: VAR=value ... -->``: the blocks that follow run against a
  server started with these environment variables (none: a plain server again).

A shell block runs one command at a time (a line ending in ``\\`` goes on), each
under a timeout, in a directory where ``.venv`` is the running virtualenv and
with its ``bin`` first on ``PATH``. A command that streams until Ctrl-C
(``tidings listen``, ``curl -N`` on ``/sse``) runs as in a second terminal:
it starts in the background, must have connected before the next command
and still be running after the last one, and must stop cleanly at SIGINT.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO
from unittest import SkipTest

from sybil import Document, Example, Region
from sybil.parsers.markdown import CodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer

from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess

ROOT = Path(__file__).parents[2]
#: Where the docs say the server is: ``tidings serve``'s default address.
DOCS_ADDRESS = "127.0.0.1:8000"
SHELLS = ("bash", "sh")
INCLUDE = re.compile(r"<!-- include: (\S+) -->\n\Z")
#: Commands that stream until Ctrl-C: where they say they are connected, and how.
STREAMING = {
    re.compile(r"\btidings listen\b"): ("stderr", b"tidings: listening to "),
    re.compile(r"\bcurl -N\b.*/sse\b"): ("stdout", b"retry: "),
}


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def commands(source: str) -> Iterator[str]:
    """The commands of a shell block: continuation lines joined, comments left out."""
    command = ""
    for line in source.splitlines():
        command += line.rstrip()
        if command.endswith("\\"):
            command = command[:-1] + " "
            continue
        if command.strip() and not command.lstrip().startswith("#"):
            yield command.strip()
        command = ""


class Page:
    """One page of the docs being run: its server, its shell directory, its parsers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env: dict[str, str] = {}
        self.server: ServerProcess | None = None
        #: Blocks run or compared with their example so far.
        self.checked = 0
        self._dir = tempfile.TemporaryDirectory(prefix="tidings-docs-")
        (Path(self._dir.name) / ".venv").symlink_to(sys.prefix)

    def parse(self) -> Document:
        parsers = [
            SkipParser(),
            self._python_blocks,
            *(CodeBlockParser(language, self._run_shell) for language in SHELLS),
            self._server_directives,
        ]
        document = Document.parse(str(self.path), *parsers)
        document.namespace["__name__"] = "__main__"
        return document

    def run(self) -> list[str]:
        """Evaluate every block in page order; return the reasons of those skipped."""
        skipped = []
        for example in self.parse():
            try:
                example.evaluate()
            except SkipTest as exc:
                skipped.append(str(exc))
        return skipped

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self._dir.cleanup()

    # The server of the page.

    @property
    def url(self) -> str:
        if self.server is None:
            self.server = ServerProcess(env=self.env).start()
        return self.server.url

    def localise(self, text: str) -> str:
        return text.replace(DOCS_ADDRESS, self.url.removeprefix("http://"))

    def _server_directives(self, document: Document) -> Iterable[Region]:
        lexer = DirectiveInHTMLCommentLexer("server", arguments=".*?")
        for lexed in lexer(document):
            yield Region(lexed.start, lexed.end, lexed.lexemes["arguments"], self._restart)

    def _restart(self, example: Example) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self.env = dict(item.split("=", 1) for item in shlex.split(example.parsed))

    # Python blocks: run, or compared with the example they include.

    def _python_blocks(self, document: Document) -> Iterable[Region]:
        for region in CodeBlockParser("python", self._run_python)(document):
            include = INCLUDE.search(document.text, 0, region.start)
            if include is not None:
                region.parsed = (include[1], str(region.parsed))
                region.evaluator = self._check_include
            yield region

    def _check_include(self, example: Example) -> None:
        path, block = example.parsed
        assert (ROOT / path).read_text() == block, f"the block differs from {path}"
        self.checked += 1

    def _run_python(self, example: Example) -> None:
        source = "\n" * (example.line + example.parsed.line_offset) + self.localise(example.parsed)
        exec(compile(source, example.path, "exec", dont_inherit=True), example.namespace)
        self.checked += 1

    # Shell blocks.

    def _run_shell(self, example: Example) -> None:
        env = {
            **os.environ,
            **self.env,  # what the server was started with, as in the reader's shell
            "TIDINGS_URL": self.url,
            "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ['PATH']}",
        }
        streams: list[tuple[str, subprocess.Popen[bytes]]] = []
        try:
            for command in commands(self.localise(example.parsed)):
                connected = next(
                    (said for pattern, said in STREAMING.items() if pattern.search(command)), None
                )
                if connected is None:
                    self._run_command(command, env)
                else:
                    streams.append((command, self._start_stream(command, env, *connected)))
            for command, process in streams:
                _interrupt(command, process)
            self.checked += 1
        finally:
            for _, process in streams:
                if process.poll() is None:
                    process.kill()
                    process.wait()

    def _run_command(self, command: str, env: dict[str, str]) -> None:
        done = subprocess.run(
            ["bash", "-c", command], cwd=self._dir.name, env=env, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=TIMEOUT * 6, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"`{command}` exited with {done.returncode}:\n"
            f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
        )

    def _start_stream(
        self, command: str, env: dict[str, str], io: str, connected: bytes
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=self._dir.name, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        first = _read_line(process.stdout if io == "stdout" else process.stderr)
        assert first.startswith(connected), f"`{command}` did not connect: {first!r}"
        return process


def _read_line(stream: IO[bytes] | None) -> bytes:
    """One line of a child's output, within the timeout (the child is killed after it)."""
    assert stream is not None
    line = b""

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError("no output within the timeout")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT * 2)
    try:
        line = stream.readline()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return line


def _interrupt(command: str, process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C a streaming command that must still be running; it must stop cleanly."""
    assert process.poll() is None, f"`{command}` stopped by itself with {process.returncode}"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=TIMEOUT * 2)
    assert process.returncode in (130, -signal.SIGINT), f"`{command}`: {process.returncode}"
    if command.lstrip().startswith((".venv/bin/tidings", "tidings")):
        assert err.decode().splitlines()[-1].startswith("tidings: stopped"), err.decode()
