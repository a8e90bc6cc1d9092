"""Docs stay true: examples included verbatim, local links resolve."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
INCLUDE = re.compile(r"<!-- include: (examples/[\w/.-]+) -->\n```\w*\n(.*?)```", re.S)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_included_examples_match_their_files() -> None:
    found = 0
    for path in markdown_files():
        for example, block in INCLUDE.findall(path.read_text()):
            assert (ROOT / example).read_text() == block, f"{path.name}: {example} differs"
            found += 1
    assert found >= 1


FENCE = re.compile(r"^\s*```(.*)$")


def test_every_code_block_names_its_language() -> None:
    """The docs runner (tests/support/docs.py) picks blocks by language: a block
    without one would be neither run nor marked, so every block names one
    (``text`` for output, diagrams and wire samples)."""
    unnamed = []
    for path in markdown_files():
        inside = False
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = FENCE.match(line)
            if match is None:
                continue
            if not inside and not match.group(1).strip():
                unnamed.append(f"{path.relative_to(ROOT)}:{number}")
            inside = not inside
    assert not unnamed, "code blocks without a language: " + ", ".join(unnamed)


def test_local_links_resolve() -> None:
    broken = []
    for path in markdown_files():
        for target in LINK.findall(path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)
