"""server/rates.py: token buckets, the bounded bucket tables, and the publish gate."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import RateLimited, ShuttingDown
from tidings.server.auth import ANONYMOUS, Kind, Principal
from tidings.server.rates import (
    Buckets,
    PublishGate,
    PublishRates,
    TokenBucket,
    retry_seconds,
)

CLIENT = Principal(Kind.CLIENT, "alice")
SERVER = Principal(Kind.SERVER, "backend")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@given(
    rate=st.floats(0.5, 1000.0),
    burst=st.floats(1.0, 100.0),
    steps=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=300),
)
def test_a_bucket_never_admits_more_than_rate_times_t_plus_burst(
    rate: float, burst: float, steps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    now, admitted = 0.0, 0
    for step in steps:
        now += step
        if bucket.take(now) == 0.0:
            admitted += 1
        assert admitted <= rate * now + burst + 1e-6


@given(rate=st.floats(0.5, 1000.0), burst=st.floats(1.0, 100.0))
def test_a_refusal_says_when_the_next_token_is_there(rate: float, burst: float) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    while (wait := bucket.take(0.0)) == 0.0:
        pass
    assert 0 < wait <= 1 / rate + 1e-9
    assert bucket.take(wait + 1e-9) == 0.0


def test_a_refusal_takes_nothing() -> None:
    bucket = TokenBucket(1.0, 1.0, 0.0)
    assert bucket.take(0.0) == 0.0
    for _ in range(10):
        assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == 0.0


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert retry_seconds(0.001) == 1
    assert retry_seconds(1.0) == 1
    assert retry_seconds(1.2) == 2


def test_the_table_forgets_full_buckets_and_stays_bounded() -> None:
    buckets = Buckets(10.0, 10.0, size=100)
    for n in range(1000):
        buckets.take(f"10.0.{n // 256}.{n % 256}", 0.0)
        assert len(buckets) <= 100
    # Buckets full again are met at the old end and forgotten as new keys come in.
    for n in range(50):
        buckets.take(f"later-{n}", 10.0)
    assert len(buckets) <= 100


def test_an_active_key_stays_limited_while_others_come_and_go() -> None:
    buckets = Buckets(1.0, 2.0, size=1000)
    assert buckets.take("a", 0.0) == 0.0
    assert buckets.take("a", 0.0) == 0.0
    for n in range(100):
        buckets.take(str(n), 0.0)
    assert buckets.take("a", 0.0) > 0


def gate(**rates: float) -> tuple[PublishGate, Clock]:
    clock = Clock()
    return PublishGate(PublishRates(**rates), clock=clock), clock  # type: ignore[arg-type]


def test_the_address_limit_counts_every_connection_of_an_address() -> None:
    publish_gate, _clock = gate(connection=100.0, address=10.0, burst=1.0)
    connections = [publish_gate.connection_bucket() for _ in range(5)]
    admitted = 0
    refusals: list[RateLimited] = []
    for _ in range(4):
        for bucket in connections:
            try:
                publish_gate.admit(ANONYMOUS, "10.0.0.1", bucket)
            except RateLimited as exc:
                refusals.append(exc)
            else:
                publish_gate.settle()
                admitted += 1
    assert admitted == 10
    assert all(exc.retry_after is not None and exc.retry_after > 0 for exc in refusals)
    assert {exc.code for exc in refusals} == {"rate_limited"}
    publish_gate.admit(ANONYMOUS, "10.0.0.2", connections[0])  # another address


def test_the_principal_limit_follows_the_subject_across_addresses() -> None:
    publish_gate, clock = gate(address=100.0, principal=2.0, burst=1.0)
    publish_gate.admit(CLIENT, "10.0.0.1", None)
    publish_gate.admit(CLIENT, "10.0.0.2", None)
    with pytest.raises(RateLimited, match="per subject"):
        publish_gate.admit(CLIENT, "10.0.0.3", None)
    clock.now += 0.5
    publish_gate.admit(CLIENT, "10.0.0.3", None)


def test_a_refusal_gives_back_the_tokens_other_buckets_gave() -> None:
    publish_gate, _clock = gate(connection=10.0, address=10.0, principal=1.0, burst=1.0)
    bucket = publish_gate.connection_bucket()
    assert bucket is not None
    publish_gate.admit(CLIENT, "10.0.0.1", bucket)
    before = bucket.tokens
    with pytest.raises(RateLimited):
        publish_gate.admit(CLIENT, "10.0.0.1", bucket)
    assert bucket.tokens == pytest.approx(before)


def test_server_keys_are_exempt() -> None:
    publish_gate, _clock = gate(connection=1.0, address=1.0, principal=1.0, burst=1.0)
    bucket = publish_gate.connection_bucket()
    for _ in range(100):
        publish_gate.admit(SERVER, "10.0.0.1", bucket)


def test_zero_means_no_limit() -> None:
    publish_gate, _clock = gate()
    assert publish_gate.connection_bucket() is None
    for _ in range(10_000):
        publish_gate.admit(CLIENT, "10.0.0.1", None)


async def test_draining_refuses_and_waits_for_admitted_publishes() -> None:
    publish_gate, _clock = gate()
    publish_gate.admit(ANONYMOUS, "10.0.0.1", None)
    drained = asyncio.get_running_loop().create_task(publish_gate.drain(wait=60))
    await asyncio.sleep(0)
    assert publish_gate.draining
    assert not drained.done()
    with pytest.raises(ShuttingDown) as refused:
        publish_gate.admit(SERVER, "10.0.0.1", None)
    assert refused.value.code == "unavailable"
    assert refused.value.retry_after == 1.0
    publish_gate.settle()
    async with asyncio.timeout(5):
        await drained


async def test_drain_gives_up_waiting_after_its_bound() -> None:
    publish_gate, _clock = gate()
    publish_gate.admit(ANONYMOUS, "", None)
    async with asyncio.timeout(5):
        await publish_gate.drain(wait=0.01)
    assert publish_gate.draining
