"""Channel names, namespaces and the per-namespace options.

A channel name is ``[A-Za-z0-9_:.@/-]{1,255}``. Its namespace is the part
before the first ``:`` (``chat`` for ``chat:room1``); a name without ``:`` is
in the default namespace ``""``. Options such as history size are set per
namespace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from tidings.errors import InvalidChannel, InvalidPublication

__all__ = [
    "DEFAULT_HISTORY_MAX_BYTES",
    "MAX_CHANNEL_LENGTH",
    "PUBLISH_WITH_TOKEN",
    "NamespaceOptions",
    "Namespaces",
    "namespace_of",
    "validate_channel",
    "validate_event_type",
]

MAX_CHANNEL_LENGTH = 255
_CHANNEL = re.compile(r"[A-Za-z0-9_:.@/-]+\Z")
_BAD_CHAR = re.compile(r"[^A-Za-z0-9_:.@/-]")
_EVENT_TYPE = re.compile(r"[A-Za-z0-9_.:@/-]{1,64}\Z")
#: Event types the hub and the transports send; a publisher may not use them
#: (``expired`` ends an SSE stream whose token expired).
RESERVED_EVENT_TYPES = frozenset({"reset", "error", "join", "leave", "expired"})


def validate_channel(name: object) -> str:
    """Return ``name`` if it is a valid channel name.

    Raises:
        InvalidChannel: with a ``reason`` that says what is wrong.
    """
    if not isinstance(name, str):
        raise InvalidChannel(name, f"must be a string, not {type(name).__name__}")
    if _CHANNEL.match(name) and len(name) <= MAX_CHANNEL_LENGTH:
        return name
    if not name:
        raise InvalidChannel(name, "is empty")
    if len(name) > MAX_CHANNEL_LENGTH:
        raise InvalidChannel(name, f"is longer than {MAX_CHANNEL_LENGTH} characters")
    bad = _BAD_CHAR.search(name)
    assert bad is not None
    raise InvalidChannel(
        name, f"contains {bad.group()!r}; allowed are letters, digits and _ : . @ / -"
    )


def validate_event_type(event: object) -> str:
    """Return ``event`` if publishers may use it as an event type.

    Raises:
        InvalidPublication: it is not ``[A-Za-z0-9_.:@/-]{1,64}`` or it is
            reserved for the hub (``reset``, ``error``, ``join``, ``leave``,
            ``expired``).
    """
    if not isinstance(event, str) or not _EVENT_TYPE.match(event):
        raise InvalidPublication(
            f"event type {str(event)[:80]!r} must be 1-64 letters, digits or _ . : @ / -"
        )
    if event in RESERVED_EVENT_TYPES:
        raise InvalidPublication(f"event type {event!r} is reserved")
    return event


def namespace_of(channel: str) -> str:
    """Return the namespace of ``channel`` (``""`` when it has no ``:``)."""
    namespace, colon, _ = channel.partition(":")
    return namespace if colon else ""


#: Default bound of one channel's history in bytes (16 MiB).
DEFAULT_HISTORY_MAX_BYTES = 16 * 1024 * 1024

#: ``NamespaceOptions.publish`` value: only tokens that grant publishing may publish.
PUBLISH_WITH_TOKEN = "token"


@dataclass(frozen=True, slots=True)
class NamespaceOptions:
    """What a namespace allows and how much history it keeps.

    The permission fields are read by the server's one authorisation point
    (``tidings.server.auth``); the hub itself never refuses its own callers.

    Args:
        history_size: Events kept per channel (0 keeps none; offsets still count).
        history_ttl: Seconds an event stays in history.
        history_max_bytes: Bytes of events kept per channel (data plus 128 per
            event); the oldest go first. 0 keeps none.
        publish: Whether clients (HTTP API, WebSocket) may publish here: ``True``,
            ``False`` (server only: API keys and server-side code), or
            ``"token"`` (only clients whose token grants it).
            Server-side code calling ``Hub.publish`` is never restricted.
        subscribe: Whether clients may subscribe.
        history: Whether clients may read the history of a channel here.
        presence: Whether clients may query who is subscribed.
        join_leave: Whether subscribers receive join and leave events.
        anonymous: Whether clients without a token may do what the namespace
            allows. ``None`` (the default): yes while the server has no
            authentication configured, no once it has.
        private: Each channel ``ns:USER`` (and ``ns:USER/...``) belongs to the
            user ``USER``: only a token whose ``sub`` is ``USER`` (or one that
            names the channel) reaches it.
    """

    history_size: int = 1000
    history_ttl: float = 300.0
    history_max_bytes: int = DEFAULT_HISTORY_MAX_BYTES
    publish: bool | str = True
    subscribe: bool = True
    history: bool = True
    presence: bool = True
    join_leave: bool = False
    anonymous: bool | None = None
    private: bool = False

    def __post_init__(self) -> None:
        if self.history_size < 0:
            raise ValueError(f"history_size must be >= 0, not {self.history_size}")
        if isinstance(self.history_max_bytes, bool) or not isinstance(self.history_max_bytes, int):
            raise ValueError("history_max_bytes must be an integer")
        if self.history_max_bytes < 0:
            raise ValueError(f"history_max_bytes must be >= 0, not {self.history_max_bytes}")
        if self.history_ttl <= 0:
            raise ValueError(f"history_ttl must be > 0 seconds, not {self.history_ttl}")
        # Not "in (True, False, ...)": 1 == True, and a number is not a permission.
        if not (isinstance(self.publish, bool) or self.publish == PUBLISH_WITH_TOKEN):
            raise ValueError(f'publish must be true, false or "{PUBLISH_WITH_TOKEN}"')
        for name in ("subscribe", "history", "presence", "join_leave", "private"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")
        if self.anonymous is not None and not isinstance(self.anonymous, bool):
            raise ValueError("anonymous must be true or false")


@dataclass(frozen=True, slots=True)
class Namespaces:
    """Options per namespace, with a default for every namespace not listed."""

    default: NamespaceOptions = field(default_factory=NamespaceOptions)
    by_name: Mapping[str, NamespaceOptions] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.by_name:
            if name and (":" in name or not _CHANNEL.match(name)):
                raise ValueError(f"invalid namespace name {name!r}")

    def options(self, channel: str) -> NamespaceOptions:
        """Return the options that apply to ``channel``."""
        if not self.by_name:
            return self.default
        return self.by_name.get(namespace_of(channel), self.default)
