"""Whether a publish is admitted now: the server is not draining, and the caller's
token buckets (its connection, its address, its principal) each hold a token.

Theory of operation
-------------------

A :class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate`` per
second; a publish takes one. Over any interval of ``t`` seconds a bucket
admits at most ``rate * t + burst`` publishes. A refused publish takes
nothing, and its refusal says when the next token arrives (``retry_after``).

:class:`PublishGate` is what :func:`tidings.server.ops.publish` asks, once
per publish on every transport. It keeps the buckets of client addresses
and of token subjects in two :class:`Buckets` tables, and a WebSocket
connection carries its own bucket on its :class:`~tidings.server.ops.Caller`.
A table is bounded: a bucket untouched long enough to be full again is the
same as a new one, so it is forgotten when met at the old end of the table;
when the table is full all the same, its least recently used bucket goes.
Server API keys are exempt (they publish for many users at once); anonymous
callers have no principal bucket, only their address's.

The gate also says when the server is draining (shutting down): then every
publish is refused with :class:`~tidings.errors.ShuttingDown`, and
:meth:`PublishGate.drain` returns once the publishes already admitted have
reached the hub, so that none of them is delivered to subscribers that are
being closed.

Every refused publish, whoever decided it (the gate, the authority, the
hub, the request's parser), is counted by reason on the gate
(:meth:`PublishGate.refuse`, :data:`REFUSAL_REASONS`): once per publish,
never on the delivery path. ``GET /metrics`` shows the counts as
``tidings_publish_refused_total{reason}``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tidings.errors import (
    HookFailed,
    PermissionDenied,
    ProxyUnavailable,
    PublishError,
    RateLimited,
    Rejected,
    ShuttingDown,
    TidingsError,
    Unauthorized,
)
from tidings.server.auth import Kind, Principal
from tidings.wire.codes import ErrorCode

__all__ = [
    "REFUSAL_REASONS",
    "Buckets",
    "PublishGate",
    "PublishRates",
    "TokenBucket",
    "refusal_reason",
    "retry_seconds",
]

#: Why a publish is refused: a rate limit, data or a body over its limit, no
#: right to publish there, a bad request (channel, event type, body, data), the
#: ``on_publish`` hook (it refused, failed or its proxy is down), a backend that
#: did not publish it, a server that is stopping.
REFUSAL_REASONS: Final = (
    "rate",
    "too_large",
    "forbidden",
    "invalid",
    "hook",
    "backend",
    "draining",
)

Clock = Callable[[], float]


def retry_seconds(retry_after: float) -> int:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return max(1, math.ceil(retry_after))


def refusal_reason(error: TidingsError) -> str:
    """The :data:`REFUSAL_REASONS` entry for the error that refused a publish."""
    if isinstance(error, RateLimited):
        return "rate"
    if isinstance(error, ShuttingDown):
        return "draining"
    if isinstance(error, PublishError):
        return "backend"
    if isinstance(error, (Unauthorized, PermissionDenied)):
        return "forbidden"
    if isinstance(error, (Rejected, HookFailed, ProxyUnavailable)):
        return "hook"
    if error.code == ErrorCode.TOO_LARGE:
        return "too_large"
    return "invalid"


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Take one token; return 0.0, or the seconds until one is there (nothing taken)."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate

    def give_back(self) -> None:
        """Return the token just taken (a later check refused the publish)."""
        self.tokens = min(self.burst, self.tokens + 1.0)

    def full_at(self) -> float:
        """When the bucket is full again if nothing takes from it."""
        return self.stamp + (self.burst - self.tokens) / self.rate


class Buckets:
    """Token buckets by key (an address, a subject), at most ``size`` of them."""

    __slots__ = ("_table", "burst", "rate", "size")

    def __init__(self, rate: float, burst: float, size: int) -> None:
        self.rate = rate
        self.burst = burst
        self.size = size
        self._table: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def take(self, key: str, now: float) -> float:
        """Take a token from ``key``'s bucket (see :meth:`TokenBucket.take`)."""
        table = self._table
        bucket = table.get(key)
        if bucket is None:
            self._forget(now)
            bucket = table[key] = TokenBucket(self.rate, self.burst, now)
        else:
            table.move_to_end(key)
        return bucket.take(now)

    def give_back(self, key: str) -> None:
        bucket = self._table.get(key)
        if bucket is not None:
            bucket.give_back()

    def _forget(self, now: float) -> None:
        """Drop buckets full again from the old end; the oldest one if the table is full."""
        table = self._table
        for _ in range(2):  # a little per insert keeps the table clean, amortised
            if not table:
                return
            key, bucket = next(iter(table.items()))
            if bucket.full_at() > now:
                break
            del table[key]
        if len(table) >= self.size:
            table.popitem(last=False)


