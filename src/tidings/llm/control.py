"""RelayControl: the messages relays on one hub send each other about generations.

Several servers on one backend (Redis) share every channel, but a
generation's task runs on one of them. Two things must reach that server
from the others, and travel as events of the channel ``llm:_control``:

- ``{"op": "cancel", "id", "reason"}``: a ``DELETE /v1/streams/{id}`` that
  arrived elsewhere;
- ``{"op": "heard", "id"}``: a viewer connected elsewhere is still
  listening, sent every third of the grace period, so that the generation
  is not cancelled as unheard.

Each relay subscribes to the channel once, with its first generation, and
acts on the messages about the generations it runs; the others ignore them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from tidings.errors import SubscriptionClosed, TidingsError
from tidings.hub import Event, Hub

__all__ = ["CONTROL_CHANNEL", "RelayControl"]

logger = logging.getLogger(__name__)

#: Not a generation id: those start with ``chatcmpl-``.
CONTROL_CHANNEL = "llm:_control"


class RelayControl:
    """Sends and receives control messages on ``llm:_control``.

    Args:
        hub: The hub shared with the other relays.
        on_cancel: Called with (generation id, reason) for each cancel message.
        on_heard: Called with the generation id for each heard message.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        on_cancel: Callable[[str, str], None],
        on_heard: Callable[[str], None],
    ) -> None:
        self.hub = hub
        self.on_cancel = on_cancel
        self.on_heard = on_heard
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Subscribe to the control channel (once; later calls wait for the first).

        Raises:
            BackendUnavailable: the backend cannot be reached; the next call tries again.
        """
        ready = self._ready
        if ready is not None and ready.done() and not ready.cancelled() and ready.exception():
            self._ready = ready = None  # the last attempt failed: try again
        if ready is None:
            loop = asyncio.get_running_loop()
            ready = self._ready = loop.create_future()
            self._task = loop.create_task(self._run(ready), name="tidings-llm-control")
        await asyncio.shield(ready)

    async def _run(self, ready: asyncio.Future[None]) -> None:
        while True:
            try:
                async with self.hub.subscribe(CONTROL_CHANNEL) as subscription:
                    if not ready.done():
                        ready.set_result(None)
                    async for item in subscription:
                        if isinstance(item, Event):
                            self._handle(item.data)
                return  # closed by the hub without a reason to come back
            except SubscriptionClosed as exc:
                if exc.reason == "shutdown":
                    return
                # A slow consumer (a burst of messages): subscribe again, live.
                logger.warning("the LLM control subscription closed (%s); resubscribing", exc)
            except asyncio.CancelledError:
                if not ready.done():
                    ready.cancel()
                raise
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)
                    ready.exception()  # retrieved: start() raises it, the task logs nothing
                    return
                raise

    def _handle(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("id"), str):
            logger.warning("ignoring a malformed control message: %r", message)
            return
        op = message.get("op")
        if op == "cancel":
            self.on_cancel(message["id"], str(message.get("reason") or "deleted"))
        elif op == "heard":
            self.on_heard(message["id"])

    async def send_cancel(self, generation_id: str, reason: str) -> None:
        """Ask the relay that runs ``generation_id`` to cancel it."""
        await self.hub.publish(
            CONTROL_CHANNEL, {"op": "cancel", "id": generation_id, "reason": reason}
        )

    async def send_heard(self, generation_id: str) -> None:
        """Tell the relay that runs ``generation_id`` that someone listens to it."""
        try:
            await self.hub.publish(CONTROL_CHANNEL, {"op": "heard", "id": generation_id})
        except TidingsError as exc:
            logger.warning("could not send a heard message for %s: %s", generation_id, exc)

    async def aclose(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._ready = None
