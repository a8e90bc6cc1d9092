"""The reconnection delay schedule: exponential with full jitter.

Pure and deterministic given a random source, so it can be tested exactly.
"Full jitter" (each delay uniform in ``[0, min(cap, base * 2**attempt)]``)
spreads a crowd of clients that lost the same server, instead of bringing them
back in waves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Delays between reconnection attempts.

    Args:
        base: Seconds of the first step (replaced by the server's ``retry:``
            when it sends one, see :meth:`honour_retry`).
        cap: No delay is longer than this.
        max_attempts: Attempts before giving up; ``None`` retries forever.
        rng: The random source (tests pass a seeded one).
    """

    base: float = 0.5
    cap: float = 30.0
    max_attempts: int | None = None
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap <= 0:
            raise ValueError("base and cap must be > 0 seconds")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 or None")

    def honour_retry(self, milliseconds: int) -> None:
        """Use the server's ``retry:`` value as the base delay (capped by ``cap``)."""
        self.base = max(0.001, min(self.cap, milliseconds / 1000))

    def upper(self, attempt: int) -> float:
        """The largest delay of ``attempt`` (0-based)."""
        return min(self.cap, self.base * float(2 ** min(attempt, 62)))

    @property
    def exhausted(self) -> bool:
        return self.max_attempts is not None and self.attempt >= self.max_attempts

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count the attempt."""
        delay = self.rng.uniform(0, self.upper(self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """A connection succeeded: start again from the first step."""
        self.attempt = 0
