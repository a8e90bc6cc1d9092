"""The pub/sub core: asyncio only, no HTTP."""

from tidings.hub.backends.base import Backend, ChannelInfo, History
from tidings.hub.backends.memory import MemoryBackend
from tidings.hub.event import Encoding, Event, Item, Reset
from tidings.hub.hub import ChannelSummary, Hub, Page
from tidings.hub.names import NamespaceOptions, Namespaces, validate_channel
from tidings.hub.presence import ClientInfo
from tidings.hub.stats import HubStats
from tidings.hub.subscription import CloseReason, OverflowPolicy, Subscribed, Subscription

__all__ = [
    "Backend",
    "ChannelInfo",
    "ChannelSummary",
    "ClientInfo",
    "CloseReason",
    "Encoding",
    "Event",
    "History",
    "Hub",
    "HubStats",
    "Item",
    "MemoryBackend",
    "NamespaceOptions",
    "Namespaces",
    "OverflowPolicy",
    "Page",
    "Reset",
    "Subscribed",
    "Subscription",
    "validate_channel",
]
