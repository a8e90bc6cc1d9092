"""Relay: generations as hub channels, cancelled when nobody listens.

Theory of operation
-------------------

``Relay.start(request, owner=…)`` creates a :class:`Generation` with an
unguessable id (``chatcmpl-`` and 128 random bits) and a channel
``llm:{id}``, records its owner (see *Ownership* below), notes the channel's position
(the *origin*: a listener that subscribes from it receives the generation
whole), and starts one task that owns the provider's iterator under
``contextlib.aclosing``. The task publishes each delta as a
``chat.completion.chunk`` event (type ``message``; a usage-only chunk has
type ``usage``), then exactly one ``end`` event whose data says how it ended:
``{"status": "completed" | "failed" | "cancelled", …}``. The task does not
belong to any connection: a client may drop and come back, or several may
watch, through the hub's replay-then-live subscriptions.

Listeners (the original request, each ``/v1/streams/{id}`` viewer) hold
``generation.listening()`` while they are connected. When the count drops to
zero a timer of ``grace`` seconds starts; a listener arriving stops it. When
it fires and the channel still has no local subscriber, the generation is
cancelled with reason ``unheard``. A request may choose its own policy
(``ChatRequest.on_disconnect``): ``grace`` with its own number of seconds,
``cancel`` (a grace of zero) or ``continue`` (no timer: the generation runs
until it ends by itself, bounded by the request's ``max_tokens`` and the
provider's timeout). The wait for the *first* listener always uses the
relay's ``grace``. ``Relay.cancel`` (``DELETE``) does the same
with reason ``deleted``. Cancelling the task closes the provider's iterator
at once, which closes the upstream HTTP request; the task then publishes the
``end`` event with ``status: cancelled``.

Relays on one backend (several servers on Redis) tell each other about
DELETEs and listeners through ``llm.control``: a ``DELETE`` that reaches a
server that does not run the generation is forwarded to the one that does,
and a viewer on another server sends "heard" messages that count as a
listener there.

Ownership
---------

A generation belongs to the principal that created it (an identity such as
``user:alice``; ``anonymous`` when the server has no authentication). The
owner is kept on the generation and, for the other servers on the same
backend, as the one event of the channel ``llm:_owner/{id}`` (published
when the generation starts and again when it ends, so that it lives as long
as the generation's own events). :meth:`Relay.owner` reads it from either
place; the server compares it with the requester's identity. That channel
is in the ``llm`` namespace, which clients cannot read once authentication
is configured; the owner is never part of a chunk or an ``end`` event.

Leases
------

A running generation holds a lease: a presence entry of this relay's
``node`` on ``llm:_owner/{id}`` that lives ``lease`` seconds, added before
the owner is recorded and renewed every third of ``lease`` by one task for
all the generations the relay runs (the memory backend keeps it like any
other presence entry, so it is never lost while the process lives). The
lease is removed after the ``end`` event and the final record are published.

A server that watches a generation running elsewhere (a viewer of
``/v1/streams/{id}``, or a request for its record) checks the lease every
quarter of ``lease``. When it is gone and the channel has no ``end``, the
server that ran it died: the watcher declares it lost. Several watchers
may do so at once, so the declaration rests on the backend's idempotent
publish: each publishes the lost record to ``llm:_owner/{id}`` with the key
``lost:{id}`` and a random claim; the backend keeps the first, and the
watcher whose claim it kept runs ``on_complete`` (in a task of the relay,
not of the viewer that may leave). Each then publishes the
``end`` (``status: lost``, code ``generation_lost``) with the key
``lost-end:{id}``, so that it is published once even if the winner dies
in between. A renewal that fails (the backend down) is logged and tried
again on the next round; the generation goes on (its chunks fail to
publish too while the backend is down, which ends it as failed).

After the end
-------------

Each generation folds its chunks into a
:class:`~tidings.llm.record.GenerationRecord` (:meth:`Generation.record`).
Once its ``end`` is published, the record is published with the owner and
``on_complete`` is awaited with it, within ``hook_timeout`` seconds, in the
generation's task on the server that ran it: what it raises and a timeout
are logged, never passed on. :meth:`Relay.record` answers for a generation
wherever it runs.

A finished generation stays known for ``ttl`` seconds (its events stay in the
channel's history as long, through the ``llm`` namespace options), then it is
forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

from tidings.errors import (
    BackendUnavailable,
    QueueFull,
    ShuttingDown,
    TidingsError,
    UpstreamError,
    UpstreamTimeout,
)
from tidings.hub import Event, Hub
from tidings.llm.chunks import ChunkEncoder, Completion, Delta, error_object
from tidings.llm.config import ProviderRouter
from tidings.llm.control import RelayControl
from tidings.llm.record import GenerationRecord
from tidings.llm.request import ChatRequest
from tidings.types import Position
from tidings.wire.codes import ErrorCode

__all__ = [
    "ANONYMOUS_OWNER",
    "CHANNEL_PREFIX",
    "OWNER_PREFIX",
    "Generation",
    "LLMStats",
    "OnComplete",
    "Relay",
    "Status",
    "failure_end",
    "lost_end",
    "upstream_status",
]

logger = logging.getLogger(__name__)

#: Generations are published to ``llm:{id}``.
CHANNEL_PREFIX = "llm:"
#: The owner of generation ``{id}`` is the data of the event on ``llm:_owner/{id}``.
OWNER_PREFIX = "llm:_owner/"
#: The owner of a generation started without one.
ANONYMOUS_OWNER = "anonymous"
#: Random bytes in a generation id (128 bits: not guessable, not enumerable).
ID_BYTES = 16
#: Seconds between checks of an unheard generation's other subscribers, at least.
MIN_RECHECK = 0.1
#: Finished generations whose TTFT and rate make the recent figures.
RECENT = 100

#: The ``on_complete`` hook: awaited once with each generation's final record.
OnComplete = Callable[[GenerationRecord], Awaitable[None]]


class Status(StrEnum):
    """Where a generation is; all but the first are final."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: The server running it died (its lease expired); never a local generation's.
    LOST = "lost"


