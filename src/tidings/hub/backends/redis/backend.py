"""RedisBackend: the Backend interface over Redis, so that several processes act as one hub.

It validates its options and composes the other modules of the package, each
with its theory of operation: :class:`Scripts` for storage, the
:class:`Pipeline` under it for commands (and the translation of every redis
error into :class:`~tidings.errors.BackendUnavailable`), and the
:class:`Fanout` for delivery of watched channels, exactly once and in order.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

from tidings.hub.backends.base import (
    ChannelInfo,
    History,
    Listener,
    PresenceListener,
    ResetListener,
)
from tidings.hub.backends.redis.fanout import Fanout
from tidings.hub.backends.redis.pipeline import Pipeline
from tidings.hub.backends.redis.scripts import Scripts
from tidings.hub.names import NamespaceOptions
from tidings.types import Position

__all__ = ["RedisBackend"]


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
        refresh_interval: Seconds between pushes of the watched channels'
            epoch expiry (``meta_ttl``); by default a quarter of ``meta_ttl``.
        clock: Returns the time in seconds; by default Redis' own clock is
            used, so that every process agrees (tests pass a fake).

    Attributes:
        scripts: The storage operations, one Lua script each; they neither
            watch nor wait for delivery (for tests and tools).
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
        refresh_interval: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if refresh_interval is None:
            refresh_interval = meta_ttl / 4
        for option, value in (
            ("idempotency_window", idempotency_window),
            ("timeout", timeout),
            ("meta_ttl", meta_ttl),
            ("health_interval", health_interval),
            ("reconnect_max_delay", reconnect_max_delay),
            ("refresh_interval", refresh_interval),
        ):
            if value <= 0:
                raise ValueError(f"{option} must be > 0 seconds, not {value}")
        self.url = url
        self.prefix = prefix
        self._instance = secrets.token_hex(3)
        self._pipeline = Pipeline(url, timeout=timeout)
        self.scripts = Scripts(
            self._pipeline,
            prefix=prefix,
            idempotency_window=idempotency_window,
            meta_ttl=meta_ttl,
            clock=clock,
        )
        self._fanout = Fanout(
            self._pipeline,
            self.scripts,
            client_name=self.pubsub_client_name,
            timeout=timeout,
            health_interval=health_interval,
            max_delay=reconnect_max_delay,
            refresh_interval=refresh_interval,
        )

    # -- lifecycle -------------------------------------------------------------

    def set_listener(self, listener: Listener) -> None:
        self._fanout.listener = listener

    def set_reset_listener(self, listener: ResetListener) -> None:
        self._fanout.reset_listener = listener

    def set_presence_listener(self, listener: PresenceListener) -> None:
        self._fanout.presence_listener = listener

    async def start(self) -> None:
        """Connect (raising BackendUnavailable if Redis does not answer) and start fan-out."""
        if self._pipeline.started:
            return
        await self._pipeline.start()
        await self._fanout.start()

    async def aclose(self) -> None:
        await self._fanout.aclose()
        await self._pipeline.aclose()

    # -- names -----------------------------------------------------------------

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
        return self.scripts.pubsub_name(channel)

    # -- the Backend interface ---------------------------------------------------

    async def ping(self) -> None:
        await self._pipeline.ping()

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
        return await self.scripts.publish(
            channel, raw, type=type, is_text=is_text, options=options, key=key
        )

    async def read(
        self,
        channel: str,
        *,
        since: Position | None,
        limit: int | None,
        options: NamespaceOptions,
    ) -> History:
        history = await self.scripts.read(channel, since=since, limit=limit, options=options)
        await self._fanout.delivered(channel, history.position)
        return history

    async def position(self, channel: str, *, options: NamespaceOptions) -> Position:
        position = (await self.scripts.position(channel)).position
        await self._fanout.delivered(channel, position)
        return position

    async def watch(self, channel: str) -> None:
        await self._fanout.watch(channel)

    def unwatch(self, channel: str) -> None:
        self._fanout.unwatch(channel)

    async def channels(
        self, *, after: str | None = None, limit: int | None = None
    ) -> list[ChannelInfo]:
        return await self.scripts.channels(after=after, limit=limit)

    def positions(self) -> dict[str, Position]:
        return self._fanout.positions()

    def usage(self) -> None:
        return None  # history lives in Redis, bounded by its maxmemory

    async def presence_add(
        self, channel: str, client_id: str, payload: bytes, *, ttl: float
    ) -> None:
        await self.scripts.presence_add(channel, client_id, payload, ttl=ttl)

    async def presence_remove(self, channel: str, client_id: str) -> None:
        await self.scripts.presence_remove(channel, client_id)

    async def presence(self, channel: str) -> dict[str, bytes]:
        return await self.scripts.presence(channel)
