"""Test environment: strict mode, the timeout unit, and skip-or-fail."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

#: Under TIDINGS_STRICT=1 (CI), a test that would skip for a missing service fails.
STRICT = os.environ.get("TIDINGS_STRICT") == "1"
#: The unit of every wait in the tests, in seconds; scale it on slow machines.
TIMEOUT = 5.0 * float(os.environ.get("TIDINGS_TEST_TIMEOUT_FACTOR", "1"))


def unavailable(reason: str) -> NoReturn:
    """Skip (one-line reason) or, in strict mode, fail: CI never goes green by skipping."""
    if STRICT:
        pytest.fail(f"TIDINGS_STRICT=1 and {reason}", pytrace=False)
    pytest.skip(reason)
