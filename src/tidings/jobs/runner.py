"""Runner: a bounded worker pool and queue that runs jobs and publishes their progress.

Theory of operation
-------------------

:meth:`Runner.submit` checks a job's arguments, refuses when ``queue_size``
jobs wait already for a busy worker (:class:`~tidings.errors.QueueFull`), keeps a
:class:`Job` record, puts the job at the end of the queue and publishes
``queued`` on ``jobs:{id}``. ``workers`` worker tasks take jobs from the
queue in the order they were submitted; each runs one job at a time, in a
task of its own, consuming the job's generator under ``aclosing``:

    queued ──► running ──► completed | failed | cancelled
       └────────────────────────────► cancelled   (cancelled while queued)

Every change is an event on the job's channel (``queued``, ``started``,
``progress``, ``log``, then one of ``completed``, ``failed``,
``cancelled``), published through the hub, so a client resumes a job's
stream like any channel's. A worker publishes ``started`` only after
``queued`` went out, so the events of a job are in that order.

:meth:`Runner.cancel` removes a queued job, or cancels a running job's
task: the generator sees ``CancelledError`` where it waits, its
``finally`` runs, and the record says ``cancelled``.

Several servers on one shared backend (Redis; ``shared=True``) see every
job: its events are on the hub anyway, and :class:`~tidings.jobs.control.JobControl`
publishes each change of a record for the others, which :meth:`Runner.find`
reads for a job that runs elsewhere, and carries a cancel to the runner
that has the job; :meth:`Runner.cancel_anywhere` then waits for the job's
final event.

Records are kept in memory, at most ``max_records`` of them: a finished
job's record goes ``ttl`` seconds after it ended, or earlier, oldest
first, when a new job needs room. Waiting and running jobs always keep
theirs (``max_records`` is at least ``workers + queue_size``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

from tidings.errors import (
    BackendUnavailable,
    QueueFull,
    ShuttingDown,
    TidingsError,
    UnknownJob,
)
from tidings.hub import Hub
from tidings.jobs.control import JobControl
from tidings.jobs.registry import Jobs, Log, Progress, as_update
from tidings.types import JSONValue, Position
from tidings.wire.cursor import encode_cursor

__all__ = ["CHANNEL_PREFIX", "Job", "Runner", "State"]

logger = logging.getLogger(__name__)

#: Every job's events are on channel ``jobs:{id}``.
CHANNEL_PREFIX = "jobs:"
#: The events that end a job.
FINAL_EVENTS = frozenset({"completed", "failed", "cancelled"})


class State(StrEnum):
    """Where a job is; the value is the word in its record and events."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


#: The states a job ends in.
FINISHED = (State.COMPLETED, State.FAILED, State.CANCELLED)


@dataclass(eq=False, slots=True)
class Job:
    """One job's record: what it is, where it is, what it made."""

    id: str
    name: str
    owner: str
    arguments: dict[str, Any]
    created: float
    #: Whose share of ``per_client`` the job takes while it is unfinished.
    client: str = ""
    state: State = State.QUEUED
    percent: float | None = None
    message: str | None = None
    result: JSONValue = None
    error: dict[str, str] | None = None
    started: float | None = None
    ended: float | None = None
    #: The position of the job's ``queued`` event: its stream starts after the one before.
    origin: Position | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _announced: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _cancel_reason: str = field(default="requested", repr=False)
    _counted: bool = field(default=False, repr=False)

    @property
    def channel(self) -> str:
        return CHANNEL_PREFIX + self.id

    @property
    def cursor(self) -> str:
        """The resume cursor just before the job's first event (``last_event_id``)."""
        epoch, offset = self.origin or Position("", 1)
        return encode_cursor({self.channel: Position(epoch, max(0, offset - 1))})

    def record(self) -> dict[str, Any]:
        """The job as ``GET /api/jobs/{id}`` answers it (``stream`` aside)."""
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "progress": {"percent": self.percent, "message": self.message},
            "result": self.result,
            "error": self.error,
            "arguments": self.arguments,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "channel": self.channel,
            "cursor": self.cursor,
        }

    async def wait(self) -> None:
        """Wait until the job has finished (completed, failed or cancelled)."""
        await self._ended.wait()


