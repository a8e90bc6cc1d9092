"""jobs/runner.py: the bounded pool and queue, the events of a job, cancellation, records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.env import TIMEOUT
from tidings.errors import BackendUnavailable, QueueFull, ShuttingDown, UnknownJob
from tidings.hub import Hub
from tidings.jobs import Job, Jobs, Log, Progress, Runner, State


class Lab:
    """Jobs a test steers: ``gated`` waits for its gate, records its start and its cleanup."""

    def __init__(self) -> None:
        self.jobs = Jobs()
        self.gates: dict[int, asyncio.Event] = {}
        self.waits: dict[int, asyncio.Event] = {}
        self.started: list[int] = []
        self.cleaned: list[int] = []
        self.cancelled: list[int] = []
        self.jobs.add("gated", self.gated)
        self.jobs.add("boom", self.boom)
        self.jobs.add("odd", self.odd)

    def gate(self, number: int) -> asyncio.Event:
        return self.gates.setdefault(number, asyncio.Event())

    async def waiting(self, *numbers: int) -> None:
        """Wait until jobs ``numbers`` have reported 10 % and wait at their gates."""
        async with asyncio.timeout(TIMEOUT):
            for number in numbers:
                await self.waits.setdefault(number, asyncio.Event()).wait()

    async def gated(self, number: int) -> AsyncIterator[Progress | Log]:
        self.started.append(number)
        try:
            yield Log(f"job {number} waits")
            yield Progress(10, "waiting", result={"partial": number})
            self.waits.setdefault(number, asyncio.Event()).set()
            await self.gate(number).wait()
            yield {"percent": 90, "message": "almost", "result": {"done": number}}
        except asyncio.CancelledError:
            self.cancelled.append(number)
            raise
        finally:
            self.cleaned.append(number)

    async def boom(self) -> AsyncIterator[Progress]:
        yield Progress(50)
        raise RuntimeError("it broke")

    async def odd(self) -> AsyncIterator[Any]:
        yield 42


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub() as hub:
        yield hub


@pytest.fixture
def lab() -> Lab:
    return Lab()


@pytest.fixture
async def runner(hub: Hub, lab: Lab) -> AsyncIterator[Runner]:
    runner = Runner(hub, lab.jobs, workers=2, queue_size=3, max_records=8)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.aclose()


async def events(hub: Hub, job: Job) -> list[tuple[str, Any]]:
    return [(event.event, event.data) for event in (await hub.history(job.channel)).events]


async def test_a_job_publishes_its_life_on_its_channel(runner: Runner, lab: Lab, hub: Hub) -> None:
    job = await runner.submit("gated", {"number": 1}, owner="user:ann")
    assert job.channel == f"jobs:{job.id}"
    assert len(job.id) == 32
    lab.gate(1).set()
    async with asyncio.timeout(TIMEOUT):
        await job.wait()
    base = {"id": job.id, "name": "gated"}
    assert await events(hub, job) == [
        ("queued", {**base, "state": "queued"}),
        ("started", {**base, "state": "running"}),
        ("log", {"message": "job 1 waits", "level": "info"}),
        ("progress", {"percent": 10.0, "message": "waiting", "result": {"partial": 1}}),
        ("progress", {"percent": 90.0, "message": "almost", "result": {"done": 1}}),
        ("completed", {**base, "state": "completed", "result": {"done": 1}}),
    ]
    record = runner.get(job.id).record()
    assert record["state"] == "completed"
    assert record["progress"] == {"percent": 100.0, "message": "almost"}
    assert record["result"] == {"done": 1}
    assert record["error"] is None
    assert record["arguments"] == {"number": 1}
    assert record["created"] <= record["started"] <= record["ended"]
    assert lab.cleaned == [1]


async def test_a_job_that_raises_fails_with_its_error(runner: Runner, hub: Hub) -> None:
    job = await runner.submit("boom", {})
    async with asyncio.timeout(TIMEOUT):
        await job.wait()
    assert job.state is State.FAILED
    assert job.error == {"type": "RuntimeError", "message": "it broke"}
    assert (await events(hub, job))[-1] == (
        "failed",
        {"id": job.id, "name": "boom", "state": "failed", "error": job.error},
    )
    odd = await runner.submit("odd", {})
    async with asyncio.timeout(TIMEOUT):
        await odd.wait()
    assert odd.state is State.FAILED
    assert "Progress, Log or a dict" in odd.error["message"]


async def test_cancel_a_running_job_runs_its_cleanup(runner: Runner, lab: Lab, hub: Hub) -> None:
    job = await runner.submit("gated", {"number": 7})
    await lab.waiting(7)
    assert job.percent == 10.0
    cancelled = await runner.cancel(job.id)
    assert cancelled is job
    assert job.state is State.CANCELLED
    assert lab.cancelled == [7]
    assert lab.cleaned == [7]
    assert (await events(hub, job))[-1] == (
        "cancelled",
        {"id": job.id, "name": "gated", "state": "cancelled", "reason": "requested"},
    )
    assert job.result == {"partial": 7}  # what it had made so far stays
    await runner.cancel(job.id)  # a finished job stays as it is
    assert [name for name, _ in await events(hub, job)].count("cancelled") == 1


async def test_cancel_a_queued_job_never_starts_it(runner: Runner, lab: Lab, hub: Hub) -> None:
    first = [await runner.submit("gated", {"number": n}) for n in (1, 2)]
    waiting = await runner.submit("gated", {"number": 3})
    await lab.waiting(1, 2)
    await runner.cancel(waiting.id)
    assert waiting.state is State.CANCELLED
    assert [name for name, _ in await events(hub, waiting)] == ["queued", "cancelled"]
    for number in (1, 2):
        lab.gate(number).set()
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(job.wait() for job in first))
    assert lab.started == [1, 2]


async def test_the_pool_and_the_queue_are_bounded(runner: Runner, lab: Lab) -> None:
    jobs = [await runner.submit("gated", {"number": n}) for n in (1, 2)]
    await lab.waiting(1, 2)
    assert runner.running == 2
    jobs += [await runner.submit("gated", {"number": n}) for n in (3, 4, 5)]
    assert (runner.running, runner.queued) == (2, 3)
    with pytest.raises(QueueFull) as caught:
        await runner.submit("gated", {"number": 6})
    assert caught.value.limit == 3
    assert len(runner.page()) == 5  # the refused job left no record
    for number in range(1, 6):
        lab.gate(number).set()
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(job.wait() for job in jobs))
    assert lab.started == [1, 2, 3, 4, 5]
    assert all(job.state is State.COMPLETED for job in jobs)
    assert runner.stats() == {
        "queued": 0,
        "running": 0,
        "records": 5,
        "started": 5,
        "completed": 5,
        "failed": 0,
        "cancelled": 0,
    }


async def test_one_client_has_at_most_per_client_unfinished_jobs(hub: Hub, lab: Lab) -> None:
    runner = Runner(hub, lab.jobs, workers=1, queue_size=10, per_client=2, max_records=20)
    try:
        ada = [await runner.submit("gated", {"number": n}, client="ada") for n in (1, 2)]
        with pytest.raises(QueueFull, match="for this client") as caught:
            await runner.submit("gated", {"number": 3}, client="ada")
        assert (caught.value.limit, caught.value.per_client) == (2, True)
        bob = await runner.submit("gated", {"number": 4}, client="bob")  # a share of his own
        mine = await runner.submit("gated", {"number": 5})  # no client: not bounded
        await lab.waiting(1)
        lab.gate(1).set()  # one of ada's jobs ends: her share comes back
        async with asyncio.timeout(TIMEOUT):
            await ada[0].wait()
        again = await runner.submit("gated", {"number": 6}, client="ada")
        await runner.cancel(again.id)  # a cancelled job gives its share back too
        await runner.submit("boom", {}, client="ada")
        for number in (2, 4, 5):
            lab.gate(number).set()
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(ada[1].wait(), bob.wait(), mine.wait())
    finally:
        await runner.aclose()
    assert runner._unfinished == {}


async def test_records_are_bounded_in_count_and_time(hub: Hub, lab: Lab) -> None:
    now = [1000.0]
    runner = Runner(
        hub, lab.jobs, workers=1, queue_size=2, max_records=3, ttl=60, clock=lambda: now[0]
    )
    await runner.start()
    try:
        done = [await runner.submit("boom", {}) for _ in range(3)]
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*(job.wait() for job in done))
        third = await runner.submit("boom", {})
        with pytest.raises(UnknownJob):
            runner.get(done[0].id)  # the oldest finished record made room
        assert runner.get(done[1].id) is done[1]
        assert runner.get(done[2].id) is done[2]
        async with asyncio.timeout(TIMEOUT):
            await third.wait()
        now[0] += 61
        assert runner.page() == []
        with pytest.raises(UnknownJob):
            runner.get(third.id)
    finally:
        await runner.aclose()


async def test_owners_and_pages(runner: Runner, lab: Lab) -> None:
    ann = [await runner.submit("boom", {}, owner="user:ann") for _ in range(2)]
    bob = await runner.submit("boom", {}, owner="user:bob")
    with pytest.raises(UnknownJob):
        runner.get(bob.id, owner="user:ann")
    with pytest.raises(UnknownJob):
        await runner.cancel(bob.id, owner="user:ann")
    assert runner.page(owner="user:ann") == ann
    assert runner.page() == [*ann, bob]
    assert runner.page(after=ann[0].id, limit=1) == [ann[1]]
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(job.wait() for job in (*ann, bob)))


async def test_a_job_whose_queued_event_fails_is_not_queued(
    runner: Runner, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*args: Any, **kwargs: Any) -> None:
        raise BackendUnavailable("memory")

    monkeypatch.setattr(hub, "publish", down)
    with pytest.raises(BackendUnavailable):
        await runner.submit("boom", {})
    assert runner.page() == []
    assert runner.queued == 0


async def test_close_cancels_queued_and_running_jobs(hub: Hub, lab: Lab) -> None:
    runner = Runner(hub, lab.jobs, workers=1, queue_size=2, cancel_wait=TIMEOUT)
    await runner.start()
    running = await runner.submit("gated", {"number": 1})
    queued = await runner.submit("gated", {"number": 2})
    await lab.waiting(1)
    await runner.aclose(wait=0.01)
    assert running.state is queued.state is State.CANCELLED
    assert (await events(hub, queued))[-1][1]["reason"] == "shutdown"
    assert (await events(hub, running))[-1][1]["reason"] == "shutdown"
    assert lab.cleaned == [1]
    assert lab.started == [1]
    with pytest.raises(ShuttingDown, match="accepts no jobs"):
        await runner.submit("gated", {"number": 3})


async def test_close_lets_running_jobs_finish_within_wait(hub: Hub, lab: Lab) -> None:
    runner = Runner(hub, lab.jobs, workers=1, queue_size=1)
    await runner.start()
    job = await runner.submit("gated", {"number": 1})
    await lab.waiting(1)
    lab.gate(1).set()
    await runner.aclose(wait=TIMEOUT)
    assert job.state is State.COMPLETED


def test_bounds_must_hold(hub: Hub, lab: Lab) -> None:
    for bad in (
        {"workers": 0},
        {"queue_size": 0},
        {"per_client": 0},
        {"ttl": 0},
        {"max_records": 3},
    ):
        with pytest.raises(ValueError, match="must be"):
            Runner(hub, lab.jobs, **{"workers": 2, "queue_size": 2, **bad})  # type: ignore[arg-type]


async def test_the_first_job_starts_a_pool_nobody_started(hub: Hub, lab: Lab) -> None:
    runner = Runner(hub, lab.jobs, workers=1, queue_size=1)
    try:
        job = await runner.submit("boom", {})
        async with asyncio.timeout(TIMEOUT):
            await job.wait()
        assert job.state is State.FAILED
    finally:
        await runner.aclose()
