"""Every Python and shell block of README.md and docs/ runs as written (tests/support/docs.py).

The tutorial's blocks run in tests/integration/test_tutorial.py, in the order
and the terminals a reader would use.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.docs import ROOT, SHELLS, Page, markdown_files

TUTORIAL = ROOT / "docs" / "tutorial.md"
CODE = re.compile(rf"^\s*```({'|'.join(('python', *SHELLS))})$")
SKIP = re.compile(r'^<!-- skip: (next|start|end)(?: "(.*)")? -->$')


def blocks(text: str) -> list[str | None]:
    """The Python and shell blocks of a page, in order: each one's skip reason,
    or None for a block that runs (or is compared with its example)."""
    found: list[str | None] = []
    span: str | None = None
    following: str | None = None
    for line in text.splitlines():
        marker = SKIP.match(line.strip())
        if marker is not None:
            kind, reason = marker.groups()
            if kind == "next":
                following = reason or ""
            else:
                span = (reason or "") if kind == "start" else None
        elif CODE.match(line):
            found.append(following if following is not None else span)
            following = None
    return found


PAGES = [path for path in markdown_files() if path != TUTORIAL and blocks(path.read_text())]
#: Pages with a block that runs, and pages whose every block says why it cannot.
RUN = [path for path in PAGES if None in blocks(path.read_text())]
MARKED = [path for path in PAGES if path not in RUN]


def ids(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(ROOT)) for path in paths]


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Iterator[Page]:
    page = Page(request.param)
    try:
        yield page
    finally:
        page.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", RUN, ids=ids(RUN), indirect=True)
def test_page_runs_as_written(page: Page) -> None:
    skipped = page.run()
    assert page.checked == blocks(page.path.read_text()).count(None)
    assert all(skipped), f"{page.path.name}: a skip marker without a reason"


@pytest.mark.parametrize("page", MARKED, ids=ids(MARKED), indirect=True)
def test_a_page_that_cannot_run_says_why_for_every_block(page: Page) -> None:
    skipped = page.run()  # Sybil's own reading of the markers: every block skipped
    assert page.checked == 0
    assert page.server is None  # nothing asked for a server
    assert len(skipped) == len(blocks(page.path.read_text()))
    assert all(reason.strip() for reason in skipped), f"{page.path.name}: a reason is missing"


def test_pages_are_found() -> None:
    assert ROOT / "README.md" in RUN
    assert MARKED  # the benchmarks and releasing pages, say
    assert len(PAGES) > 10
    assert ROOT / "docs" / "index.md" not in PAGES
    assert all(isinstance(path, Path) for path in PAGES)
