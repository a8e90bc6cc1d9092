"""Fanout: the Pub/Sub connection of one process and the channels it watches.

Theory of operation
-------------------

*Fan-out.* One Pub/Sub connection per process carries every watched channel.
A channel is SUBSCRIBEd when it gets its first local watcher and
UNSUBSCRIBEd when the last one leaves; ``watch`` returns once Redis has
confirmed the subscription and the channel's position is known. From then
on each channel tracks the last offset it delivered. The next offset is
delivered at once; an older one is a duplicate and dropped; a jump (or
another epoch) pauses the channel, which fills the gap from the stream and
then drains what arrived meanwhile, or tells the hub to ``reset`` when
history cannot fill it. When the Pub/Sub connection drops, the process
reconnects with capped exponential backoff and full jitter, subscribes again
and fills every channel from the stream the same way, so delivery stays
exactly once and in order.

*Reads and delivery.* A read travels on a command connection and can see
events that Pub/Sub has not brought yet. The hub replays such a read to a
joining subscriber and then makes it live, so ``read`` and ``position`` of
a watched channel return only once delivery has reached the position they
saw (after a short grace the channel reads the stream instead of waiting
for Pub/Sub). Watched channels also get their meta expiry pushed back
periodically, so a quiet channel keeps its epoch while anyone listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from typing import Any

from redis.asyncio.connection import AbstractConnection as Connection
from redis.exceptions import RedisError

from tidings.errors import BackendUnavailable
from tidings.hub.backends.base import Listener, PresenceListener, ResetListener
from tidings.hub.backends.redis.codec import decode_message
from tidings.hub.backends.redis.pipeline import Pipeline
from tidings.hub.backends.redis.scripts import Scripts
from tidings.hub.event import Event, Reset
from tidings.hub.names import NamespaceOptions
from tidings.types import Position

__all__ = ["Fanout"]

logger = logging.getLogger(__name__)

#: Events a paused channel buffers while it fills a gap; past it they are
#: dropped and read from the stream instead.
MAX_QUEUED = 10_000
#: Seconds a read waits for Pub/Sub to deliver what it saw before reading the stream.
PUBSUB_GRACE = 0.1


class _Watch:
    """Fan-out state of one watched channel in this process."""

    __slots__ = (
        "channel",
        "count",
        "epoch",
        "filler",
        "last",
        "live",
        "name",
        "queue",
        "ready",
        "waiters",
    )

    def __init__(self, channel: str, name: bytes, ready: asyncio.Future[None]) -> None:
        self.channel = channel
        self.name = name
        self.count = 1
        #: Resolved when Redis confirms the subscription (or fails with the reason).
        self.ready = ready
        #: The position delivered last; unknown until the watch is confirmed.
        self.epoch = ""
        self.last = -1
        #: Whether messages are delivered as they come (False: queued while
        #: the position is unknown or a gap is being filled).
        self.live = False
        self.queue: deque[Event] = deque()
        self.filler: asyncio.Task[None] | None = None
        #: Reads waiting for delivery to reach their position.
        self.waiters: list[tuple[Position, asyncio.Future[None]]] = []

    def reached(self, position: Position) -> bool:
        return self.epoch == position.epoch and self.last >= position.offset

    def wake(self, *, everyone: bool = False) -> None:
        """Release the waiters whose position delivery has reached."""
        waiting = []
        for position, future in self.waiters:
            if everyone or self.reached(position):
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((position, future))
        self.waiters = waiting


class Fanout:
    """The Pub/Sub connection of one process and the channels it watches.

    Args:
        pipeline: The command side: where the Pub/Sub connection connects to.
        scripts: Reads of positions and streams, to fill gaps.
        client_name: The Pub/Sub connection's name (``CLIENT LIST`` shows it).
        timeout: Seconds to wait for Redis before a call fails.
        health_interval: Seconds between PINGs; three silent ones end a connection.
        max_delay: Cap of the reconnection backoff, in seconds.
        refresh_interval: Seconds between refreshes of the watched channels' meta expiry.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        scripts: Scripts,
        *,
        client_name: str,
        timeout: float,
        health_interval: float,
        max_delay: float,
        refresh_interval: float,
    ) -> None:
        self._pipeline = pipeline
        self._scripts = scripts
        self._client_name = client_name
        self._timeout = timeout
        self._health_interval = health_interval
        self._max_delay = max_delay
        self.listener: Listener = _ignore
        self.reset_listener: ResetListener = _ignore
        self.presence_listener: PresenceListener = _ignore
        self._watches: dict[str, _Watch] = {}
        self._by_name: dict[bytes, _Watch] = {}
        self._conn: Connection | None = None
        #: Replies expected on the connection, in order: the watch a
        #: SUBSCRIBE confirms, or None for UNSUBSCRIBE and PING.
        self._expected: deque[_Watch | None] = deque()
        self._outgoing: list[tuple[Any, ...]] = []
        self._wakeup = asyncio.Event()
        self._down = False
        self._task: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._refresh_interval = refresh_interval
        #: Reconnections so far (for tests and stats).
        self.reconnects = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="tidings-redis-pubsub")
        self._refresher = loop.create_task(self._refresh_forever(), name="tidings-redis-refresh")

    async def aclose(self) -> None:
        tasks = (self._task, self._refresher)
        self._task = self._refresher = None
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for watch in list(self._watches.values()):
            self._stop_filler(watch)
            if not watch.ready.done():
                watch.ready.set_exception(BackendUnavailable(self._pipeline.label, "closed"))
                watch.ready.exception()  # retrieved: nobody may be waiting
        self._watches.clear()
        self._by_name.clear()

    async def _refresh_forever(self) -> None:
        """Keep the epoch of watched channels alive, however long they go without publishes.

        A channel's meta hash expires ``meta_ttl`` after its last publish; while
        a process watches the channel, it pushes that expiry back, so that
        its subscribers are not told to reset after a quiet day.
        """
        while True:
            await asyncio.sleep(self._refresh_interval)
            channels = list(self._watches)
            try:
                await asyncio.gather(*(self._scripts.touch(channel) for channel in channels))
            except Exception as exc:
                logger.warning("refreshing %d watched channels failed: %s", len(channels), exc)

    # -- watch / unwatch ---------------------------------------------------------------

    async def watch(self, channel: str) -> None:
        watch = self._watches.get(channel)
        if watch is not None:
            watch.count += 1
            try:
                await asyncio.shield(watch.ready)
            except BaseException:
                self._release(watch)
                raise
            return
        if self._task is None:
            raise BackendUnavailable(self._pipeline.label, "the backend is not started")
        if self._down:
            raise BackendUnavailable(self._pipeline.label, "the Pub/Sub connection is down")
        name = self._scripts.pubsub_name(channel).encode()
        watch = _Watch(channel, name, asyncio.get_running_loop().create_future())
        self._watches[channel] = watch
        self._by_name[name] = watch
        if self._conn is not None:
            self._subscribe(watch)
        try:
            async with asyncio.timeout(self._timeout * 2):
                await asyncio.shield(watch.ready)
        except TimeoutError:
            self._release(watch)
            raise BackendUnavailable(
                self._pipeline.label, "no confirmation of SUBSCRIBE in time"
            ) from None
        except BaseException:
            self._release(watch)
            raise

    def positions(self) -> dict[str, Position]:
        """The position delivered last on each watched channel whose position is known."""
        return {
            channel: Position(watch.epoch, watch.last)
            for channel, watch in self._watches.items()
            if watch.last >= 0
        }

    async def delivered(self, channel: str, position: Position) -> None:
        """Return once every event of ``channel`` up to ``position`` went to the listener.

        A read goes over the command connection and may see events that the
        Pub/Sub connection has not delivered yet; a subscriber that went live
        after such a read would get them twice (in its replay, then live).
        So reads of a watched channel wait for delivery to catch up, which
        takes no time at all unless Pub/Sub lags.
        """
        watch = self._watches.get(channel)
        if (
            watch is None
            or not watch.ready.done()
            or position.offset == 0  # nothing to deliver, even in a new epoch
            or watch.reached(position)
        ):
            return
        future = asyncio.get_running_loop().create_future()
        watch.waiters.append((position, future))
        try:
            try:
                async with asyncio.timeout(PUBSUB_GRACE):
                    await asyncio.shield(future)
            except TimeoutError:
                # Pub/Sub did not bring it: read the stream instead.
                if self._conn is not None and self._watches.get(channel) is watch:
                    watch.live = False
                    self._start_filler(watch)
            async with asyncio.timeout(self._timeout * 2):
                await future
        except TimeoutError:
            raise BackendUnavailable(
                self._pipeline.label, f"delivery of {channel} is behind Redis"
            ) from None
        finally:
            watch.waiters = [(p, f) for p, f in watch.waiters if f is not future]

    def unwatch(self, channel: str) -> None:
        watch = self._watches.get(channel)
        if watch is not None:
            self._release(watch)

    def _release(self, watch: _Watch) -> None:
        channel = watch.channel
        if self._watches.get(channel) is not watch:
            return  # already gone (a failed first confirmation removes it)
        watch.count -= 1
        if watch.count > 0:
            return
        del self._watches[channel]
        del self._by_name[watch.name]
        self._stop_filler(watch)
        watch.wake(everyone=True)
        if not watch.ready.done():
            watch.ready.cancel()
        if self._conn is not None:
            self._send(("UNSUBSCRIBE", watch.name), None)

    def _subscribe(self, watch: _Watch) -> None:
        self._send(("SUBSCRIBE", watch.name), watch)

    def _send(self, command: tuple[Any, ...], expects: _Watch | None) -> None:
        self._outgoing.append(command)
        self._expected.append(expects)
        self._wakeup.set()

    # -- the connection --------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = sessions = 0
        while True:
            if attempt:
                # Capped exponential backoff with full jitter: nodes that lost
                # Redis together do not come back in lockstep.
                delay = random.uniform(0, min(self._max_delay, 0.05 * 2**attempt))
                await asyncio.sleep(delay)
            conn = self._pipeline.new_connection(client_name=self._client_name)
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as exc:
                self._down = True
                self._fail_pending(exc)
                attempt += 1
                logger.warning("Redis Pub/Sub connection failed (attempt %d): %s", attempt, exc)
                with contextlib.suppress(Exception):
                    await conn.disconnect()
                continue
            if sessions:
                self.reconnects += 1
                logger.info("Redis Pub/Sub connection restored after %d attempt(s)", attempt + 1)
            sessions += 1
            self._down = False
            started = loop.time()
            try:
                await self._session(conn)
            except (RedisError, OSError, TimeoutError) as exc:
                logger.warning("Redis Pub/Sub connection lost: %s", exc)
            except Exception:
                logger.exception("Redis Pub/Sub session failed; reconnecting")
            finally:
                self._conn = None
                self._outgoing.clear()
                self._expected.clear()
                for watch in self._watches.values():
                    watch.live = False
                    self._stop_filler(watch)
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            self._fail_pending(None)
            self._down = True
            # A session that ended at once (Redis accepting and dropping
            # connections) keeps backing off; a long one starts over.
            attempt = 1 if loop.time() - started > self._max_delay else attempt + 1

    def _fail_pending(self, exc: BaseException | None) -> None:
        """Fail the watches still waiting for their first confirmation."""
        for channel, watch in list(self._watches.items()):
            if not watch.ready.done():
                detail = f"Pub/Sub connection lost: {exc}" if exc else "Pub/Sub connection lost"
                watch.ready.set_exception(BackendUnavailable(self._pipeline.label, detail))
                watch.ready.exception()
                del self._watches[channel]
                del self._by_name[watch.name]

    async def _session(self, conn: Connection) -> None:
        self._conn = conn
        self._outgoing.clear()
        self._expected.clear()
        for watch in self._watches.values():
            self._subscribe(watch)
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._write_loop(conn), name="tidings-redis-pubsub-write"),
            loop.create_task(self._read_loop(conn), name="tidings-redis-pubsub-read"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # raises what ended the session

    async def _write_loop(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        ping_at = loop.time() + self._health_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, ping_at - loop.time())):
                    await self._wakeup.wait()
            self._wakeup.clear()
            if loop.time() >= ping_at:
                ping_at = loop.time() + self._health_interval
                self._send(("PING",), None)
                self._wakeup.clear()
            commands, self._outgoing = self._outgoing, []
            if commands:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    async def _read_loop(self, conn: Connection) -> None:
        silence = self._health_interval * 3
        while True:
            reply = await conn.read_response(timeout=silence)
            if reply is None:
                raise TimeoutError(f"no reply on the Pub/Sub connection for {silence} s")
            kind = reply[0]
            if kind == b"message":
                watch = self._by_name.get(reply[1])
                if watch is not None:
                    try:
                        self._on_message(watch, reply[2])
                    except (ValueError, IndexError, UnicodeDecodeError):
                        # Not ours (someone else publishing under our prefix): skip it.
                        logger.warning("ignoring a malformed message on %r", reply[1][:200])
                continue
            expects = self._expected.popleft() if self._expected else None
            if kind == b"subscribe" and expects is not None:
                self._on_confirmed(expects)

    # -- delivery --------------------------------------------------------------------

    def _on_confirmed(self, watch: _Watch) -> None:
        if self._watches.get(watch.channel) is not watch:
            return  # unwatched meanwhile
        self._start_filler(watch)

    def _on_message(self, watch: _Watch, message: bytes) -> None:
        event = decode_message(watch.channel, message)
        if not isinstance(event, Event):
            if event is not None:
                self.presence_listener(event)
            return
        if watch.live:
            if event.epoch == watch.epoch:
                if event.offset == watch.last + 1:
                    watch.last = event.offset
                    self.listener(event)
                    if watch.waiters:
                        watch.wake()
                    return
                if event.offset <= watch.last:
                    return  # a duplicate
            watch.live = False
            watch.queue.append(event)
            self._start_filler(watch)
            return
        if len(watch.queue) >= MAX_QUEUED:
            watch.queue.clear()  # the stream has them; the filler reads them from there
        watch.queue.append(event)

    def _start_filler(self, watch: _Watch) -> None:
        if watch.filler is None or watch.filler.done():
            watch.filler = asyncio.get_running_loop().create_task(
                self._fill(watch), name=f"tidings-redis-fill-{watch.channel}"
            )

    def _stop_filler(self, watch: _Watch) -> None:
        filler, watch.filler = watch.filler, None
        if filler is not None and filler is not asyncio.current_task():
            filler.cancel()

    async def _fill(self, watch: _Watch) -> None:
        """Bring the channel up to date from Redis, then deliver what queued meanwhile."""
        delay = 0.05
        while True:
            caught_up = False
            try:
                if not watch.ready.done():
                    # First confirmation: the position to start from, nothing to deliver.
                    info = await self._scripts.position(watch.channel)
                    watch.epoch, watch.last = info.position
                    watch.ready.set_result(None)
                    caught_up = False
                else:
                    await self._catch_up(watch)
                    caught_up = True
            except Exception as exc:
                if not watch.ready.done():
                    watch.ready.set_exception(exc)
                    return
                if self._conn is None:
                    return  # the reconnection fills every channel again
                logger.warning("filling %s from Redis failed: %s", watch.channel, exc)
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, self._max_delay)
                continue
            done = self._drain(watch, drop_other_epochs=caught_up)
            if watch.waiters:
                watch.wake()
            if done:
                watch.filler = None
                return

    async def _catch_up(self, watch: _Watch) -> None:
        scripts = self._scripts
        # Late events are still events: no TTL trimming for a catch-up read.
        options = NamespaceOptions(history_ttl=scripts.meta_ttl)
        history = await scripts.read(
            watch.channel, since=Position(watch.epoch, watch.last), limit=None, options=options
        )
        if history.reset is not None:
            # The gap cannot be filled exactly (another epoch, or older than
            # history): say so, and go on from the oldest event still kept,
            # so that subscribers lose no more than history did.
            kept = await scripts.read(watch.channel, since=None, limit=None, options=options)
            epoch, offset = kept.position
            start = kept.events[0].offset - 1 if kept.events else offset
            watch.epoch, watch.last = epoch, start
            self.reset_listener(Reset(watch.channel, Position(epoch, start), history.reset.reason))
            history = kept
        for event in history.events:
            if event.offset == watch.last + 1:
                watch.last = event.offset
                self.listener(event)

    def _drain(self, watch: _Watch, *, drop_other_epochs: bool) -> bool:
        """Deliver the queue; return False if it has a gap the stream must fill.

        Right after a catch-up, an event of another epoch is from before the
        epoch the catch-up found (Pub/Sub delivered it before that read), so
        it is dropped rather than read for again.
        """
        queue = watch.queue
        while queue:
            event = queue[0]
            if event.epoch != watch.epoch and drop_other_epochs:
                queue.popleft()
                continue
            if event.epoch == watch.epoch:
                if event.offset <= watch.last:
                    queue.popleft()
                    continue
                if event.offset == watch.last + 1:
                    queue.popleft()
                    watch.last = event.offset
                    self.listener(event)
                    continue
            return False
        watch.live = True
        return True


def _ignore(item: object) -> None:
    pass
