"""The client address of a request: its socket's peer, or behind a trusted proxy the forwarded one.

Limits per client (connections, publish rates, generations) are keyed by this
address. A request's ``X-Forwarded-For`` header is believed only as far as
the hops that added it are trusted (``trusted_proxies``): the address is the
right-most entry not sent by a trusted proxy, so a client cannot pick its
own address by sending the header itself. With no trusted proxy the header
is ignored.

Tidings reads the header itself, under any ASGI server; ``tidings serve``
turns uvicorn's own proxy-header rewriting off, so the socket's peer reaches
the app unchanged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from starlette.types import Scope

__all__ = ["PEER_STATE", "Peers"]

#: Where a request's client address is kept in its ASGI scope's state, once worked out.
PEER_STATE: Final = "tidings.peer"

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Peers:
    """Works out the client address of requests, given the proxies to trust."""

    __slots__ = ("networks",)

    def __init__(self, trusted: Iterable[_Network] = ()) -> None:
        self.networks = tuple(trusted)

    def trusted(self, host: str) -> bool:
        """Whether ``host`` is one of the trusted proxies (False for what is not an address)."""
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def address(self, scope: Scope) -> str:
        """The client address of an HTTP or WebSocket request, kept in its scope's state.

        An empty string when the server knows no peer (a Unix socket, a test client).
        """
        state = scope.setdefault("state", {})
        peer = state.get(PEER_STATE)
        if not isinstance(peer, str):
            peer = state[PEER_STATE] = self._address(scope)
        return peer

    def _address(self, scope: Scope) -> str:
        client = scope.get("client")
        host = str(client[0]) if client else ""
        if not self.trusted(host):
            return host
        hops: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                hops.extend(part.strip() for part in value.decode("latin-1").split(","))
        # Right to left: every hop a trusted proxy added, until the first one it did not.
        for hop in reversed(hops):
            if not hop:
                break
            if not self.trusted(hop):
                return _normal(hop)
            host = hop
        return host


def _normal(hop: str) -> str:
    """An address as written by a proxy, without brackets or port; as it came if it is none."""
    text = hop
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return hop
