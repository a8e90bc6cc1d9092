"""JobControl: what the job runners of servers sharing one backend (Redis) tell each other.

A job runs on the server that accepted it, yet any server may be asked about
it. Two things travel between them, on channels of the ``jobstate``
namespace, which is closed to clients (it names each job's owner):

- ``jobstate:{id}``: the job's latest record with its owner, published at
  each change and kept as the channel's only event, read by the servers
  that do not run it;
- ``jobstate:_control``: ``{"op": "cancel", "id"}``, a ``DELETE`` that
  arrived elsewhere; every runner listens, the one that runs the job acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

from tidings.errors import SubscriptionClosed, TidingsError
from tidings.hub import Hub

__all__ = ["CONTROL_CHANNEL", "STATE_PREFIX", "JobControl"]

logger = logging.getLogger(__name__)

#: A job's record, with its owner, on ``jobstate:{id}``.
STATE_PREFIX = "jobstate:"
#: Cancel messages between the runners of one backend.
CONTROL_CHANNEL = STATE_PREFIX + "_control"
#: A job id: 32 hex digits (``uuid4().hex``); anything else names no job.
_ID = re.compile(r"[0-9a-f]{32}\Z")
#: Seconds between attempts to listen again after the backend failed.
_RETRY = 1.0


class JobControl:
    """Saves and loads job records for the other servers and carries cancels.

    Args:
        hub: The hub shared with the other servers.
        on_cancel: Called with a job id for each cancel message.
    """

    def __init__(self, hub: Hub, *, on_cancel: Callable[[str], None]) -> None:
        self.hub = hub
        self.on_cancel = on_cancel
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, wait: float) -> None:
        """Listen for cancels; return once listening, or after ``wait`` seconds."""
        listening = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._listen(listening), name="tidings-job-control")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await listening.wait()  # a cancel sent from now on reaches this runner

    async def _listen(self, listening: asyncio.Event) -> None:
        while True:
            try:
                async with self.hub.subscribe(CONTROL_CHANNEL) as messages:
                    listening.set()
                    async for item in messages:
                        message = getattr(item, "data", None)
                        if isinstance(message, dict) and message.get("op") == "cancel":
                            self.on_cancel(str(message.get("id")))
                return  # closed by the hub without a reason to come back
            except SubscriptionClosed as exc:
                if exc.reason == "shutdown":
                    return
                logger.warning("the jobs control subscription closed (%s); resubscribing", exc)
            except TidingsError as exc:
                logger.warning("the jobs control subscription failed (%s); retrying", exc)
                await asyncio.sleep(_RETRY)

    async def save(self, record: dict[str, Any], *, owner: str) -> None:
        """Publish a job's record for the other servers."""
        data = {**record, "owner": owner}
        await self.hub.publish(STATE_PREFIX + record["id"], data, event="state")

    async def load(self, job_id: str) -> tuple[dict[str, Any], str] | None:
        """The latest record of a job and its owner, as some server saved it; None if none.

        Raises:
            BackendUnavailable: the backend cannot be reached.
        """
        if not _ID.match(job_id):
            return None
        events = (await self.hub.history(STATE_PREFIX + job_id, limit=1)).events
        saved = events[-1].data if events else None
        if not isinstance(saved, dict):
            return None
        record = {key: value for key, value in saved.items() if key != "owner"}
        return record, str(saved.get("owner"))

    async def send_cancel(self, job_id: str) -> None:
        """Ask the runner that has ``job_id`` to cancel it."""
        await self.hub.publish(CONTROL_CHANNEL, {"op": "cancel", "id": job_id})

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