class Runner:
    """Runs the jobs of a registry on ``workers`` tasks, publishing to ``hub``.

    Args:
        hub: Where the jobs' events are published.
        jobs: The registered jobs.
        workers: How many jobs run at once.
        queue_size: How many jobs may wait while every worker is busy; one
            more is refused (``QueueFull``).
        per_client: How many unfinished (waiting or running) jobs one client
            may have; one more is refused (``QueueFull`` with ``per_client``).
        max_records: How many job records are kept, finished ones included.
        ttl: Seconds a finished job's record is kept.
        clock: Wall-clock time for the records' timestamps.
        cancel_wait: Seconds a cancel waits for a running job to end.
        shared: Whether other runners share the hub's backend (Redis): then
            records are published for them and cancels reach them.

    Raises:
        ValueError: a bound is not positive, or ``max_records`` is below
            ``workers + queue_size``.
    """

    def __init__(
        self,
        hub: Hub,
        jobs: Jobs,
        *,
        workers: int = 4,
        queue_size: int = 100,
        per_client: int = 16,
        max_records: int = 1000,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.time,
        cancel_wait: float = 5.0,
        shared: bool = False,
    ) -> None:
        if workers <= 0 or queue_size <= 0 or per_client <= 0 or ttl <= 0:
            raise ValueError("workers, queue_size, per_client and ttl must be > 0")
        if max_records < workers + queue_size:
            raise ValueError("max_records must be at least workers + queue_size")
        self.hub = hub
        self.jobs = jobs
        self.workers = workers
        self.queue_size = queue_size
        self.per_client = per_client
        #: Unfinished jobs by client (``submit(client=)``), for ``per_client``.
        self._unfinished: collections.Counter[str] = collections.Counter()
        self.max_records = max_records
        self.ttl = ttl
        self._clock = clock
        self.cancel_wait = cancel_wait
        self.shared = shared
        self._control = JobControl(hub, on_cancel=self._cancel_soon) if shared else None
        self._cancels: set[asyncio.Task[Job]] = set()
        self._records: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._queue: collections.deque[Job] = collections.deque()
        self._ready = asyncio.Condition()
        self._running: set[Job] = set()
        #: Workers holding a job (taken from the queue, maybe not started yet).
        self._busy = 0
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False
        #: Jobs started and ended, by their final state, since the runner was made.
        self._counts = dict.fromkeys(("started", *(state.value for state in FINISHED)), 0)

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers (idempotent)."""
        if self._workers:
            return
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._work(), name=f"tidings-job-worker-{number}")
            for number in range(self.workers)
        ]
        if self._control is not None:
            await self._control.start(wait=self.cancel_wait)

    async def aclose(self, *, wait: float = 0.0) -> None:
        """Refuse new jobs, cancel the queued ones, give the running ones ``wait``
        seconds to finish, cancel the rest (reason ``shutdown``), stop the workers."""
        self._closing = True
        while self._queue:
            job = self._queue.popleft()
            job._cancel_reason = "shutdown"
            await self._finish(job, State.CANCELLED)
        await self._wait_running(wait)
        for job in list(self._running):
            job._cancel_reason = "shutdown"
            if job._task is not None:
                job._task.cancel()
        await self._wait_running(self.cancel_wait)
        tasks = [*self._workers, *self._cancels]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        if self._control is not None:
            await self._control.aclose()

    async def _wait_running(self, seconds: float) -> None:
        if self._running and seconds > 0:
            running = [job.wait() for job in self._running]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await asyncio.gather(*running)

    # -- requests -----------------------------------------------------------------------------

    async def submit(
        self, name: str, arguments: object, *, owner: str = "anonymous", client: str | None = None
    ) -> Job:
        """Queue job ``name`` with ``arguments`` (a decoded JSON object).

        ``client`` names whose share of ``per_client`` it takes; ``None`` (code
        of your own, the server's API keys) is not bounded per client. The
        server passes a client's identity, or an anonymous client's address.

        Raises:
            UnknownJob: no job is registered as ``name``.
            InvalidArguments: the arguments do not fit the job's function.
            QueueFull: ``queue_size`` jobs wait already, or the client has
                ``per_client`` unfinished jobs.
            ShuttingDown: the runner is closing.
            BackendUnavailable: the ``queued`` event could not be published;
                the job was not queued.
        """
        spec = self.jobs.spec(name)
        values = spec.arguments(arguments)
        if self._closing:
            raise ShuttingDown(what="jobs")
        if not self._workers:
            # An app mounted in another one gets no lifespan: the first job starts the pool.
            await self.start()
        # Jobs an idle worker is about to take do not count as waiting.
        if len(self._queue) - (self.workers - self._busy) >= self.queue_size:
            raise QueueFull(self.queue_size)
        if client is not None and self._unfinished[client] >= self.per_client:
            raise QueueFull(self.per_client, per_client=True)
        self._expire()
        job = Job(uuid.uuid4().hex, name, owner, values, created=self._clock(), client=client or "")
        if client is not None:
            self._unfinished[client] += 1
            job._counted = True
        self._make_room()
        self._records[job.id] = job
        self._queue.append(job)
        try:
            job.origin = await self.hub.publish(job.channel, self._event(job), event="queued")
            await self._save(job)
        except BaseException:
            self._forget(job)
            raise
        finally:
            job._announced.set()
        async with self._ready:
            self._ready.notify()
        return job

    def get(self, job_id: str, *, owner: str | None = None) -> Job:
        """The record of job ``job_id``; with ``owner``, only if it is theirs.

        Raises:
            UnknownJob: there is no such record (or it is someone else's).
        """
        self._expire()
        job = self._records.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise UnknownJob(job_id)
        return job

    def page(
        self, *, owner: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Up to ``limit`` records in the order of submission, after job ``after``,
        only ``owner``'s with an owner."""
        self._expire()
        jobs = iter(self._records.values())
        if after is not None:
            for job in jobs:
                if job.id == after:
                    break
        page: list[Job] = []
        for job in jobs:
            if owner is None or job.owner == owner:
                page.append(job)
                if len(page) == limit:
                    break
        return page

    async def find(self, job_id: str, *, owner: str | None = None) -> dict[str, Any]:
        """The record of job ``job_id``, wherever it runs (with ``shared``).

        Raises:
            UnknownJob: no runner knows it (or it is someone else's).
            BackendUnavailable: the backend cannot be reached.
        """
        try:
            return self.get(job_id, owner=owner).record()
        except UnknownJob:
            if self._control is None:
                raise
        return await self._remote(job_id, owner)

    async def _remote(self, job_id: str, owner: str | None) -> dict[str, Any]:
        loaded = await self._control.load(job_id) if self._control is not None else None
        if loaded is None or (owner is not None and loaded[1] != owner):
            raise UnknownJob(job_id)
        return loaded[0]

    async def cancel_anywhere(self, job_id: str, *, owner: str | None = None) -> dict[str, Any]:
        """Cancel job ``job_id`` here or on the runner that has it (with ``shared``);
        return its record once it has ended, or after ``cancel_wait`` seconds.

        Raises:
            UnknownJob: no runner knows it (or it is someone else's).
            BackendUnavailable: the backend cannot be reached.
        """
        if job_id in self._records or self._control is None:
            return (await self.cancel(job_id, owner=owner)).record()
        record = await self._remote(job_id, owner)
        if State(record["state"]).finished:
            return record
        channel = CHANNEL_PREFIX + job_id
        async with self.hub.subscribe(channel, since=await self.hub.position(channel)) as events:
            await self._control.send_cancel(job_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cancel_wait):
                    async for item in events:
                        if getattr(item, "event", None) in FINAL_EVENTS:
                            break
        return await self._remote(job_id, owner)

    def _cancel_soon(self, job_id: str) -> None:
        job = self._records.get(job_id)
        if job is None or job.state.finished:
            return  # another runner's, or over already
        task = asyncio.get_running_loop().create_task(self.cancel(job_id))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def cancel(self, job_id: str, *, owner: str | None = None) -> Job:
        """Cancel a queued or running job; a finished one stays as it is.

        Returns the job once its state is final, or after ``cancel_wait``
        seconds when a running job does not end.

        Raises:
            UnknownJob: there is no such job (or it is someone else's).
        """
        job = self.get(job_id, owner=owner)
        if job.state is State.QUEUED:
            # Still queued, or taken by a worker that has not started it: it skips it.
            with contextlib.suppress(ValueError):
                self._queue.remove(job)
            await self._finish(job, State.CANCELLED)
        elif job.state is State.RUNNING and job._task is not None:
            job._task.cancel()
            # A job that swallows the cancellation keeps running: do not wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cancel_wait):
                    await job.wait()
        return job

    def stats(self) -> dict[str, int]:
        """``queued`` and ``running`` now, ``records`` kept, and jobs ``started``,
        ``completed``, ``failed`` and ``cancelled`` since the runner was made."""
        return {
            "queued": len(self._queue),
            "running": len(self._running),
            "records": len(self._records),
            **self._counts,
        }

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    # -- running ------------------------------------------------------------------------------

    async def _work(self) -> None:
        while not self._closing:
            async with self._ready:
                await self._ready.wait_for(lambda: bool(self._queue))
                job = self._queue.popleft()
            self._busy += 1
            try:
                await self._take(job)
            finally:
                self._busy -= 1

    async def _take(self, job: Job) -> None:
        await job._announced.wait()
        if job.state is not State.QUEUED:
            return  # cancelled, or its queued event failed
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"job-{job.id}")
        job._task = task
        self._running.add(job)
        try:
            await task
        finally:
            self._running.discard(job)

    async def _run(self, job: Job) -> None:
        self._counts["started"] += 1
        job.state = State.RUNNING
        job.started = self._clock()
        spec = self.jobs.spec(job.name)
        try:
            await self._publish(job, "started", self._event(job))
            # JobSpec.of took async generator functions only.
            generator = cast(AsyncGenerator[Any, None], spec.function(**job.arguments))
            async with contextlib.aclosing(generator) as updates:
                async for value in updates:
                    await self._apply(job, as_update(value))
        except asyncio.CancelledError:
            await self._finish(job, State.CANCELLED)
        except Exception as exc:
            logger.warning("job %s (%s) failed", job.id, job.name, exc_info=True)
            job.error = {"type": type(exc).__name__, "message": str(exc)}
            await self._finish(job, State.FAILED)
        else:
            await self._finish(job, State.COMPLETED)

    async def _apply(self, job: Job, update: Progress | Log) -> None:
        if isinstance(update, Log):
            await self._publish(job, "log", {"message": update.message, "level": update.level})
            return
        if update.percent is not None:
            job.percent = float(update.percent)
        if update.message is not None:
            job.message = update.message
        data: dict[str, Any] = {"percent": job.percent, "message": job.message}
        if update.result is not None:
            job.result = update.result
            data["result"] = update.result
        await self._publish(job, "progress", data)

    async def _finish(self, job: Job, state: State) -> None:
        self._counts[state.value] += 1
        job.state = state
        job.ended = self._clock()
        if state is State.COMPLETED:
            job.percent = 100.0
        data = self._event(job)
        if state is State.CANCELLED:
            data["reason"] = job._cancel_reason
        try:
            await self._publish(job, state.value, data)
        except TidingsError:
            logger.warning("job %s: its %s event could not be published", job.id, state.value)
        finally:
            self._release(job)
            job._ended.set()

    def _release(self, job: Job) -> None:
        """Give back the job's share of ``per_client`` (once)."""
        if job._counted:
            job._counted = False
            left = self._unfinished[job.client] - 1
            if left:
                self._unfinished[job.client] = left
            else:
                del self._unfinished[job.client]

    async def _publish(self, job: Job, event: str, data: dict[str, Any]) -> None:
        """Publish one of a job's events (and, with ``shared``, its record). A backend
        that is down loses them (the local record keeps the state); data the hub
        refuses (``InvalidPublication``) raises."""
        try:
            await self.hub.publish(job.channel, data, event=event)
            if event != "log":
                await self._save(job)
        except BackendUnavailable:
            logger.warning("job %s: %s event lost, the backend is unavailable", job.id, event)

    async def _save(self, job: Job) -> None:
        if self._control is not None:
            await self._control.save(job.record(), owner=job.owner)

    @staticmethod
    def _event(job: Job) -> dict[str, Any]:
        data: dict[str, Any] = {"id": job.id, "name": job.name, "state": job.state.value}
        if job.state is State.COMPLETED:
            data["result"] = job.result
        if job.state is State.FAILED:
            data["error"] = job.error
        return data

    # -- records ------------------------------------------------------------------------------

    def _expire(self) -> None:
        horizon = self._clock() - self.ttl
        for job in list(self._records.values()):
            if job.ended is not None and job.ended < horizon:
                del self._records[job.id]

    def _make_room(self) -> None:
        if len(self._records) < self.max_records:
            return
        for job in self._finished():
            del self._records[job.id]
            if len(self._records) < self.max_records:
                return

    def _finished(self) -> Iterator[Job]:
        return iter([job for job in self._records.values() if job.state.finished])

    def _forget(self, job: Job) -> None:
        self._records.pop(job.id, None)
        with contextlib.suppress(ValueError):
            self._queue.remove(job)
        job.state = State.CANCELLED
        self._release(job)
        job._ended.set()