def lost_end() -> dict[str, Any]:
    """The ``end`` of a generation whose server stopped holding its lease."""
    return {
        "status": "lost",
        "http_status": 502,
        **error_object(
            "the generation was lost: the server running it stopped",
            type="server_error",
            code=ErrorCode.GENERATION_LOST,
        ),
    }


def upstream_status(exc: UpstreamError) -> int:
    """The HTTP status a client gets for an upstream failure.

    Statuses the client can act on pass through (a bad request, a missing
    model, a rate limit); a timeout is 504; anything else is 502.
    """
    if isinstance(exc, UpstreamTimeout):
        return 504
    if exc.status in (400, 404, 413, 422, 429):
        return exc.status
    return 502


def failure_end(exc: UpstreamError | BackendUnavailable) -> dict[str, Any]:
    """The ``end`` of a generation that failed with ``exc``: ``status``, ``http_status``
    and the OpenAI-shaped ``error`` (the upstream's message; never the backend's address)."""
    if isinstance(exc, BackendUnavailable):
        return {
            "status": "failed",
            "http_status": 503,
            **error_object(
                "the generation stopped: the backend is unavailable",
                type="server_error",
                code=exc.code,
            ),
        }
    return {
        "status": "failed",
        "http_status": upstream_status(exc),
        **error_object(str(exc), type="upstream_error", code=exc.code),
    }


class LLMStats(NamedTuple):
    """A snapshot of the relay's figures.

    Attributes:
        active: Generations running now.
        started: Generations started since the relay was created.
        completed: Generations that finished normally.
        failed: Generations that ended with an upstream or internal error.
        cancelled: Generations cancelled (``DELETE``, unheard, shutdown).
        tokens: Content and tool-call deltas relayed.
        ttft_ms_mean: Mean time to first token of the recent generations, in ms.
        ttft_ms_p50: Median of the same.
        tokens_per_second: Mean rate of the recent generations, first token to last.
    """

    active: int
    started: int
    completed: int
    failed: int
    cancelled: int
    tokens: int
    ttft_ms_mean: float | None
    ttft_ms_p50: float | None
    tokens_per_second: float | None


