"""client/backoff.py: exponential growth, full jitter within bounds, retry: honoured."""

from __future__ import annotations

import random

import pytest

from tidings.client.backoff import Backoff


def test_delays_are_jittered_within_exponential_bounds() -> None:
    backoff = Backoff(base=0.5, cap=4.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    uppers = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(0 <= delay <= upper for delay, upper in zip(delays, uppers, strict=True))
    assert len(set(delays)) == 8  # jittered, not fixed steps


def test_reset_and_exhaustion() -> None:
    backoff = Backoff(max_attempts=2)
    assert not backoff.exhausted
    backoff.next_delay()
    backoff.next_delay()
    assert backoff.exhausted
    backoff.reset()
    assert not backoff.exhausted
    assert backoff.upper(0) == backoff.base


def test_server_retry_becomes_the_base() -> None:
    backoff = Backoff(cap=10)
    backoff.honour_retry(1500)
    assert backoff.upper(0) == 1.5
    assert backoff.upper(1) == 3.0
    backoff.honour_retry(60_000)
    assert backoff.upper(0) == 10  # capped


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=0)
    with pytest.raises(ValueError, match="max_attempts"):
        Backoff(max_attempts=0)
