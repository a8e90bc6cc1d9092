"""Pipeline: the command connections to Redis, running Lua scripts in batches.

Theory of operation
-------------------

Every operation of the backend is one Lua script, sent as ``EVALSHA``. A
call joins the next batch: while a batch is in flight, new calls queue, and
they all go out together, on one pooled connection, once it is answered.
Commands are encoded here (RESP arrays of bulk strings) rather than by
redis-py's pipeline, which costs several times more per command. A script
Redis does not know (``NOSCRIPT``: a restart, ``SCRIPT FLUSH``) did not run,
so it is loaded and sent again, once.

*Failures.* Every redis error is translated once, by ``_map_redis_errors``,
into :class:`~tidings.errors.BackendUnavailable`. Commands time out after
``timeout`` seconds and are never retried by the client library: a publish
either ran whole inside Redis or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection as Connection
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from tidings.errors import BackendUnavailable

__all__ = ["Pipeline", "Script", "pack"]


class Script:
    """A Lua script: its source and SHA1, loaded into Redis on its first NOSCRIPT."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


_Call = tuple[Script, Sequence[Any], asyncio.Future[Any]]


class Pipeline:
    """The connection pool of one backend and its batches of script calls.

    Args:
        url: The Redis URL (``redis://``, ``rediss://`` or ``unix://``).
        timeout: Seconds to connect or to wait for a reply.

    Attributes:
        label: Where Redis is, for error messages (never the URL: it may
            hold a password).
    """

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.label = "redis"
        self._client: aioredis.Redis | None = None
        self._batch: list[_Call] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        """Whether the pipeline is connected (started and not closed)."""
        return self._client is not None

    async def start(self) -> None:
        """Connect, raising BackendUnavailable if Redis does not answer."""
        if self._client is not None:
            return
        client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            # RESP2 everywhere: Pub/Sub messages are then plain replies that
            # the fan-out reads itself, and reply shapes do not depend on the
            # library's default.
            protocol=2,
        )
        kwargs = client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        self.label = f"redis at {where}"
        self._client = client
        try:
            with self._map_redis_errors():
                await client.ping()
        except BaseException:
            self._client = None
            await client.aclose()
            raise

    async def aclose(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> None:
        """Send PING on the command connection (outside the batch) and wait for PONG.

        Raises:
            BackendUnavailable: the pipeline is not started, or Redis failed or timed out.
        """
        client = self._client
        if client is None:
            raise BackendUnavailable(self.label, "the backend is not started")
        with self._map_redis_errors():
            await client.ping()

    def new_connection(self, *, client_name: str) -> Connection:
        """A connection of its own to the same Redis, without reply timeout (for Pub/Sub).

        Raises:
            BackendUnavailable: the pipeline is not started.
        """
        if self._client is None:
            raise BackendUnavailable(self.label, "the backend is not started")
        pool = self._client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs.update(socket_timeout=None, retry=Retry(NoBackoff(), 0), client_name=client_name)
        kwargs.pop("connection_pool", None)
        conn: Connection = pool.connection_class(**kwargs)
        return conn

    @contextlib.contextmanager
    def _map_redis_errors(self) -> Iterator[None]:
        """Translate redis-py's errors (and socket errors) into BackendUnavailable."""
        try:
            yield
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(self.label, str(exc) or type(exc).__name__) from exc

    async def call(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` in the next batch and return its result.

        Raises:
            BackendUnavailable: Redis failed, timed out or refused the script.
        """
        if self._client is None:
            raise BackendUnavailable(self.label, "the backend is not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._batch.append((script, [len(keys), *keys, *args], future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush(), name="tidings-redis-pipeline")
        return await future

    async def _flush(self) -> None:
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                await self._send(batch)
        finally:
            self._flusher = None

    async def _send(self, batch: list[_Call]) -> None:
        """Send a batch of EVALSHAs on one pooled connection and answer every call."""
        client = self._client
        try:
            with self._map_redis_errors():
                if client is None:
                    raise RedisError("the backend is closed")
                pool = client.connection_pool
                conn = await pool.get_connection()  # type: ignore[no-untyped-call]
                try:
                    await self._exchange(conn, batch)
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

    async def _exchange(self, conn: Connection, batch: list[_Call]) -> None:
        for attempt in range(2):
            await conn.send_packed_command(
                b"".join(pack(script.sha, args) for script, args, _ in batch),
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

    def _unavailable(self, exc: Exception) -> BackendUnavailable:
        error = BackendUnavailable(self.label, str(exc))
        error.__cause__ = exc
        return error


def pack(sha: str, args: Sequence[Any]) -> bytes:
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
