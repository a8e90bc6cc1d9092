"""Tidings: real-time streaming for Python from one pub/sub hub with history and exact resume."""

from tidings.errors import (
    BackendUnavailable,
    InvalidChannel,
    InvalidCursor,
    InvalidPublication,
    PermissionDenied,
    PublishError,
    SubscriptionClosed,
    TidingsError,
)
from tidings.hub import (
    Event,
    Hub,
    MemoryBackend,
    NamespaceOptions,
    Namespaces,
    OverflowPolicy,
    Reset,
    Subscription,
)
from tidings.types import Position

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
    "Reset",
    "Subscription",
    "SubscriptionClosed",
    "TidingsError",
    "__version__",
]
