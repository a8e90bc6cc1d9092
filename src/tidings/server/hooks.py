"""Hooks: your code accepts, refuses or rewrites a connect, a subscribe or a publish.

Theory of operation
-------------------

An app may carry three async callables (:class:`Hooks`), each given one
frozen context object:

* ``on_connect(ConnectContext)`` when an SSE stream or a WebSocket opens,
  after its credentials and the channels in its URL were authorised. It
  returns None, or *info* (any JSON value) that stays with the connection:
  later hooks see it as ``ctx.info`` and a WebSocket's presence entry shows it.
* ``on_subscribe(SubscribeContext)`` before a client reads a channel: a
  subscription (the URL's channels of SSE and WebSocket, a ``subscribe``
  command) and also ``history`` and ``presence``, so a refused reader cannot
  go round it. ``ctx.action`` says which. It allows (returns) or refuses.
* ``on_publish(PublishContext)`` before a client's publish reaches the hub
  (HTTP ``POST /api/publish`` and the WebSocket ``publish`` command). It
  returns None to keep the data, or the data to publish instead.

A fourth, ``on_complete(GenerationRecord)``, refuses nothing: it is told
each LLM generation's final record once the generation has ended, on the
server that ran it (``llm/relay.py``, *After the end*), for logging and
billing. What it raises and a timeout are logged, never passed on.

A hook refuses by raising :class:`~tidings.errors.Rejected` (its code,
message and 4xx status reach the client as they are) or any other
:class:`~tidings.errors.TidingsError`. Anything else it raises is a
:class:`~tidings.errors.HookFailed` refusal (500, ``hook_failed``), logged
with its traceback; a hook that takes longer than its timeout is cancelled
and refused the same way. A hook never crashes a connection.

The hooks run inside the authorisation flow of ``server/ops.py``: always
after :meth:`Authority.authorize <tidings.server.auth.Authority.authorize>`
allowed the operation (a hook can only narrow what the rules allow), once
per operation, never per delivered event, for every transport and both
write paths. They live on the :class:`~tidings.server.auth.Authority`, so
whatever holds the one authority holds the hooks. ``server/proxy.py`` makes
the same three callables out of URLs of the user's backend.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.datastructures import Headers

from tidings.errors import HookFailed, TidingsError
from tidings.llm.relay import OnComplete
from tidings.server.auth import Principal

__all__ = [
    "DEFAULT_HOOK_TIMEOUT",
    "ConnectContext",
    "Hooks",
    "OnComplete",
    "OnConnect",
    "OnPublish",
    "OnSubscribe",
    "PublishContext",
    "SubscribeContext",
]

logger = logging.getLogger(__name__)

#: Seconds a hook may take unless ``hook_timeout`` (or the hook's own ``timeout``) says.
DEFAULT_HOOK_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class ConnectContext:
    """An SSE stream or a WebSocket opening.

    Attributes:
        principal: Who connects (anonymous, a token's subject, an API key).
        peer: The client's address (``trusted_proxies`` decides), "" if unknown.
        transport: ``"sse"`` or ``"ws"``.
        headers: The headers of the request that opened the connection.
        channels: The channels named in its URL (already authorised).
    """

    principal: Principal
    peer: str
    transport: str
    headers: Headers
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SubscribeContext:
    """A client about to read a channel.

    Attributes:
        principal, peer, transport, headers: As in :class:`ConnectContext`
            (``transport`` is ``"http"`` for the HTTP API).
        info: What ``on_connect`` returned for the connection (None for HTTP).
        channel: The channel.
        action: ``"subscribe"``, ``"history"`` or ``"presence"``.
    """

    principal: Principal
    peer: str
    transport: str
    headers: Headers
    info: Any
    channel: str
    action: str


@dataclass(frozen=True, slots=True)
class PublishContext:
    """A client about to publish.

    Attributes:
        principal, peer, transport, headers, info: As in :class:`SubscribeContext`.
        channel: The channel.
        event: The event type.
        data: The data: a JSON value, or the text of a plain-text publish.
        text: Whether it is a plain-text publish (``data`` is then a ``str``).
    """

    principal: Principal
    peer: str
    transport: str
    headers: Headers
    info: Any
    channel: str
    event: str
    data: Any
    text: bool


OnConnect = Callable[[ConnectContext], Awaitable[Any]]
OnSubscribe = Callable[[SubscribeContext], Awaitable[None]]
OnPublish = Callable[[PublishContext], Awaitable[Any]]

_Context = TypeVar("_Context", ConnectContext, SubscribeContext, PublishContext)


@dataclass(frozen=True, slots=True)
class Hooks:
    """The hooks of one app, and how long each may take.

    Args:
        on_connect: Returns None or info for the connection; raises to refuse.
        on_subscribe: Returns to allow; raises to refuse.
        on_publish: Returns None to keep the data, or the data to publish
            instead; raises to refuse.
        on_complete: Awaited with each LLM generation's final
            :class:`~tidings.llm.GenerationRecord`; refuses nothing.
        timeout: Seconds each hook may take (a hook object with a ``timeout``
            attribute sets its own).

    Raises:
        ValueError: ``timeout`` is not > 0.
        TypeError: a hook is not callable.
    """

    on_connect: OnConnect | None = None
    on_subscribe: OnSubscribe | None = None
    on_publish: OnPublish | None = None
    on_complete: OnComplete | None = None
    timeout: float = field(default=DEFAULT_HOOK_TIMEOUT, kw_only=True)

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"the hook timeout must be > 0 seconds, not {self.timeout!r}")
        for name in ("on_connect", "on_subscribe", "on_publish", "on_complete"):
            hook = getattr(self, name)
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be an async callable, not {type(hook).__name__}")

    def __bool__(self) -> bool:
        return any((self.on_connect, self.on_subscribe, self.on_publish))

    async def connect(self, context: ConnectContext) -> Any:
        """Run ``on_connect``; return its info (None without the hook)."""
        if self.on_connect is None:
            return None
        return await self._run("on_connect", self.on_connect, context)

    async def subscribe(self, context: SubscribeContext) -> None:
        """Run ``on_subscribe``."""
        if self.on_subscribe is not None:
            await self._run("on_subscribe", self.on_subscribe, context)

    async def publish(self, context: PublishContext) -> Any:
        """Run ``on_publish``; return the replacement data, or None to keep it."""
        if self.on_publish is None:
            return None
        return await self._run("on_publish", self.on_publish, context)

    async def _run(
        self, name: str, hook: Callable[[_Context], Awaitable[Any]], context: _Context
    ) -> Any:
        """Await ``hook(context)`` within its timeout.

        Raises:
            TidingsError: the hook's own refusal, as it raised it.
            HookFailed: it raised anything else, or timed out (logged).
        """
        timeout = getattr(hook, "timeout", None) or self.timeout
        try:
            async with asyncio.timeout(timeout):
                return await hook(context)
        except TidingsError:
            raise
        except TimeoutError:
            about = _about(context)
            logger.warning("%s hook did not answer within %g s (%s)", name, timeout, about)
            raise HookFailed(name, f"no answer within {timeout:g} s") from None
        except Exception as exc:
            logger.exception("%s hook raised %s (%s)", name, type(exc).__name__, _about(context))
            raise HookFailed(name, "it raised an error (see the server log)") from exc


def _about(context: ConnectContext | SubscribeContext | PublishContext) -> str:
    """Who and where, for a log line: never data, headers or credentials."""
    where = ",".join(context.channels) if isinstance(context, ConnectContext) else context.channel
    return f"{context.transport} {context.principal.identity} {context.peer or '-'} {where[:200]}"
