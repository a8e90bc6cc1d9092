"""docs/tutorial.md, step by step, as a reader runs it: a server, a listener in a second
terminal, publishes, Ctrl-C, and a resume with exactly the cursor the listener printed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sybil import Document
from sybil.parsers.markdown import CodeBlockParser

from tests.support.docs import DOCS_ADDRESS, ROOT, commands
from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess

TUTORIAL = ROOT / "docs" / "tutorial.md"
STOPPED = re.compile(r"tidings: stopped; resume with --last-event-id (\S+)")


def blocks(language: str) -> list[str]:
    """The page's blocks in one language, in page order (Sybil reads them)."""
    document = Document.parse(str(TUTORIAL), CodeBlockParser(language, lambda _: None))
    return [str(example.parsed) for example in document]


class Terminal:
    """Runs the tutorial's commands as a shell would, against one server."""

    def __init__(self, server: ServerProcess, directory: Path) -> None:
        self.address = server.url.removeprefix("http://")
        self.directory = directory
        self.env = {**os.environ, "TIDINGS_URL": server.url}

    def command(self, line: str) -> list[str]:
        return ["bash", "-c", "exec " + line.replace(DOCS_ADDRESS, self.address)]

    def run(self, line: str) -> str:
        done = subprocess.run(
            self.command(line), cwd=self.directory, env=self.env, capture_output=True,
            timeout=TIMEOUT * 4, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    def start(
        self, line: str, *, connected: str = "tidings: listening to "
    ) -> subprocess.Popen[str]:
        """Start a command that streams, as in another terminal, once it is connected."""
        process = subprocess.Popen(
            self.command(line), cwd=self.directory, env=self.env, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        said = process.stderr if connected.startswith("tidings:") else process.stdout
        assert said is not None
        assert said.readline().startswith(connected)
        return process


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    (tmp_path / ".venv").symlink_to(sys.prefix)
    # Step 1's `make serve` runs `tidings serve`: the same command, on a free port.
    with ServerProcess() as server:
        yield Terminal(server, tmp_path)


def read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().rstrip("\n")


def stop(process: subprocess.Popen[str]) -> str:
    """Ctrl-C; the last line the listener printed on stderr."""
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=TIMEOUT * 2)
    assert process.returncode == 130, err
    return err.splitlines()[-1]


@pytest.mark.timeout(120)
def test_the_tutorial_runs_and_resumes_exactly(terminal: Terminal) -> None:
    text = TUTORIAL.read_text()
    serve, (listen,), (curl_sse,), publish, (resume,) = (list(commands(b)) for b in blocks("bash"))
    assert serve[0].startswith("make serve")
    # Step 2, in a second terminal.
    listener = terminal.start(listen)
    curl = terminal.start(curl_sse, connected="retry: ")
    # Step 3: both publishes reach the listener, printed as the page shows.
    for line in publish:
        terminal.run(line)
    first, second = read_line(listener), read_line(listener)
    assert f"`{first}`" in text
    assert second.startswith("news #1 message ")
    assert curl.stdout is not None
    while (line := curl.stdout.readline()) != 'data: {"title":"Tidings 0.1"}\n':
        assert line, "curl's stream ended"
    curl.send_signal(signal.SIGINT)
    curl.communicate(timeout=TIMEOUT * 2)
    # Step 4: Ctrl-C prints the cursor; the page's example has the same shape.
    printed = stop(listener)
    cursor = STOPPED.fullmatch(printed)
    assert cursor, printed
    (example,) = STOPPED.findall(text)
    assert resume.endswith(f"--last-event-id {example}")
    missed = [terminal.run(line) for line in publish]  # "publish a few more events"
    assert [orjson_offset(answer) for answer in missed] == [2, 2]
    listener = terminal.start(resume.replace(example, cursor[1]))
    try:
        assert read_line(listener).startswith("chat #2 message ")
        assert read_line(listener).startswith("news #2 message ")
        terminal.run(publish[0])  # live after the missed ones, with nothing in between
        assert read_line(listener).startswith("chat #3 message ")
    finally:
        stop(listener)


@pytest.mark.timeout(60)
def test_the_tutorial_python_step_prints_its_event(terminal: Terminal, tmp_path: Path) -> None:
    (source,) = blocks("python")
    script = tmp_path / "step5.py"
    script.write_text(source.replace(DOCS_ADDRESS, terminal.address))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, timeout=TIMEOUT * 4, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == "chat 1 {'user': 'py', 'text': 'hello from Python'}\n"


def orjson_offset(answer: str) -> int:
    offset: int = orjson.loads(answer)["offset"]
    return offset


def test_every_block_of_the_tutorial_is_run_here() -> None:
    # make serve, listen, curl, the publishes and the resume; then step 5.
    assert len(blocks("bash")) == 5
    assert len(blocks("python")) == 1
    assert blocks("sh") == []
