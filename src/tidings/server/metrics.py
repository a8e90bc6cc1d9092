"""Prometheus metrics: ``GET /metrics`` in the Prometheus text format.

Theory of operation
-------------------

Each app has a :class:`Metrics` with a ``CollectorRegistry`` of its own (never
prometheus-client's global one), so two apps in one process do not collide.
Almost every series is read at scrape time from counters the hub, the server
state and the LLM relay keep anyway (plain integer attributes): a custom
collector builds the families when Prometheus asks, and publishing or
delivering costs nothing more for having metrics.

Two histograms are observed as things happen, both off the per-delivery
path: the publish-to-write latency of one dispatched event in
:data:`LATENCY_EVERY` (``Hub.observe_latency``: one counter per event,
never per subscriber), and the time to first token of each finished LLM
generation. The process collector adds ``process_*`` (resident memory, open
file descriptors, CPU time) where the platform has ``/proc``.

Deliveries are counted by the hub in batches: each channel keeps its
subscribers counted by transport (updated when one joins or leaves), and a
dispatched event adds those counts, one addition per event per channel and
transport, never one per subscriber.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from tidings.hub import HubStats
from tidings.server.auth import Action
from tidings.server.limits import SOCKETS
from tidings.server.rates import REFUSAL_REASONS

if TYPE_CHECKING:
    from tidings.server.state import ServerState

__all__ = ["CONTENT_TYPE", "LATENCY_EVERY", "Metrics", "metrics"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
#: One dispatched event in this many has its publish-to-write latency observed.
LATENCY_EVERY: Final = 16
#: Seconds from publish to write: a loopback hop is well under a millisecond,
#: a Redis round trip a few, a stalled event loop far more.
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
#: Seconds to the first token of an LLM generation.
TTFT_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
#: How a generation ends (``tidings_llm_generations_ended_total``).
LLM_OUTCOMES: Final = ("completed", "failed", "cancelled")


class Metrics:
    """The metrics of one app: its registry, its collectors and its histograms."""

    def __init__(self, state: ServerState) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "tidings_publish_to_write_seconds",
            "Seconds from an event's publish to its hand-off to the local subscribers "
            f"(written, or queued when a socket is paused); one event in {LATENCY_EVERY}.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "tidings_llm_time_to_first_token_seconds",
            "Seconds from the start of an LLM generation to its first token.",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.collector = StateCollector(state)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        state.hub.observe_latency(self.latency.observe, every=LATENCY_EVERY)
        if state.relay is not None:
            state.relay.ttft_observer = self.ttft.observe

    def render(self, *, sockets: Callable[[], int] | None = None) -> bytes:
        """Every series, in the Prometheus text format; ``sockets`` tells how many
        sockets the server holds (``tidings serve`` offers it to each request)."""
        self.collector.sockets = sockets
        try:
            return generate_latest(self.registry)
        finally:
            self.collector.sockets = None


class StateCollector(Collector):
    """Reads the hub's, the server's and the relay's counters when scraped."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        #: Set for the duration of one scrape (see ``Metrics.render``).
        self.sockets: Callable[[], int] | None = None

    def collect(self) -> Iterator[Metric]:
        state = self.state
        stats = state.hub.stats()
        connections = GaugeMetricFamily(
            "tidings_connections", "Open streaming connections.", labels=["transport"]
        )
        for transport, count in sorted(state.connections.counts().items()):
            connections.add_metric([transport], count)
        yield connections
        yield from self._open()
        yield GaugeMetricFamily("tidings_subscriptions", "Open subscriptions.", stats.subscriptions)
        yield GaugeMetricFamily(
            "tidings_subscribers", "Channel subscriptions, summed over channels.", stats.subscribers
        )
        yield GaugeMetricFamily(
            "tidings_channels", "Channels with local subscribers.", stats.channels
        )
        yield GaugeMetricFamily(
            "tidings_outbox_bytes",
            "Bytes waiting in subscribers' outboxes.",
            stats.outbox_bytes,
        )
        yield from _history(stats)
        yield CounterMetricFamily(
            "tidings_published", "Events published through this server.", stats.published
        )
        delivered = CounterMetricFamily(
            "tidings_delivered",
            "Events handed to local subscriptions (replays included), by transport: "
            "sse, ws, llm (the relay's streams), hub (subscriptions made in process).",
            labels=["transport"],
        )
        for transport, count in sorted(stats.delivered_by.items()):
            delivered.add_metric([transport], count)
        yield delivered
        dropped = CounterMetricFamily(
            "tidings_dropped", "Events dropped before delivery, by reason.", labels=["reason"]
        )
        dropped.add_metric(["overflow"], stats.dropped)
        yield dropped
        yield CounterMetricFamily(
            "tidings_slow_consumer_disconnects",
            "Subscriptions closed because their outbox overflowed.",
            stats.slow_consumers,
        )
        refused = CounterMetricFamily(
            "tidings_publish_refused",
            "Publishes refused, by reason: "
            "rate, too_large, forbidden, invalid, hook, backend, draining.",
            labels=["reason"],
        )
        for reason in REFUSAL_REASONS:
            refused.add_metric([reason], state.gate.refused[reason])
        yield refused
        errors = CounterMetricFamily(
            "tidings_backend_errors",
            "Operations that failed because the backend was unavailable, by operation.",
            labels=["op"],
        )
        for op, count in sorted(state.hub.backend_errors().items()):
            errors.add_metric([op], count)
        yield errors
        yield GaugeMetricFamily(
            "tidings_draining",
            "1 once the server is stopping (/readyz answers 503 from then on), else 0.",
            1 if state.draining else 0,
        )
        yield from self._llm()

    def _open(self) -> Iterator[Metric]:
        """What ``max_connections`` and ``max_connections_per_client`` limit."""
        counts = self.state.slots.stats()
        yield GaugeMetricFamily(
            "tidings_open_requests",
            "HTTP requests in progress and streams open now (this scrape included).",
            counts["total"],
        )
        yield GaugeMetricFamily(
            "tidings_open_clients",
            "Distinct client addresses with something open.",
            counts["clients"],
        )
        if self.sockets is not None:
            yield GaugeMetricFamily(
                "tidings_open_sockets",
                "Sockets the server holds open, idle keep-alive ones included.",
                self.sockets(),
            )

    def _llm(self) -> Iterator[Metric]:
        relay = self.state.relay
        if relay is None:
            return
        stats = relay.stats()
        generations = GaugeMetricFamily(
            "tidings_llm_generations",
            "LLM generations the relay holds (running, or finished within llm.ttl), by state.",
            labels=["state"],
        )
        for name, count in relay.states().items():
            generations.add_metric([name], count)
        yield generations
        yield CounterMetricFamily(
            "tidings_llm_generations_started", "LLM generations started.", stats.started
        )
        ended = CounterMetricFamily(
            "tidings_llm_generations_ended", "LLM generations ended, by outcome.", labels=["state"]
        )
        for name in LLM_OUTCOMES:
            ended.add_metric([name], getattr(stats, name))
        yield ended
        yield CounterMetricFamily(
            "tidings_llm_tokens", "Content and tool-call deltas relayed.", stats.tokens
        )


def _history(stats: HubStats) -> Iterator[Metric]:
    """What the backend keeps in this process (absent when history lives elsewhere, as
    with Redis)."""
    for name, value, meaning in (
        ("channels", stats.history_channels, "Channels whose history this process keeps."),
        ("events", stats.history_events, "Events kept in history in this process."),
        ("bytes", stats.history_bytes, "Bytes counted for history (history_total_bytes)."),
    ):
        if value is not None:
            yield GaugeMetricFamily(f"tidings_history_{name}", meaning, value)


async def metrics(request: Request) -> Response:
    """``GET /metrics``: server-wide, so an API key once authentication is configured."""
    state: ServerState = request.app.state.tidings
    authority = state.authority
    authority.authorize(authority.principal(request.scope), Action.METRICS)
    assert state.metrics is not None, "create_app() gives every app its metrics"
    sockets = request.scope.get("extensions", {}).get(SOCKETS)
    return Response(state.metrics.render(sockets=sockets), media_type=CONTENT_TYPE)
