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
CODE = re.compile(rf"^\s*```({'|'.join(('python', *SHELLS))})$", re.M)
#: The pages with a Python or shell block (none in an index, say).
PAGES = [path for path in markdown_files() if path != TUTORIAL and CODE.search(path.read_text())]


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Iterator[Page]:
    page = Page(request.param)
    try:
        yield page
    finally:
        page.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "page", PAGES, ids=[str(path.relative_to(ROOT)) for path in PAGES], indirect=True
)
def test_page_runs_as_written(page: Page) -> None:
    skipped = page.run()
    if not page.checked:
        pytest.skip(f"no block runs here: {'; '.join(dict.fromkeys(skipped))}")


def test_pages_are_found() -> None:
    assert ROOT / "README.md" in PAGES
    assert len(PAGES) > 10
    assert ROOT / "docs" / "index.md" not in PAGES
    assert all(isinstance(path, Path) for path in PAGES)
