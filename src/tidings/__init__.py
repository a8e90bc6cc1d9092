"""Tidings: real-time streaming for Python from one pub/sub hub with history and exact resume.

The hub's names (``Hub``, ``Event``, ``Subscription`` …) are loaded on first
use (PEP 562), so ``import tidings.client`` or ``import tidings.wire.sse``
loads no hub and no server code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tidings.errors import (
    BackendUnavailable,
    InvalidChannel,
    InvalidCursor,
    InvalidPublication,
    PermissionDenied,
    PublishError,
    Rejected,
    SubscriptionClosed,
    TidingsError,
)
from tidings.types import Position
from tidings.wire.reset import Reset

if TYPE_CHECKING:
    from tidings.hub import (
        Event,
        Hub,
        MemoryBackend,
        NamespaceOptions,
        Namespaces,
        OverflowPolicy,
        Subscription,
    )

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "Event",
    "Hub",
    "InvalidChannel",
    "InvalidCursor",
    "InvalidPublication",
    "MemoryBackend",
    "NamespaceOptions",
    "Namespaces",
    "OverflowPolicy",
    "PermissionDenied",
    "Position",
    "PublishError",
    "Rejected",
    "Reset",
    "Subscription",
    "SubscriptionClosed",
    "TidingsError",
    "__version__",
]

#: Names loaded on first access, and the module each comes from.
_LAZY = {
    "Event": "tidings.hub",
    "Hub": "tidings.hub",
    "MemoryBackend": "tidings.hub",
    "NamespaceOptions": "tidings.hub",
    "Namespaces": "tidings.hub",
    "OverflowPolicy": "tidings.hub",
    "Subscription": "tidings.hub",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
