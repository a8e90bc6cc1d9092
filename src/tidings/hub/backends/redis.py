"""RedisBackend: several processes on one Redis behave as one hub.

Theory of operation
-------------------

*Storage.* Each channel has a meta hash (epoch, last offset) and a stream of
its newest events, keyed by offset (``redis_scripts/common.lua`` lists every
key). Each operation is one Lua script, so it is atomic across processes:
``publish`` checks the idempotency key, takes the next offset, appends to the
stream (trimmed to the namespace's history size and TTL), refreshes the key
expiries and PUBLISHes the encoded event, all at once. Pub/Sub order is
therefore offset order. A channel whose meta hash is gone (expired, evicted,
flushed, Redis restarted without persistence) gets a fresh epoch on its next
use, so old positions get a ``reset``. Script calls are pipelined: calls made
while a batch is in flight go out together in the next one.

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

*Failures.* Every redis error is translated once, by ``_map_redis_errors``,
into :class:`~tidings.errors.BackendUnavailable`. Commands time out after
``timeout`` seconds and are never retried by the client library: a publish
either ran whole inside Redis or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import random
import secrets
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection as Connection
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from tidings.errors import BackendUnavailable
from tidings.hub.backends.base import (
    ChannelInfo,
    History,
    Listener,
    PresenceChange,
    PresenceListener,
    ResetListener,
    new_epoch,
)
from tidings.hub.event import Event, Reset
from tidings.hub.names import NamespaceOptions
from tidings.types import Position

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)

#: Events a paused channel buffers while it fills a gap; past it they are
#: dropped and read from the stream instead.
MAX_QUEUED = 10_000
#: Seconds a read waits for Pub/Sub to deliver what it saw before reading the stream.
PUBSUB_GRACE = 0.1
#: Extra lifetime of presence keys beyond an entry's TTL (collects what a
#: vanished process left behind; entry scores decide what is live).
PRESENCE_KEY_SLACK_MS = 60_000


def _script(name: str) -> str:
    folder = resources.files("tidings.hub.backends") / "redis_scripts"
    common = (folder / "common.lua").read_text(encoding="utf-8")
    return common + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8")


class _Script:
    """A Lua script: its source and SHA1, loaded into Redis on first NOSCRIPT."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = _script(name)
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


