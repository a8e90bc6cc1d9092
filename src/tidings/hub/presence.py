"""Presence: who is subscribed to a channel, kept in the backend with a TTL.

Theory of operation
-------------------

A subscription that carries a :class:`ClientInfo` is a *member* of each
channel it receives: when a channel goes live for it, the hub adds an entry
``(channel, client_id) -> payload`` to the backend; when the channel is
removed or the subscription closes, the entry is removed. The payload is the
JSON document that ``presence`` lists and that ``join`` / ``leave`` notices
carry.

Removals happen in synchronous code (``Subscription.close`` runs from
protocol callbacks), while the backend is async. So every backend call goes
through one :class:`PresenceKeeper` per hub: a FIFO of operations drained by
one task, which also refreshes every local entry each ``ttl / 3`` seconds.
One queue keeps each client's add and remove in call order; the refresh
keeps entries alive in a shared backend (Redis) while this process lives, and
lets them expire within ``ttl`` when it dies without cleaning up. The task
starts with the first operation and ends once nothing is left to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from tidings.wire.json import dumps_kept

if TYPE_CHECKING:
    from tidings.hub.backends.base import Backend

__all__ = ["ClientInfo", "PresenceKeeper"]

logger = logging.getLogger(__name__)


class ClientInfo(NamedTuple):
    """A connected client as presence shows it.

    Attributes:
        client_id: Assigned by the server, unique per connection.
        user_id: The authenticated user, when the connection has one.
        info: Whatever the client chose to show about itself (JSON).
    """

    client_id: str
    user_id: str | None = None
    info: Any = None

    def payload(self) -> bytes:
        """The JSON document stored in the backend and sent in join/leave notices."""
        document = {"client": self.client_id, "user": self.user_id, "info": self.info}
        return dumps_kept(document)

    @classmethod
    def from_payload(cls, payload: bytes) -> ClientInfo:
        document = orjson.loads(payload)
        return cls(document["client"], document.get("user"), document.get("info"))


class PresenceKeeper:
    """Adds, removes and refreshes one hub's presence entries, in call order.

    Args:
        backend: Where entries live.
        ttl: Seconds an entry lives in the backend unless refreshed.
    """

    def __init__(self, backend: Backend, *, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError(f"presence ttl must be > 0 seconds, not {ttl}")
        self._backend = backend
        self.ttl = ttl
        #: Local entries: (channel, client_id) -> payload.
        self.entries: dict[tuple[str, str], bytes] = {}
        #: One payload per client, shared by all its entries: client_id ->
        #: (client, payload, number of entries).
        self._payloads: dict[str, tuple[ClientInfo, bytes, int]] = {}
        self._queue: deque[tuple[str, str, bytes | None, asyncio.Future[None] | None]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def add(self, channel: str, client: ClientInfo) -> None:
        """Add ``client`` to ``channel``; returns once the backend has it."""
        key = (channel, client.client_id)
        if key in self.entries:
            self._release(client.client_id)
        payload = self._share(client)
        self.entries[key] = payload
        done = asyncio.get_running_loop().create_future()
        self._push(channel, client.client_id, payload, done)
        await asyncio.shield(done)

    def remove(self, channel: str, client_id: str) -> None:
        """Remove the entry soon, after every operation queued before (never blocks)."""
        if self.entries.pop((channel, client_id), None) is not None:
            self._release(client_id)
            self._push(channel, client_id, None, None)

    def _share(self, client: ClientInfo) -> bytes:
        """The client's payload, encoded once and shared by all its channels."""
        shared = self._payloads.get(client.client_id)
        if shared is not None and shared[0] is client:
            self._payloads[client.client_id] = (client, shared[1], shared[2] + 1)
            return shared[1]
        payload = client.payload()
        count = shared[2] + 1 if shared is not None else 1
        self._payloads[client.client_id] = (client, payload, count)
        return payload

    def _release(self, client_id: str) -> None:
        shared = self._payloads.get(client_id)
        if shared is None:
            return
        if shared[2] <= 1:
            del self._payloads[client_id]
        else:
            self._payloads[client_id] = (shared[0], shared[1], shared[2] - 1)

    def _push(
        self,
        channel: str,
        client_id: str,
        payload: bytes | None,
        done: asyncio.Future[None] | None,
    ) -> None:
        self._queue.append((channel, client_id, payload, done))
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="tidings-presence"
            )
        else:
            assert self._wakeup is not None
            self._wakeup.set()

    async def _run(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        loop = asyncio.get_running_loop()
        refresh_at = loop.time() + self.ttl / 3
        try:
            while self._queue or self.entries:
                if self._queue:
                    await self._apply(*self._queue.popleft())
                    continue
                wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, refresh_at - loop.time())):
                        await wakeup.wait()
                if loop.time() >= refresh_at:
                    refresh_at = loop.time() + self.ttl / 3
                    await self._refresh()
        finally:
            # Cancelled (the hub is closing and the backend hangs): nobody may
            # wait forever for an add that will not happen.
            for _, _, _, done in self._queue:
                if done is not None and not done.done():
                    done.set_result(None)

    async def _apply(
        self,
        channel: str,
        client_id: str,
        payload: bytes | None,
        done: asyncio.Future[None] | None,
    ) -> None:
        try:
            if payload is not None:
                await self._backend.presence_add(channel, client_id, payload, ttl=self.ttl)
            else:
                await self._backend.presence_remove(channel, client_id)
        except Exception:
            # Presence is advisory: a backend outage must not fail the
            # subscription. The next refresh adds the entry again.
            logger.warning("presence update of %s in %s failed", client_id, channel, exc_info=True)
        finally:
            if done is not None and not done.done():
                done.set_result(None)

    async def _refresh(self) -> None:
        for (channel, client_id), payload in list(self.entries.items()):
            if self.entries.get((channel, client_id)) is payload:
                await self._apply(channel, client_id, payload, None)

    async def aclose(self) -> None:
        """Apply what is queued (removals of closing subscriptions), then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        self.entries.clear()
        self._payloads.clear()
        if self._wakeup is not None:
            self._wakeup.set()
        try:
            async with asyncio.timeout(5.0):
                await asyncio.shield(task)
        except TimeoutError:
            logger.warning("presence updates did not finish at shutdown")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
