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


def test_local_links_resolve() -> None:
    broken = []
    for path in markdown_files():
        for target in LINK.findall(path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)