@dataclass(frozen=True, slots=True)
class PublishRates:
    """Publish limits in publishes per second (0: no limit) and their shared settings.

    Attributes:
        connection: Per WebSocket connection.
        address: Per client address (all its connections and requests together).
        principal: Per token subject (all its connections and requests together).
        burst: Seconds of its rate that a bucket can save up (at least one publish).
        clients: Most buckets kept per table (addresses, subjects).
    """

    connection: float = 0.0
    address: float = 0.0
    principal: float = 0.0
    burst: float = 2.0
    clients: int = 100_000

    def burst_of(self, rate: float) -> float:
        return max(1.0, rate * self.burst)


class PublishGate:
    """Admits publishes (rates, draining) for one server; see the module's docstring."""

    def __init__(self, rates: PublishRates | None = None, *, clock: Clock = time.monotonic) -> None:
        self.rates = rates = rates or PublishRates()
        self.clock = clock
        #: True once the server drains: every publish is refused (503 ``unavailable``).
        self.draining = False
        #: Seconds a refused publisher is asked to wait while the server drains.
        self.drain_retry = 1.0
        self._addresses = (
            Buckets(rates.address, rates.burst_of(rates.address), rates.clients)
            if rates.address
            else None
        )
        self._principals = (
            Buckets(rates.principal, rates.burst_of(rates.principal), rates.clients)
            if rates.principal
            else None
        )
        #: Publishes refused, by reason (:data:`REFUSAL_REASONS`).
        self.refused: Counter[str] = Counter()
        self._admitted = 0
        self._settled: asyncio.Event | None = None

    def connection_bucket(self) -> TokenBucket | None:
        """A new bucket for one WebSocket connection (None: no per-connection limit)."""
        rate = self.rates.connection
        return TokenBucket(rate, self.rates.burst_of(rate), self.clock()) if rate else None

    def admit(self, principal: Principal, peer: str, bucket: TokenBucket | None) -> None:
        """Admit one publish, or refuse it; an admitted one must be :meth:`settle`\\ d.

        Raises:
            ShuttingDown: the server is draining.
            RateLimited: a bucket is empty (``retry_after`` says for how long).
        """
        if self.draining:
            raise ShuttingDown(self.drain_retry)
        if principal.kind is not Kind.SERVER:
            self._take(principal, peer, bucket)
        self._admitted += 1

    def _take(self, principal: Principal, peer: str, bucket: TokenBucket | None) -> None:
        """Take a token from each bucket that applies; on a refusal, give back those taken."""
        now = self.clock()
        if bucket is not None and (wait := bucket.take(now)):
            raise RateLimited(
                bucket.rate, retry_after=wait, what="publishes", scope="per connection"
            )
        addresses = self._addresses
        address = peer if addresses is not None else ""
        if addresses is not None and address and (wait := addresses.take(address, now)):
            if bucket is not None:
                bucket.give_back()
            raise RateLimited(
                addresses.rate, retry_after=wait, what="publishes", scope="per client address"
            )
        principals = self._principals
        if principals is not None and principal.kind is Kind.CLIENT and principal.sub is not None:
            wait = principals.take(principal.sub, now)
            if wait:
                if bucket is not None:
                    bucket.give_back()
                if addresses is not None and address:
                    addresses.give_back(address)
                raise RateLimited(
                    principals.rate, retry_after=wait, what="publishes", scope="per subject"
                )

    def refuse(self, error: TidingsError) -> None:
        """Count a publish refused with ``error``, wherever that was decided."""
        self.refused[refusal_reason(error)] += 1

    def settle(self) -> None:
        """An admitted publish has reached the hub (or failed)."""
        self._admitted -= 1
        if not self._admitted and self._settled is not None:
            self._settled.set()

    async def drain(self, *, wait: float) -> None:
        """Refuse publishes from now on; wait (at most ``wait`` s) for admitted ones."""
        self.draining = True
        if self._admitted:
            if self._settled is None or self._settled.is_set():
                self._settled = asyncio.Event()
            try:
                async with asyncio.timeout(wait):
                    await self._settled.wait()
            except TimeoutError:
                pass
