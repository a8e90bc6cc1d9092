"""The import fences of DESIGN.md / STYLE.md: a test fails when a layer imports upward."""

from __future__ import annotations

import ast
from pathlib import Path

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
    "redis": ("hub/backends/redis.py",),
    "httpx": ("client/", "llm/providers/openai.py", "cli.py", "bench.py"),
    "websockets": ("client/socket.py", "server/fastwrite.py", "bench.py"),
    "uvicorn": ("cli.py", "testing.py", "server/fastwrite.py", "server/serve.py"),
    "hypercorn": ("cli.py",),
    "rich": ("cli.py",),
    "asyncio": ("hub/", "llm/", "jobs/", "server/", "client/", "cli.py", "testing.py", "bench.py"),
}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules() -> list[tuple[str, Path]]:
    return [(path.relative_to(SRC).as_posix(), path) for path in sorted(SRC.rglob("*.py"))]


def test_layers_only_import_downward() -> None:
    problems = []
    for relative, path in modules():
        layer = relative.split("/")[0].removesuffix(".py")
        allowed = ALLOWED_TIDINGS.get(layer)
        if allowed is None:
            continue  # cli.py, testing.py, __init__.py, __main__.py sit on top
        for name in imports(path):
            parts = name.split(".")
            if parts[0] == "tidings" and len(parts) > 1 and parts[1] not in allowed:
                problems.append(f"{relative} imports {name}")
    assert not problems, "\n".join(problems)


def test_third_party_packages_stay_behind_their_fences() -> None:
    problems = []
    for relative, path in modules():
        for name in imports(path):
            top = name.split(".")[0]
            fence = FENCED.get(top)
            if fence is not None and not relative.startswith(fence):
                problems.append(
                    f"{relative} imports {name} (allowed only in {', '.join(fence) or 'tests'})"
                )
    assert not problems, "\n".join(problems)


def test_the_fences_are_enforced_here_too() -> None:
    """The checker itself finds a violation (so a broken checker cannot pass silently)."""
    fake = SRC / "hub" / "hub.py"
    assert "asyncio" in imports(fake)
    assert any(name.startswith("tidings.") for name in imports(fake))