_SCRIPTS = (
    "publish",
    "read",
    "position",
    "channels",
    "presence_add",
    "presence_remove",
    "presence",
    "touch",
)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisBackend:
    """Backend on Redis 7: history in Streams, fan-out over Pub/Sub.

    Args:
        url: The Redis URL (``redis://``, ``rediss://`` or ``unix://``).
        prefix: Prepended to every key and Pub/Sub channel name.
        idempotency_window: Seconds a publish ``key`` is remembered.
        timeout: Seconds to connect or to wait for a reply before the call
            fails with :class:`~tidings.errors.BackendUnavailable`.
        meta_ttl: Seconds a channel's epoch and offset outlive its last
            publish; after that it starts over in a new epoch.
        health_interval: Seconds between PINGs on the Pub/Sub connection;
            a connection silent for three of them is replaced.
        reconnect_max_delay: Cap of the reconnection backoff, in seconds.
        clock: Returns the time in seconds; by default Redis' own clock is
            used, so that every process agrees (tests pass a fake).
    """

    name = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "tidings:",
        idempotency_window: float = 300.0,
        timeout: float = 2.0,
        meta_ttl: float = 86400.0,
        health_interval: float = 5.0,
        reconnect_max_delay: float = 2.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        for option, value in (
            ("idempotency_window", idempotency_window),
            ("timeout", timeout),
            ("meta_ttl", meta_ttl),
            ("health_interval", health_interval),
            ("reconnect_max_delay", reconnect_max_delay),
        ):
            if value <= 0:
                raise ValueError(f"{option} must be > 0 seconds, not {value}")
        self.url = url
        self.prefix = prefix
        self._window_ms = _ms(idempotency_window)
        self._timeout = timeout
        self._meta_ttl_ms = _ms(meta_ttl)
        self._clock = clock
        self._instance = secrets.token_hex(3)
        self._scripts = {name: _Script(name) for name in _SCRIPTS}
        self._client: aioredis.Redis | None = None
        self._label = "redis"
        self._batch: list[tuple[_Script, Sequence[Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._fanout = _Fanout(self, health_interval=health_interval, max_delay=reconnect_max_delay)

    # -- lifecycle -------------------------------------------------------------

    def set_listener(self, listener: Listener) -> None:
        self._fanout.listener = listener

    def set_reset_listener(self, listener: ResetListener) -> None:
        self._fanout.reset_listener = listener

    def set_presence_listener(self, listener: PresenceListener) -> None:
        self._fanout.presence_listener = listener

    async def start(self) -> None:
        """Connect (raising BackendUnavailable if Redis does not answer) and start fan-out."""
        if self._client is not None:
            return
        client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            # RESP2 everywhere: Pub/Sub messages are then plain replies that
            # the fan-out reads itself, and reply shapes do not depend on the
            # library's default.
            protocol=2,
        )
        kwargs = client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        self._label = f"redis at {where}"  # never the URL: it may hold a password
        self._client = client
        try:
            with self._map_redis_errors():
                await client.ping()
        except BaseException:
            self._client = None
            await client.aclose()
            raise
        await self._fanout.start()

    async def aclose(self) -> None:
        await self._fanout.aclose()
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @contextlib.contextmanager
    def _map_redis_errors(self) -> Iterator[None]:
        """Translate redis-py's errors (and socket errors) into BackendUnavailable."""
        try:
            yield
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(self._label, str(exc) or type(exc).__name__) from exc

    # -- keys ----------------------------------------------------------------------

    def _keys(self, channel: str) -> list[str]:
        base = f"{self.prefix}{{{channel}}}"
        return [base + ":m", base + ":s", self.prefix + "channels"]

    @property
    def pubsub_client_name(self) -> str:
        """The client name of this backend's Pub/Sub connection (``CLIENT LIST`` shows it)."""
        return f"tidings-pubsub-{os.getpid()}-{self._instance}"

    @property
    def reconnects(self) -> int:
        """How many times the Pub/Sub connection was re-established."""
        return self._fanout.reconnects

    def pubsub_name(self, channel: str) -> str:
        """The Pub/Sub channel that carries ``channel``'s events and presence."""
        return f"{self.prefix}{{{channel}}}"

    def _now(self) -> str:
        return "" if self._clock is None else str(int(self._clock() * 1000))

    # -- script calls, pipelined -----------------------------------------------------

    async def _call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script in the next pipelined batch and return its result."""
        if self._client is None:
            raise BackendUnavailable(self._label, "the backend is not started")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((self._scripts[name], [len(keys), *keys, *args], future))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="tidings-redis-pipeline"
            )
        return await future

    async def _flush(self) -> None:
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                await self._send(batch)
        finally:
            self._flusher = None

    async def _send(self, batch: list[tuple[_Script, Sequence[Any], asyncio.Future[Any]]]) -> None:
        """Send a batch of EVALSHAs on one pooled connection and read every reply.

        Commands are encoded here (RESP arrays of bulk strings) rather than by
        redis-py's pipeline, which costs several times more per command.
        """
        client = self._client
        try:
            with self._map_redis_errors():
                if client is None:
                    raise RedisError("the backend is closed")
                pool = client.connection_pool
                conn = await pool.get_connection()  # type: ignore[no-untyped-call]
                try:
                    for attempt in range(2):
                        await conn.send_packed_command(
                            b"".join(_pack(script.sha, args) for script, args, _ in batch),
                            check_health=False,
                        )
                        missing = []
                        for item in batch:
                            try:
                                result = await conn.read_response()
                            except NoScriptError:
                                if attempt:
                                    raise
                                missing.append(item)
                                continue
                            except ResponseError as exc:
                                result = exc
                            future = item[2]
                            if future.done():
                                pass
                            elif isinstance(result, ResponseError):
                                future.set_exception(self._unavailable(result))
                            else:
                                future.set_result(result)
                        if not missing:
                            return
                        # NOSCRIPT: those scripts did not run, so sending them again is safe.
                        for script in {item[0].name: item[0] for item in missing}.values():
                            await conn.send_command("SCRIPT", "LOAD", script.source)
                            await conn.read_response()
                        batch = missing
                except BaseException:
                    # The connection may hold replies nobody will read: drop it.
                    await conn.disconnect()
                    raise
                finally:
                    await pool.release(conn)
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        except BaseException:
            for _, _, future in batch:
                future.cancel()
            raise

    def _unavailable(self, exc: Exception) -> BackendUnavailable:
        error = BackendUnavailable(self._label, str(exc))
        error.__cause__ = exc
        return error

    # -- the Backend interface ----------------------------------------------------------

    async def publish(
        self,
        channel: str,
        raw: bytes,
        *,
        type: str,
        is_text: bool,
        options: NamespaceOptions,
        key: str | None = None,
    ) -> Position:
        keys = self._keys(channel)
        if key is not None:
            keys.append(f"{self.prefix}{{{channel}}}:k:{key}")
        _, position = await self._call(
            "publish",
            keys,
            (
                channel,
                self.pubsub_name(channel),
                raw,
                type,
                1 if is_text else 0,
                options.history_size,
                _ms(options.history_ttl),
                self._meta_ttl_ms,
                self._now(),
                new_epoch(),
                self._window_ms,
            ),
        )
        epoch, _, offset = position.partition(b" ")
        return Position(epoch.decode(), int(offset))

    async def read(
        self,
        channel: str,
        *,
        since: Position | None,
        limit: int | None,
        options: NamespaceOptions,
    ) -> History:
        history = await self._read(channel, since=since, limit=limit, options=options)
        await self._fanout.delivered(channel, history.position)
        return history

    async def _read(
        self,
        channel: str,
        *,
        since: Position | None,
        limit: int | None,
        options: NamespaceOptions,
    ) -> History:
        epoch, offset, reason, entries = await self._call(
            "read",
            self._keys(channel),
            (
                channel,
                "" if since is None else since.epoch,
                0 if since is None else since.offset,
                -1 if limit is None else limit,
                _ms(options.history_ttl),
                self._meta_ttl_ms,
                self._now(),
                new_epoch(),
            ),
        )
        position = Position(epoch.decode(), int(offset))
        if reason:
            return History(position, [], Reset(channel, position, reason.decode()))
        events = [_entry_event(channel, position.epoch, entry) for entry in entries]
        if since is None:
            events.reverse()
        return History(position, events)

    async def position(self, channel: str, *, options: NamespaceOptions) -> Position:
        epoch, offset, _ = await self._position(channel)
        position = Position(epoch, offset)
        await self._fanout.delivered(channel, position)
        return position

    async def _position(self, channel: str) -> tuple[str, int, int]:
        epoch, offset, kept = await self._call(
            "position",
            self._keys(channel),
            (channel, self._meta_ttl_ms, self._now(), new_epoch()),
        )
        return epoch.decode(), int(offset), int(kept)

    async def watch(self, channel: str) -> None:
        await self._fanout.watch(channel)

    def unwatch(self, channel: str) -> None:
        self._fanout.unwatch(channel)

    async def channels(self) -> list[ChannelInfo]:
        names = await self._call("channels", [self.prefix + "channels"], (self._now(),))
        infos = await asyncio.gather(*(self._position(name.decode()) for name in names))
        return [
            ChannelInfo(name.decode(), Position(epoch, offset), kept)
            for name, (epoch, offset, kept) in zip(names, infos, strict=True)
        ]

    def _presence_keys(self, channel: str) -> list[str]:
        base = f"{self.prefix}{{{channel}}}"
        return [base + ":p", base + ":pd"]

    async def presence_add(
        self, channel: str, client_id: str, payload: bytes, *, ttl: float
    ) -> None:
        await self._call(
            "presence_add",
            self._presence_keys(channel),
            (
                self.pubsub_name(channel),
                client_id,
                payload,
                _ms(ttl),
                self._now(),
                _ms(ttl) + PRESENCE_KEY_SLACK_MS,
            ),
        )

    async def presence_remove(self, channel: str, client_id: str) -> None:
        await self._call(
            "presence_remove",
            self._presence_keys(channel),
            (self.pubsub_name(channel), client_id, self._now()),
        )

    async def presence(self, channel: str) -> dict[str, bytes]:
        flat = await self._call(
            "presence", self._presence_keys(channel), (self.pubsub_name(channel), self._now())
        )
        entries = sorted(
            (value[:12], field[1:].decode(), value[12:])
            for field, value in zip(flat[::2], flat[1::2], strict=True)
            if field.startswith(b"c")
        )
        return {client_id: payload for _, client_id, payload in entries}


def _pack(sha: str, args: Sequence[Any]) -> bytes:
    """``EVALSHA sha *args`` as a RESP array of bulk strings."""
    parts = [b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % (len(args) + 2, sha.encode())]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _entry_event(channel: str, epoch: str, entry: list[Any]) -> Event:
    entry_id, fields = entry
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    return Event(
        channel,
        epoch,
        int(entry_id.partition(b"-")[0]),
        values[b"d"],
        type=values[b"y"].decode(),
        is_text=values[b"x"] == b"1",
        time=int(values[b"t"]) / 1000,
    )


def _message_event(channel: str, message: bytes) -> Event:
    header, _, raw = message.partition(b"\n")
    epoch, offset, ms, type, is_text = header[1:].split(b" ")
    return Event(
        channel,
        epoch.decode(),
        int(offset),
        raw,
        type=type.decode(),
        is_text=is_text == b"1",
        time=int(ms) / 1000,
    )


def _message_presence(channel: str, message: bytes) -> PresenceChange:
    length, _, rest = message[1:].partition(b" ")
    size = int(length)
    kind = "join" if message[:1] == b"J" else "leave"
    return PresenceChange(channel, kind, rest[:size].decode(), rest[size:])


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


class _Fanout:
    """The Pub/Sub connection of one process and the channels it watches."""

    def __init__(self, backend: RedisBackend, *, health_interval: float, max_delay: float) -> None:
        self._backend = backend
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
        #: Seconds between refreshes of the watched channels' meta expiry.
        self.refresh_interval = backend._meta_ttl_ms / 4000
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
                watch.ready.set_exception(BackendUnavailable(self._backend._label, "closed"))
                watch.ready.exception()  # retrieved: nobody may be waiting
        self._watches.clear()
        self._by_name.clear()

    async def _refresh_forever(self) -> None:
        """Keep the epoch of watched channels alive, however long they go without publishes.

        A channel's meta hash expires ``meta_ttl`` after its last publish; while
        a process watches the channel, it pushes that expiry back, so that
        its subscribers are not told to reset after a quiet day.
        """
        backend = self._backend
        while True:
            await asyncio.sleep(self.refresh_interval)
            channels = list(self._watches)
            try:
                await asyncio.gather(
                    *(
                        backend._call(
                            "touch",
                            backend._keys(channel)[::2],
                            (channel, backend._meta_ttl_ms, backend._now()),
                        )
                        for channel in channels
                    )
                )
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
            raise BackendUnavailable(self._backend._label, "the backend is not started")
        if self._down:
            raise BackendUnavailable(self._backend._label, "the Pub/Sub connection is down")
        name = self._backend.pubsub_name(channel).encode()
        watch = _Watch(channel, name, asyncio.get_running_loop().create_future())
        self._watches[channel] = watch
        self._by_name[name] = watch
        if self._conn is not None:
            self._subscribe(watch)
        try:
            async with asyncio.timeout(self._backend._timeout * 2):
                await asyncio.shield(watch.ready)
        except TimeoutError:
            self._release(watch)
            raise BackendUnavailable(
                self._backend._label, "no confirmation of SUBSCRIBE in time"
            ) from None
        except BaseException:
            self._release(watch)
            raise

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
            async with asyncio.timeout(self._backend._timeout * 2):
                await future
        except TimeoutError:
            raise BackendUnavailable(
                self._backend._label, f"delivery of {channel} is behind Redis"
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
            conn = self._new_connection()
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

    def _new_connection(self) -> Connection:
        kwargs = dict(self._backend._client.connection_pool.connection_kwargs)  # type: ignore[union-attr]
        kwargs.update(
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
            client_name=self._backend.pubsub_client_name,
        )
        kwargs.pop("connection_pool", None)
        connection_class = self._backend._client.connection_pool.connection_class  # type: ignore[union-attr]
        conn: Connection = connection_class(**kwargs)
        return conn

    def _fail_pending(self, exc: BaseException | None) -> None:
        """Fail the watches still waiting for their first confirmation."""
        for channel, watch in list(self._watches.items()):
            if not watch.ready.done():
                detail = f"Pub/Sub connection lost: {exc}" if exc else "Pub/Sub connection lost"
                watch.ready.set_exception(BackendUnavailable(self._backend._label, detail))
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
        kind = message[:1]
        if kind != b"E":
            if kind in (b"J", b"L"):
                self.presence_listener(_message_presence(watch.channel, message))
            return
        event = _message_event(watch.channel, message)
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
        backend = self._backend
        delay = 0.05
        while True:
            caught_up = False
            try:
                if not watch.ready.done():
                    # First confirmation: the position to start from, nothing to deliver.
                    epoch, offset, _ = await backend._position(watch.channel)
                    watch.epoch, watch.last = epoch, offset
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
        backend = self._backend
        # Late events are still events: no TTL trimming for a catch-up read.
        options = NamespaceOptions(history_ttl=backend._meta_ttl_ms / 1000)
        history = await backend._read(
            watch.channel, since=Position(watch.epoch, watch.last), limit=None, options=options
        )
        if history.reset is not None:
            # The gap cannot be filled exactly (another epoch, or older than
            # history): say so, and go on from the oldest event still kept,
            # so that subscribers lose no more than history did.
            kept = await backend._read(watch.channel, since=None, limit=None, options=options)
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
