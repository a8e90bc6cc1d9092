"""Hub counters and the snapshot ``Hub.stats()`` returns."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

__all__ = ["Counters", "HubStats"]


class HubStats(NamedTuple):
    """A snapshot of a hub's state and counters (since it was created).

    Attributes:
        channels: Channels with at least one local subscriber.
        subscriptions: Open subscriptions.
        subscribers: Channel subscriptions summed over channels.
        published: Publishes made through this hub.
        delivered: Events handed to local subscriptions (replays included).
        delivered_by: ``delivered`` by the transport of the subscription
            (``Hub.subscription(transport=...)``: the server's ``sse``, ``ws``
            and ``llm``, ``hub`` for subscriptions made in process).
        dropped: Events dropped from slow subscribers' outboxes (``drop`` policy).
        slow_consumers: Subscriptions closed because their outbox overflowed.
        outbox_bytes: Bytes waiting in the outboxes of all subscriptions.
        history_channels: Channels whose state the backend keeps in this
            process (None: history lives elsewhere, as with Redis).
        history_events: Events kept in history in this process (or None).
        history_bytes: Bytes counted for history in this process (or None):
            what ``history_total_bytes`` bounds.
    """

    channels: int
    subscriptions: int
    subscribers: int
    published: int
    delivered: int
    dropped: int
    slow_consumers: int
    outbox_bytes: int = 0
    history_channels: int | None = None
    history_events: int | None = None
    history_bytes: int | None = None
    delivered_by: Mapping[str, int] = MappingProxyType({})


class Counters:
    """The hub's mutable counters; plain attributes, so counting is cheap."""

    __slots__ = ("backend_errors", "delivered", "dropped", "published", "slow_consumers")

    def __init__(self) -> None:
        self.published = 0
        #: Deliveries by transport; fan-out adds to it once per event per
        #: channel and transport, never per subscriber.
        self.delivered: Counter[str] = Counter()
        self.dropped = 0
        self.slow_consumers = 0
        #: Operations that failed with BackendUnavailable, by operation.
        self.backend_errors: dict[str, int] = {}

    def backend_error(self, op: str) -> None:
        """Count one operation that failed because the backend was unavailable."""
        self.backend_errors[op] = self.backend_errors.get(op, 0) + 1
