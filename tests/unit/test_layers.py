"""The import fences of DESIGN.md / STYLE.md: a test fails when a layer imports upward."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import TIMEOUT

SRC = Path(__file__).parents[2] / "src" / "tidings"

# Which tidings modules each layer may import (by prefix), and which
# third-party packages are fenced to which modules.
ALLOWED_TIDINGS = {
    "errors": set(),
    "types": set(),
    "wire": {"errors", "types", "wire"},
    "hub": {"errors", "types", "wire", "hub"},
    "llm": {"errors", "types", "wire", "hub", "llm"},
    "jobs": {"errors", "types", "wire", "hub", "jobs"},
    "client": {"errors", "types", "wire", "client"},
    "server": {"errors", "types", "wire", "hub", "llm", "jobs", "server", "settings"},
    "settings": {"errors", "types", "wire", "hub", "llm"},
}
FENCED = {
    "starlette": ("server/", "testing.py"),
    "fastapi": (),
    "redis": ("hub/backends/redis/",),
    "httpx": (
        "client/",
        "llm/providers/anthropic.py",
        "llm/providers/openai.py",
        "llm/providers/upstream.py",
        "server/proxy.py",
        "cli.py",
        "bench.py",
    ),
    "websockets": ("client/socket.py", "server/fastwrite.py", "server/guard.py", "bench.py"),
    "uvicorn": (
        "cli.py",
        "testing.py",
        "server/fastwrite.py",
        "server/guard.py",
        "server/serve.py",
    ),
    "hypercorn": ("cli.py", "server/serve_h2.py"),
    "rich": ("cli.py",),
    "asyncio": ("hub/", "llm/", "jobs/", "server/", "client/", "cli.py", "testing.py", "bench.py"),
}


def imports(source: str) -> set[str]:
    """The absolute imports of a module's source."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules() -> list[tuple[str, str]]:
    """Every module of the package: its path relative to ``src/tidings`` and its source."""
    return [
        (path.relative_to(SRC).as_posix(), path.read_text()) for path in sorted(SRC.rglob("*.py"))
    ]


def upward_imports(relative: str, source: str) -> list[str]:
    """The imports of tidings modules that ``relative``'s layer may not use."""
    allowed = ALLOWED_TIDINGS.get(relative.split("/")[0].removesuffix(".py"))
    if allowed is None:
        return []  # cli.py, testing.py, __init__.py, __main__.py sit on top
    return [
        f"{relative} imports {name}"
        for name in sorted(imports(source))
        if (parts := name.split("."))[0] == "tidings" and len(parts) > 1 and parts[1] not in allowed
    ]


def fence_breaches(relative: str, source: str) -> list[str]:
    """The imports of fenced third-party packages outside their fence."""
    problems = []
    for name in sorted(imports(source)):
        fence = FENCED.get(name.split(".")[0])
        if fence is not None and not relative.startswith(fence):
            problems.append(
                f"{relative} imports {name} (allowed only in {', '.join(fence) or 'tests'})"
            )
    return problems


def test_layers_only_import_downward() -> None:
    problems = [problem for module in modules() for problem in upward_imports(*module)]
    assert not problems, "\n".join(problems)


def test_third_party_packages_stay_behind_their_fences() -> None:
    problems = [problem for module in modules() for problem in fence_breaches(*module)]
    assert not problems, "\n".join(problems)


def test_the_fences_are_enforced_here_too() -> None:
    """The checker itself finds a violation (so a broken checker cannot pass silently)."""
    fake = (SRC / "hub" / "hub.py").read_text()
    assert "asyncio" in imports(fake)
    assert any(name.startswith("tidings.") for name in imports(fake))
    # A hub module that imports the server layer and Starlette, and redis
    # outside the Redis backend package: each import is reported.
    bad = (
        "import asyncio\n"
        "import redis.asyncio\n"
        "from starlette.responses import Response\n"
        "from tidings.server.app import create_app\n"
        "from tidings.hub.event import Event\n"
    )
    assert upward_imports("hub/backends/memory.py", bad) == [
        "hub/backends/memory.py imports tidings.server.app"
    ]
    assert fence_breaches("hub/backends/memory.py", bad) == [
        "hub/backends/memory.py imports redis.asyncio (allowed only in hub/backends/redis/)",
        "hub/backends/memory.py imports starlette.responses (allowed only in server/, testing.py)",
    ]
    assert fence_breaches("hub/backends/redis/fanout.py", "import redis.asyncio\n") == []


# What a client-only process must not load: the hub and everything above it.
UPPER_LAYERS = (
    "tidings.hub",
    "tidings.server",
    "tidings.llm",
    "tidings.jobs",
    "starlette",
    "uvicorn",
)


@pytest.mark.parametrize("module", ["tidings.client", "tidings.wire.sse", "tidings.wire.protocol"])
def test_lower_layers_load_no_upper_layer_at_run_time(module: str) -> None:
    """The import fences hold at run time too (``tidings/__init__.py`` loads the hub lazily)."""
    script = (
        f"import sys, {module}; "
        f"print('\\n'.join(sorted(n for n in sys.modules if n.startswith({UPPER_LAYERS!r}))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=TIMEOUT
    ).stdout.split()
    assert loaded == [], f"import {module} loaded {', '.join(loaded)}"