def _grace_of(on_disconnect: str, grace: float) -> float | None:
    """Seconds a generation with this policy may go unheard; None: no bound."""
    if on_disconnect == "continue":
        return None
    return 0.0 if on_disconnect == "cancel" else grace


class Generation:
    """One generation: its identity, state and listeners."""

    def __init__(
        self,
        relay: Relay,
        generation_id: str,
        model: str,
        provider: str,
        origin: Position,
        *,
        owner: str = ANONYMOUS_OWNER,
        on_disconnect: str = "grace",
        grace: float | None = None,
    ) -> None:
        self._relay = relay
        #: ``"grace"``, ``"cancel"`` or ``"continue"`` (``ChatRequest.on_disconnect``).
        self.on_disconnect = on_disconnect
        #: Seconds unheard before it is cancelled; None: never (``continue``).
        self.grace = _grace_of(on_disconnect, relay.grace if grace is None else grace)
        self.id = generation_id
        self.channel = CHANNEL_PREFIX + generation_id
        #: Who created it (``user:SUB``, ``key:NAME`` or ``anonymous``); never sent to viewers.
        self.owner = owner
        self.model = model
        self.provider = provider
        self.created = int(time.time())
        #: Encodes its ``chat.completion.chunk`` events.
        self.chunks = ChunkEncoder(generation_id, self.created, model)
        self.origin = origin
        self.status = Status.RUNNING
        self.cancel_reason: str | None = None
        self.listeners = 0
        #: When a viewer on another server last said it listens (monotonic seconds).
        self.heard_at = float("-inf")
        self.tokens = 0
        self.started_at = time.monotonic()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.ended_at: float | None = None
        #: The chunks folded into one answer, for :meth:`record`.
        self.completion = Completion(generation_id, self.created, model)
        self.task: asyncio.Task[None] | None = None
        #: The data of the ``end`` event, once the generation has ended.
        self.end: dict[str, Any] | None = None
        #: Whether that event reached the hub (False if the backend failed).
        self.end_published = False
        self._on_done: list[Callable[[], None]] = []
        self._running = False
        self._grace: asyncio.TimerHandle | None = None
        self._done = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.status is not Status.RUNNING

    async def wait(self) -> Status:
        """Wait until the generation has ended and its ``end`` event is published."""
        await self._done.wait()
        return self.status

    def on_done(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` once the generation has ended; return its unregister function."""
        if self._done.is_set():
            callback()
            return lambda: None
        self._on_done.append(callback)
        return lambda: self._on_done.remove(callback) if callback in self._on_done else None

    @contextlib.contextmanager
    def listening(self) -> Iterator[Generation]:
        """Count a listener for the duration of a ``with`` block."""
        self.listeners += 1
        self._stop_grace()
        try:
            yield self
        finally:
            self.listeners -= 1
            if self.listeners == 0:
                self._start_grace()

    def _start_grace(self, delay: float | None = None) -> None:
        """Start the timer: ``delay`` seconds, by default the generation's ``grace``."""
        relay = self._relay
        delay = self.grace if delay is None else delay
        if self.done or not relay.cancel_unheard or self._grace is not None or delay is None:
            return
        self._grace = asyncio.get_running_loop().call_later(delay, self._grace_over)

    def _stop_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def _grace_over(self) -> None:
        self._grace = None
        if self.done or self.listeners:
            return
        if self._relay.hub.subscriber_count(self.channel):
            # Someone follows the channel another way (/sse/llm:…, WebSocket).
            if self.grace is not None:
                self._start_grace(max(self.grace, MIN_RECHECK))
            return
        quiet = time.monotonic() - self.heard_at
        if quiet < self._relay.grace:
            # A viewer on another server listens (it speaks every relay grace / 3);
            # check again when its word expires.
            loop = asyncio.get_running_loop()
            self._grace = loop.call_later(self._relay.grace - quiet, self._grace_over)
            return
        logger.info("generation %s went unheard (%s): cancelling", self.id, self.on_disconnect)
        self.cancel("unheard")

    def cancel(self, reason: str) -> bool:
        """Cancel the generation (closing its upstream request); False if it had ended."""
        if self.done or self.task is None or self.cancel_reason is not None:
            return False
        self.cancel_reason = reason
        if self._running:
            self.task.cancel()
        # else: the task has not run yet; it sees cancel_reason on its first step.
        return True

    def _token(self, now: float) -> None:
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        self.tokens += 1

    def _finish(self, status: Status) -> None:
        self.status = status
        self.ended_at = time.monotonic()
        self._stop_grace()

    def record(self) -> GenerationRecord:
        """What the generation is now: ``running``, or how it ended with everything."""
        end = self.end if self.done and self.end is not None else {}
        message, finish_reason = self.completion.first()
        first, ended = self.first_token_at, self.ended_at
        return GenerationRecord(
            id=self.id,
            model=self.model,
            provider=self.provider,
            created=self.created,
            status=self.status.value,
            reason=end.get("reason") if self.status is Status.CANCELLED else None,
            error=end.get("error"),
            text=message.get("content") or "",
            tool_calls=tuple(message.get("tool_calls") or ()),
            finish_reason=finish_reason,
            usage=self.completion.usage,
            tokens=self.tokens,
            time_to_first_token=round(first - self.started_at, 6) if first is not None else None,
            duration=round(ended - self.started_at, 6) if ended is not None else None,
        )

    def __repr__(self) -> str:
        return f"<Generation {self.id} {self.status} listeners={self.listeners}>"


class Relay:
    """Runs generations and publishes them to the hub.

    Args:
        hub: Where generations are published.
        router: Picks the provider for a model name; the relay closes it.
        grace: Seconds a generation may run with no listener before it is cancelled.
        cancel_unheard: Whether unheard generations are cancelled at all.
        ttl: Seconds a finished generation stays known.
        max_generations: Generations that may run at once; more raise QueueFull.
        max_per_client: Generations one client (the ``client`` given to
            :meth:`start`) may run at once; more raise QueueFull with
            ``per_client``. None: no bound per client.
        lease: Seconds a generation's lease lives unless renewed (see *Leases*).
        on_complete: Awaited with each generation's final record (see *After the end*).
        hook_timeout: Seconds ``on_complete`` may take (a hook with a
            ``timeout`` attribute sets its own).

    Raises:
        ValueError: ``lease`` or ``hook_timeout`` is not a number > 0.
    """

    def __init__(
        self,
        hub: Hub,
        router: ProviderRouter,
        *,
        grace: float = 10.0,
        cancel_unheard: bool = True,
        ttl: float = 600.0,
        max_generations: int = 256,
        max_per_client: int | None = None,
        lease: float = 10.0,
        on_complete: OnComplete | None = None,
        hook_timeout: float = 3.0,
    ) -> None:
        for name, value in (("lease", lease), ("hook_timeout", hook_timeout)):
            if not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a number of seconds > 0, not {value!r}")
        self.hub = hub
        self.lease = lease
        self.on_complete = on_complete
        self.hook_timeout = hook_timeout
        #: Who holds the leases of the generations this relay runs.
        self.node = secrets.token_hex(8)
        self._renewing: asyncio.Task[None] | None = None
        #: ``on_complete`` calls for lost generations (see *Leases*).
        self._hooks: set[asyncio.Task[None]] = set()
        self.router = router
        self.grace = grace
        self.cancel_unheard = cancel_unheard
        self.ttl = ttl
        self.max_generations = max_generations
        self.max_per_client = max_per_client
        #: Running generations by client, for ``max_per_client``.
        self._by_client: dict[str, int] = {}
        self._clients: dict[Generation, str] = {}
        self._generations: dict[str, Generation] = {}
        self._running: set[Generation] = set()
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._counts = {status: 0 for status in Status}
        self._tokens = 0
        self._ttft: deque[float] = deque(maxlen=RECENT)
        self._rates: deque[float] = deque(maxlen=RECENT)
        #: Called with each finished generation's time to first token, in seconds
        #: (the server's metrics set it); once per generation, not per token.
        self.ttft_observer: Callable[[float], None] | None = None
        self._control = RelayControl(hub, on_cancel=self._remote_cancel, on_heard=self._heard)
        #: Set by :meth:`finish`: new generations are refused (ShuttingDown).
        self.closing = False

    async def start(
        self, request: ChatRequest, *, owner: str = ANONYMOUS_OWNER, client: str | None = None
    ) -> Generation:
        """Start a generation for ``request`` and return it.

        Args:
            request: The validated request.
            owner: The identity it belongs to (see *Ownership* above).
            client: Who counts against ``max_per_client`` (a subject, an
                address); None counts against no client's share.

        Raises:
            InvalidChatRequest: no provider serves the requested model, or its
                provider cannot send the request (its ``check``).
            QueueFull: ``max_generations`` are running already, or
                ``max_per_client`` of this client's (``per_client``).
            BackendUnavailable: the hub's backend cannot be reached.
            ShuttingDown: the server is draining (:meth:`finish`).
        """
        if self.closing:
            raise ShuttingDown()
        if len(self._running) >= self.max_generations:
            raise QueueFull(self.max_generations)
        limit = self.max_per_client
        if client is not None and limit is not None and self._by_client.get(client, 0) >= limit:
            raise QueueFull(limit, per_client=True)
        provider = self.router.provider_for(request.model)
        check = getattr(provider, "check", None)
        if check is not None:
            check(request)  # a request it cannot send is refused before anything starts
        await self._control.start()  # before any DELETE from elsewhere can name it
        generation_id = "chatcmpl-" + secrets.token_hex(ID_BYTES)
        await self._take_lease(generation_id)  # before anything names the generation
        origin = await self.hub.position(CHANNEL_PREFIX + generation_id)
        generation = Generation(
            self,
            generation_id,
            request.model,
            provider.name,
            origin,
            owner=owner,
            on_disconnect=request.on_disconnect,
            grace=request.grace,
        )
        await self._record_owner(generation_id, owner, generation.record())
        self._generations[generation_id] = generation
        self._running.add(generation)
        if client is not None:
            self._clients[generation] = client
            self._by_client[client] = self._by_client.get(client, 0) + 1
        self._counts[Status.RUNNING] += 1
        loop = asyncio.get_running_loop()
        generation.task = loop.create_task(
            self._run(generation, request), name=f"tidings-llm-{generation_id}"
        )
        if self._renewing is None or self._renewing.done():
            self._renewing = loop.create_task(self._renew_leases(), name="tidings-llm-leases")
        generation._start_grace(self.grace)  # until the first listener arrives
        return generation

    async def owner(self, generation_id: str) -> str | None:
        """Who a generation belongs to, wherever it runs; None when it is unknown.

        Raises:
            BackendUnavailable: the backend cannot be reached.
        """
        generation = self._generations.get(generation_id)
        if generation is not None:
            return generation.owner
        events = (await self.hub.history(OWNER_PREFIX + generation_id, limit=1)).events
        if not events or not isinstance(events[-1].data, dict):
            return None
        owner = events[-1].data.get("owner")
        return owner if isinstance(owner, str) else None

    async def _record_owner(self, generation_id: str, owner: str, record: GenerationRecord) -> None:
        await self.hub.publish(
            OWNER_PREFIX + generation_id,
            {"owner": owner, "record": record.to_json()},
            event="owner",
        )

    async def record(self, generation_id: str) -> GenerationRecord | None:
        """The record of a generation, wherever it runs; None when it is unknown.

        A generation running elsewhere whose lease has expired is declared
        lost first (see *Leases*).

        Raises:
            BackendUnavailable: the backend cannot be reached.
        """
        generation = self._generations.get(generation_id)
        if generation is not None:
            return generation.record()
        record = await self._stored_record(generation_id)
        if record is not None and not record.ended and await self.check_lease(generation_id):
            record = await self._stored_record(generation_id)
        return record

    async def _stored_record(self, generation_id: str) -> GenerationRecord | None:
        events = (await self.hub.history(OWNER_PREFIX + generation_id, limit=1)).events
        data = events[-1].data if events else None
        if not isinstance(data, dict) or not isinstance(data.get("record"), dict):
            return None
        try:
            return GenerationRecord.from_json(data["record"])
        except ValueError:
            logger.warning("ignoring the unreadable record of generation %s", generation_id)
            return None

    async def _take_lease(self, generation_id: str) -> None:
        await self.hub.backend.presence_add(
            OWNER_PREFIX + generation_id, self.node, b"{}", ttl=self.lease
        )

    async def _renew_leases(self) -> None:
        failing = False
        while self._running:
            await asyncio.sleep(self.lease / 3)
            try:
                for generation in list(self._running):
                    await self._take_lease(generation.id)
            except TidingsError as exc:
                if not failing:
                    logger.warning("could not renew the leases of running generations: %s", exc)
                failing = True
            else:
                if failing:
                    logger.info("leases of running generations renewed again")
                failing = False

    async def check_lease(self, generation_id: str) -> bool:
        """Whether a generation running elsewhere has ended; declare it lost when
        its lease has expired with no ``end`` (see *Leases*).

        Raises:
            BackendUnavailable: the backend cannot be reached.
        """
        if generation_id in self._generations:
            return self._generations[generation_id].done
        owner_channel = OWNER_PREFIX + generation_id
        if await self.hub.backend.presence(owner_channel):
            return False
        channel = CHANNEL_PREFIX + generation_id
        last = (await self.hub.history(channel, limit=1)).events
        if last and last[-1].event == "end":
            return True
        stored = await self._stored_record(generation_id)
        owner = (await self.owner(generation_id)) or ANONYMOUS_OWNER
        if stored is None or stored.ended:
            return True
        lost = await self._lost_record(stored)
        claim = secrets.token_hex(8)
        position = await self.hub.publish(
            owner_channel,
            {"owner": owner, "record": lost.to_json(), "claim": claim},
            event="owner",
            key=f"lost:{generation_id}",
        )
        kept = await self.hub.history(
            owner_channel, since=Position(position.epoch, position.offset - 1), limit=1
        )
        won = bool(kept.events) and isinstance(kept.events[0].data, dict)
        won = won and kept.events[0].data.get("claim") == claim
        await self.hub.publish(channel, lost_end(), event="end", key=f"lost-end:{generation_id}")
        if won:
            logger.warning("generation %s was lost: the server running it stopped", generation_id)
            self._counts[Status.LOST] += 1
            # Not in the caller's task: a viewer that goes away must not cancel the hook.
            task = asyncio.get_running_loop().create_task(self._complete(lost))
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)
        return True

    async def _lost_record(self, stored: GenerationRecord) -> GenerationRecord:
        """``stored`` as lost, with what its channel's history still holds."""
        completion = Completion(stored.id, stored.created, stored.model)
        tokens = 0
        history = await self.hub.history(CHANNEL_PREFIX + stored.id)
        for event in history.events:
            if isinstance(event.data, dict) and event.event in ("message", "usage"):
                completion.add(event.data)
                tokens += event.event == "message"
        message, finish_reason = completion.first()
        return replace(
            stored,
            status=Status.LOST.value,
            error=lost_end()["error"],
            text=message.get("content") or "",
            tool_calls=tuple(message.get("tool_calls") or ()),
            finish_reason=finish_reason,
            usage=completion.usage,
            tokens=tokens,
        )

    async def _complete(self, record: GenerationRecord) -> None:
        """Await ``on_complete(record)`` within its timeout; log what goes wrong."""
        hook = self.on_complete
        if hook is None:
            return
        timeout = getattr(hook, "timeout", None) or self.hook_timeout
        try:
            async with asyncio.timeout(timeout):
                await hook(record)
        except TimeoutError:
            logger.warning(
                "on_complete hook did not return within %g s (generation %s)", timeout, record.id
            )
        except TidingsError as exc:
            logger.warning("on_complete hook failed (generation %s): %s", record.id, exc)
        except Exception as exc:
            logger.exception(
                "on_complete hook raised %s (generation %s)", type(exc).__name__, record.id
            )

    def get(self, generation_id: str) -> Generation | None:
        """The generation with this id, while it runs or within the TTL after."""
        return self._generations.get(generation_id)

    def cancel(self, generation_id: str, reason: str = "deleted") -> Generation | None:
        """Cancel a generation; return it, or None when it is unknown."""
        generation = self._generations.get(generation_id)
        if generation is not None:
            generation.cancel(reason)
        return generation

    async def cancel_anywhere(
        self, generation_id: str, reason: str = "deleted", *, wait: float = 10.0
    ) -> dict[str, Any] | None:
        """Cancel a generation wherever it runs and return the data of its ``end`` event.

        Returns ``None`` for an unknown generation, and ``{"status": "cancelling"}``
        when the ``end`` did not come within ``wait`` seconds.
        """
        generation = self._generations.get(generation_id)
        if generation is not None:
            generation.cancel(reason)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await generation.wait()
            return generation.end if generation.end is not None else {"status": "cancelling"}
        channel = CHANNEL_PREFIX + generation_id
        position = await self.hub.position(channel)
        if position.offset == 0:
            return None
        last = (await self.hub.history(channel, limit=1)).events
        if last and last[-1].event == "end":
            ended: dict[str, Any] = last[-1].data
            return ended
        async with self.hub.subscribe(channel, since=position) as subscription:
            await self._control.send_cancel(generation_id, reason)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    async for item in subscription:
                        if isinstance(item, Event) and item.event == "end":
                            end: dict[str, Any] = item.data
                            return end
        return {"status": "cancelling"}

    @contextlib.asynccontextmanager
    async def remote_listener(self, generation_id: str) -> AsyncIterator[None]:
        """Count as a listener of a generation that runs on another server, for a block."""
        task = asyncio.get_running_loop().create_task(self._keep_heard(generation_id))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_heard(self, generation_id: str) -> None:
        watch = asyncio.get_running_loop().create_task(self._watch_lease(generation_id))
        try:
            while True:
                await self._control.send_heard(generation_id)
                await asyncio.sleep(max(self.grace / 3, 0.01))
        finally:
            watch.cancel()

    async def _watch_lease(self, generation_id: str) -> None:
        """Check the lease of a generation running elsewhere until it has ended."""
        while True:
            try:
                if await self.check_lease(generation_id):
                    return
            except TidingsError as exc:
                logger.warning("could not check the lease of generation %s: %s", generation_id, exc)
            await asyncio.sleep(self.lease / 4)

    def _remote_cancel(self, generation_id: str, reason: str) -> None:
        generation = self._generations.get(generation_id)
        if generation is not None:
            generation.cancel(reason)

    def _heard(self, generation_id: str) -> None:
        generation = self._generations.get(generation_id)
        if generation is not None:
            generation.heard_at = time.monotonic()

    async def _run(self, generation: Generation, request: ChatRequest) -> None:
        provider = self.router.provider_for(request.model)
        end: dict[str, Any]
        status = Status.COMPLETED
        generation._running = True
        try:
            if generation.cancel_reason is not None:
                raise asyncio.CancelledError
            async with contextlib.aclosing(provider.stream(request)) as deltas:
                async for delta in deltas:
                    await self._publish(generation, delta)
            end = {"status": "completed"}
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            status = Status.CANCELLED
            reason = generation.cancel_reason or "cancelled"
            end = {
                "status": "cancelled",
                "reason": reason,
                **error_object(
                    f"the generation was cancelled ({reason})",
                    type="cancelled",
                    code=ErrorCode.CANCELLED,
                ),
            }
        except (UpstreamError, BackendUnavailable) as exc:
            # Expected failures: the upstream's, or a chunk the backend did not take.
            status = Status.FAILED
            logger.warning("generation %s failed: %s", generation.id, exc)
            end = failure_end(exc)
        except Exception:
            status = Status.FAILED
            logger.exception("generation %s failed", generation.id)
            end = {
                "status": "failed",
                "http_status": 500,
                **error_object(
                    "the generation failed", type="server_error", code=ErrorCode.INTERNAL
                ),
            }
        generation._finish(status)
        generation.end = end
        self._finished(generation)
        record = generation.record()
        try:
            await self.hub.publish(generation.channel, end, event="end")
            generation.end_published = True
            # Again, with the final record, so that it lives as long as the
            # events (the history TTL); then the lease is no longer needed.
            await self._record_owner(generation.id, generation.owner, record)
            await self.hub.backend.presence_remove(OWNER_PREFIX + generation.id, self.node)
        except TidingsError as exc:
            # Local listeners still learn the end from ``generation.end``.
            logger.warning("could not publish the end of generation %s: %s", generation.id, exc)
        finally:
            generation._done.set()
            callbacks, generation._on_done = generation._on_done, []
            for callback in callbacks:
                callback()
        await self._complete(record)

    async def _publish(self, generation: Generation, delta: Delta) -> None:
        if delta.is_token:
            generation._token(time.monotonic())
            self._tokens += 1
        generation.completion.add_delta(delta)
        # Already JSON: the hub keeps the bytes as they are (no second encoding).
        chunk: Any = orjson.Fragment(generation.chunks.encode(delta))
        event = "message" if delta.has_choice else "usage"
        await self.hub.publish(generation.channel, chunk, event=event)

    def _finished(self, generation: Generation) -> None:
        self._running.discard(generation)
        client = self._clients.pop(generation, None)
        if client is not None:
            left = self._by_client[client] - 1
            if left:
                self._by_client[client] = left
            else:
                del self._by_client[client]
        self._counts[generation.status] += 1
        first, last = generation.first_token_at, generation.last_token_at
        if first is not None:
            self._ttft.append(first - generation.started_at)
            if self.ttft_observer is not None:
                self.ttft_observer(first - generation.started_at)
            if last is not None and last > first and generation.tokens > 1:
                self._rates.append((generation.tokens - 1) / (last - first))
        self._expiry[generation.id] = asyncio.get_running_loop().call_later(
            self.ttl, self._forget, generation.id
        )

    def _forget(self, generation_id: str) -> None:
        self._expiry.pop(generation_id, None)
        self._generations.pop(generation_id, None)

    def states(self) -> dict[str, int]:
        """Generations the relay holds now (running, or finished less than ``ttl``
        ago), by status."""
        counts = dict.fromkeys(Status, 0)
        for generation in self._generations.values():
            counts[generation.status] += 1
        return {status.value: count for status, count in counts.items()}

    def stats(self) -> LLMStats:
        """The relay's figures now."""
        ttft = list(self._ttft)
        return LLMStats(
            active=len(self._running),
            started=self._counts[Status.RUNNING],
            completed=self._counts[Status.COMPLETED],
            failed=self._counts[Status.FAILED],
            cancelled=self._counts[Status.CANCELLED],
            tokens=self._tokens,
            ttft_ms_mean=round(statistics.fmean(ttft) * 1000, 3) if ttft else None,
            ttft_ms_p50=round(statistics.median(ttft) * 1000, 3) if ttft else None,
            tokens_per_second=round(statistics.fmean(self._rates), 1) if self._rates else None,
        )

    async def finish(self, *, wait: float) -> int:
        """Refuse new generations and give the running ones ``wait`` seconds to end.

        Returns how many are still running then; :meth:`aclose` cancels them.
        """
        self.closing = True
        tasks = [g.task for g in self._running if g.task is not None]
        if tasks and wait > 0:
            logger.info("waiting up to %.3g s for %d running generations", wait, len(tasks))
            await asyncio.wait(tasks, timeout=wait)
        return len(self._running)

    async def aclose(self, *, wait: float = 10.0) -> None:
        """Cancel every running generation (reason ``shutdown``), wait, close providers."""
        tasks = []
        for generation in list(self._running):
            generation.cancel("shutdown")
            if generation.task is not None:
                tasks.append(generation.task)
        if tasks:
            await asyncio.wait(tasks, timeout=wait)
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        self._generations.clear()
        if self._hooks:
            await asyncio.wait(set(self._hooks), timeout=wait)
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        await self._control.aclose()
        await self.router.aclose()
