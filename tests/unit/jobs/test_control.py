"""jobs/control.py: two runners on one hub see each other's jobs and cancel them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.env import TIMEOUT
from tests.unit.jobs.test_runner import Lab
from tidings.errors import UnknownJob
from tidings.hub import Hub
from tidings.jobs import Runner, State
from tidings.jobs.control import CONTROL_CHANNEL, STATE_PREFIX


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Lab, Runner, Runner, Hub]]:
    lab = Lab()
    async with Hub() as hub:
        runners = [Runner(hub, lab.jobs, workers=1, queue_size=2, shared=True) for _ in range(2)]
        for runner in runners:
            await runner.start()
        try:
            yield lab, runners[0], runners[1], hub
        finally:
            for runner in runners:
                await runner.aclose()


async def test_a_job_is_found_and_cancelled_from_the_other_runner(
    pair: tuple[Lab, Runner, Runner, Hub],
) -> None:
    lab, here, there, hub = pair
    job = await here.submit("gated", {"number": 1}, owner="user:ann")
    await lab.waiting(1)
    seen = await there.find(job.id, owner="user:ann")
    assert (seen["state"], seen["result"]) == ("running", {"partial": 1})
    assert "owner" not in seen
    for stranger in ("user:bob", ""):
        with pytest.raises(UnknownJob):
            await there.find(job.id, owner=stranger)
    with pytest.raises(UnknownJob):
        await there.cancel_anywhere(job.id, owner="user:bob")
    assert job.state is State.RUNNING
    record = await there.cancel_anywhere(job.id, owner="user:ann")
    assert record["state"] == "cancelled"
    assert lab.cleaned == [1]
    assert (await there.cancel_anywhere(job.id))["state"] == "cancelled"
    assert (await hub.history(STATE_PREFIX + job.id)).events[-1].data["owner"] == "user:ann"


async def test_unknown_ids_and_stray_messages(pair: tuple[Lab, Runner, Runner, Hub]) -> None:
    lab, here, there, hub = pair
    for job_id in ("0" * 32, "not-an-id", "jobstate:_control"):
        with pytest.raises(UnknownJob):
            await there.find(job_id)
    job = await here.submit("gated", {"number": 2})
    await lab.waiting(2)
    for message in ({"op": "cancel", "id": "0" * 32}, {"op": "other", "id": job.id}, [1], "x"):
        await hub.publish(CONTROL_CHANNEL, message)
    lab.gate(2).set()
    async with asyncio.timeout(TIMEOUT):
        await job.wait()
    assert job.state is State.COMPLETED
