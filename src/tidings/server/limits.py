"""ConnectionLimits: how many requests and streams the app serves at once, in total and per client.

An ASGI middleware, so it holds under any ASGI server: each HTTP request and
each WebSocket takes a slot from the moment the app sees it until the app is
done with it. Long-lived SSE and WebSocket connections keep theirs for their
whole life, also once the fast write path (``server/fastwrite.py``) has taken
them over from the app: the endpoint then :func:`keep_slot` s the slot and
releases it when the stream ends, however it ends (the client vanishing
included). A finished request frees its slot at once.

Per client, slots are counted by client address (``server/peer.py``: behind
a trusted proxy, the forwarded address), which only the app can see. A
refusal is the HTTP error ``unavailable`` (503, with ``Retry-After``); a
WebSocket upgrade gets the same HTTP answer where the server supports it
(close 1013 elsewhere).

Under ``tidings serve`` the same ``max_connections`` also caps open sockets,
idle keep-alive ones included, at the protocol level (``server/guard.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.errors import TooManyConnections
from tidings.server.errors import error_response, reject_handshake
from tidings.server.peer import Peers

__all__ = [
    "RETRY_AFTER",
    "SLOT_STATE",
    "SOCKETS",
    "ConnectionLimits",
    "ConnectionSlots",
    "Slot",
    "keep_slot",
]

#: Seconds a refused client is told to wait (``Retry-After``).
RETRY_AFTER: Final = 5
#: Where a request's slot is kept in its ASGI scope's state.
SLOT_STATE: Final = "tidings.slot"
#: The scope extension ``tidings serve`` offers on HTTP requests: a callable
#: that tells how many sockets the server holds open now.
SOCKETS: Final = "tidings.sockets"


class Slot:
    """One request's or stream's place in the count; released exactly once."""

    __slots__ = ("held", "peer", "slots")

    def __init__(self, slots: ConnectionSlots, peer: str) -> None:
        self.slots: ConnectionSlots | None = slots
        self.peer = peer
        self.held = False

    def keep(self) -> Callable[[], None]:
        """Keep the slot past the app's return; call what this returns when the stream ends."""
        self.held = True
        return self.release

    def release(self) -> None:
        slots, self.slots = self.slots, None
        if slots is not None:
            slots.release(self.peer)


def _nothing() -> None:
    pass


def keep_slot(scope: Scope) -> Callable[[], None]:
    """For a stream that outlives its app: keep its slot; returns the release (idempotent).

    A no-op release when no :class:`ConnectionLimits` counts the request.
    """
    slot = scope.get("state", {}).get(SLOT_STATE)
    return slot.keep() if isinstance(slot, Slot) else _nothing


class ConnectionSlots:
    """The count of requests and streams open now, in total and per client address.

    Refuses past ``max_total``, or past ``max_per_client`` from one address
    (0: counted, never refused).
    """

    __slots__ = ("by_peer", "max_per_client", "max_total", "total")

    def __init__(self, max_total: int, max_per_client: int = 0) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self.by_peer: dict[str, int] = {}

    def take(self, peer: str) -> Slot:
        """A slot for a request from ``peer``.

        Raises:
            TooManyConnections: the server or this address is at its limit.
        """
        held = self.by_peer.get(peer, 0)
        if self.total >= self.max_total:
            raise TooManyConnections("the server is at its connection limit", RETRY_AFTER)
        if self.max_per_client and held >= self.max_per_client:
            raise TooManyConnections("too many connections from this address", RETRY_AFTER)
        self.total += 1
        self.by_peer[peer] = held + 1
        return Slot(self, peer)

    def release(self, peer: str) -> None:
        self.total -= 1
        left = self.by_peer[peer] - 1
        if left:
            self.by_peer[peer] = left
        else:
            del self.by_peer[peer]

    def stats(self) -> dict[str, int]:
        """Requests and streams open now, and the client addresses they come from."""
        return {"total": self.total, "clients": len(self.by_peer)}


class ConnectionLimits:
    """The ASGI middleware that takes a slot for every HTTP request and WebSocket."""

    __slots__ = ("app", "peers", "slots")

    def __init__(self, app: ASGIApp, *, slots: ConnectionSlots, peers: Peers) -> None:
        self.app = app
        self.slots = slots
        self.peers = peers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        try:
            slot = self.slots.take(self.peers.address(scope))
        except TooManyConnections as exc:
            await _refuse(exc, scope, receive, send)
            return
        scope["state"][SLOT_STATE] = slot
        try:
            await self.app(scope, receive, send)
        finally:
            if not slot.held:
                slot.release()


async def _refuse(exc: TooManyConnections, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        message = await receive()
        if message["type"] == "websocket.connect":
            await reject_handshake(exc, scope, send)
        return
    await error_response(exc, headers={"connection": "close"})(scope, receive, send)
