"""Scripts: a channel's keys in Redis and one typed call per Lua script.

Theory of operation
-------------------

Each channel has a meta hash (epoch, last offset) and a stream of its newest
events, keyed by offset (``lua/common.lua`` lists every key). Each operation
is one Lua script, so it is atomic across processes: ``publish`` checks the
idempotency key, takes the next offset, appends to the stream (trimmed to
the namespace's history size, bytes and TTL, oldest first, with a byte
count kept in the meta hash), refreshes the key expiries and
PUBLISHes the encoded event, all at once. Pub/Sub order is therefore offset
order. A channel whose meta hash is gone (expired, evicted, flushed, Redis
restarted without persistence) gets a fresh epoch on its next use, so old
positions get a ``reset``. The scripts are files next to this module, read
once per process and sent through the :class:`Pipeline`.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import Any

from tidings.hub.backends.base import ChannelInfo, History, new_epoch
from tidings.hub.backends.redis.codec import decode_position, decode_presence, entry_event, ms
from tidings.hub.backends.redis.pipeline import Pipeline, Script
from tidings.hub.event import Reset
from tidings.hub.names import NamespaceOptions
from tidings.types import Position

__all__ = ["SCRIPTS", "Scripts", "load_script"]

#: Every script the backend runs (``lua/<name>.lua``).
SCRIPTS = (
    "publish",
    "read",
    "position",
    "channels",
    "presence_add",
    "presence_remove",
    "presence",
    "touch",
)
#: Extra lifetime of presence keys beyond an entry's TTL (collects what a
#: vanished process left behind; entry scores decide what is live).
PRESENCE_KEY_SLACK_MS = 60_000


@functools.cache
def load_script(name: str) -> Script:
    """The script ``name``: the shared prelude ``common.lua``, then its own body."""
    folder = resources.files("tidings.hub.backends.redis") / "lua"
    common = (folder / "common.lua").read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    return Script(name, common + "\n" + body)


class Scripts:
    """The storage operations of one backend, each a script call on ``pipeline``.

    Args:
        pipeline: Where the calls go.
        prefix: Prepended to every key and Pub/Sub channel name.
        idempotency_window: Seconds a publish ``key`` is remembered.
        meta_ttl: Seconds a channel's epoch and offset outlive its last publish.
        clock: Returns the time in seconds; None uses Redis' own clock.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        prefix: str,
        idempotency_window: float,
        meta_ttl: float,
        clock: Callable[[], float] | None,
    ) -> None:
        self.prefix = prefix
        self.meta_ttl = meta_ttl
        self._pipeline = pipeline
        self._window_ms = ms(idempotency_window)
        self._meta_ttl_ms = ms(meta_ttl)
        self._clock = clock

    def pubsub_name(self, channel: str) -> str:
        """The Pub/Sub channel that carries ``channel``'s events and presence."""
        return f"{self.prefix}{{{channel}}}"

    def keys(self, channel: str) -> list[str]:
        """The keys of ``channel``: its meta hash, its stream, and the channel index."""
        base = f"{self.prefix}{{{channel}}}"
        return [base + ":m", base + ":s", self.prefix + "channels"]

    def _presence_keys(self, channel: str) -> list[str]:
        base = f"{self.prefix}{{{channel}}}"
        return [base + ":p", base + ":pd"]

    def _now(self) -> str:
        return "" if self._clock is None else str(int(self._clock() * 1000))

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the script ``name`` with raw ``keys`` and ``args``; return its reply."""
        return await self._pipeline.call(load_script(name), keys, args)

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
        keys = self.keys(channel)
        if key is not None:
            keys.append(f"{self.prefix}{{{channel}}}:k:{key}")
        args = (
            channel,
            self.pubsub_name(channel),
            raw,
            type,
            1 if is_text else 0,
            options.history_size,
            ms(options.history_ttl),
            self._meta_ttl_ms,
            self._now(),
            new_epoch(),
            self._window_ms,
            options.history_max_bytes,
        )
        _, position = await self.call("publish", keys, args)
        return decode_position(position)

    async def read(
        self,
        channel: str,
        *,
        since: Position | None,
        limit: int | None,
        options: NamespaceOptions,
    ) -> History:
        """Read the stream; unlike the backend's ``read``, never waits for delivery."""
        args = (
            channel,
            "" if since is None else since.epoch,
            0 if since is None else since.offset,
            -1 if limit is None else limit,
            ms(options.history_ttl),
            self._meta_ttl_ms,
            self._now(),
            new_epoch(),
        )
        epoch, offset, reason, entries = await self.call("read", self.keys(channel), args)
        position = Position(epoch.decode(), int(offset))
        if reason:
            return History(position, [], Reset(channel, position, reason.decode()))
        events = [entry_event(channel, position.epoch, entry) for entry in entries]
        if since is None:
            events.reverse()
        return History(position, events)

    async def position(self, channel: str) -> ChannelInfo:
        """The channel's position and how many events it keeps; never waits for delivery."""
        args = (channel, self._meta_ttl_ms, self._now(), new_epoch())
        epoch, offset, kept = await self.call("position", self.keys(channel), args)
        return ChannelInfo(channel, Position(epoch.decode(), int(offset)), int(kept))

    async def touch(self, channel: str) -> None:
        """Push back the expiry of the channel's epoch (if it has one; creates nothing)."""
        meta, _, index = self.keys(channel)
        await self.call("touch", [meta, index], (channel, self._meta_ttl_ms, self._now()))

    async def channels(
        self, *, after: str | None = None, limit: int | None = None
    ) -> list[ChannelInfo]:
        """The live channels sorted by name, after ``after``, at most ``limit``."""
        names = await self.call("channels", [self.prefix + "channels"], (self._now(),))
        decoded: Iterable[str] = (name.decode() for name in names)
        if after is not None:
            decoded = (name for name in decoded if name > after)
        page = sorted(decoded) if limit is None else heapq.nsmallest(limit, decoded)
        return list(await asyncio.gather(*(self.position(name) for name in page)))

    async def presence_add(
        self, channel: str, client_id: str, payload: bytes, *, ttl: float
    ) -> None:
        args = (
            self.pubsub_name(channel),
            client_id,
            payload,
            ms(ttl),
            self._now(),
            ms(ttl) + PRESENCE_KEY_SLACK_MS,
        )
        await self.call("presence_add", self._presence_keys(channel), args)

    async def presence_remove(self, channel: str, client_id: str) -> None:
        args = (self.pubsub_name(channel), client_id, self._now())
        await self.call("presence_remove", self._presence_keys(channel), args)

    async def presence(self, channel: str) -> dict[str, bytes]:
        args = (self.pubsub_name(channel), self._now())
        return decode_presence(await self.call("presence", self._presence_keys(channel), args))
