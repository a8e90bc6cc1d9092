"""What the server's unit tests share: a hub with one namespace of each restriction."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.namespaces import restricted_namespaces
from tidings.hub import Hub


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    """A hub over ``restricted_namespaces()`` (a test module may define its own)."""
    async with Hub(namespaces=restricted_namespaces()) as hub:
        yield hub
