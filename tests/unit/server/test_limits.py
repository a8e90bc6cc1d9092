"""server/limits.py: slots in total and per client address, kept past the app and released once."""

from __future__ import annotations

import pytest

from tidings.errors import TooManyConnections
from tidings.server.limits import SLOT_STATE, ConnectionSlots, keep_slot


def test_slots_are_refused_past_each_limit_and_come_back() -> None:
    slots = ConnectionSlots(max_total=3, max_per_client=2)
    first, second = slots.take("a"), slots.take("a")
    with pytest.raises(TooManyConnections, match="this address") as refused:
        slots.take("a")
    assert refused.value.retry_after > 0
    third = slots.take("b")
    with pytest.raises(TooManyConnections, match="connection limit"):
        slots.take("c")
    assert slots.stats() == {"total": 3, "clients": 2}
    for slot in (first, second, third):
        slot.release()
        slot.release()  # once only
    assert slots.stats() == {"total": 0, "clients": 0}
    assert slots.by_peer == {}


def test_no_per_client_limit_with_zero() -> None:
    slots = ConnectionSlots(max_total=10, max_per_client=0)
    for _ in range(10):
        slots.take("a")
    assert slots.stats() == {"total": 10, "clients": 1}


def test_a_kept_slot_is_released_by_its_holder() -> None:
    slots = ConnectionSlots(max_total=1)
    slot = slots.take("a")
    release = keep_slot({"state": {SLOT_STATE: slot}})
    assert slot.held
    release()
    assert slots.total == 0
    keep_slot({})()  # no limiter: nothing to release
