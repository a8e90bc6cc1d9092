"""ChatIndex: which generation answers a chat now, kept in the hub.

Theory of operation
-------------------

The AI SDK names a conversation by its chat id and resumes "the chat's
stream", not a generation. :class:`ChatIndex` keeps, for each (identity,
chat id), the id of the generation that answers it last, as events of one
channel in the ``llm`` namespace: ``llm:_chat/{digest}``, where the digest
is a SHA-256 of the identity and the chat id. It lives in the backend, so a
resume that reaches another server on the same Redis finds it; it lives as
long as the ``llm`` namespace's history (the generation's own TTL).

Chat ids are chosen by clients, so they are scoped by identity: two users
with the same chat id have two chats, and one user's chat id names nothing
for another (no squatting, and nothing to learn by trying ids).

Two events: ``chat`` (``{"generation": id, "message": id}``, the latter the
UI message it answers with) when a generation starts for the chat, and
``delivered`` (``{"generation": id}``) once a response has sent the
generation's whole stream to a client. :meth:`ChatIndex.active` answers the
latest generation unless it was delivered: a stream cut before its end stays
resumable even if the generation ended meanwhile, and a chat whose answer
arrived whole has nothing to resume (the AI SDK asks on every page load).
"""

from __future__ import annotations

import hashlib
import logging
from typing import NamedTuple

from tidings.hub import Hub
from tidings.types import JSONValue

__all__ = ["CHAT_PREFIX", "ChatIndex", "ChatRecord"]

logger = logging.getLogger(__name__)

#: Chat records are kept on ``llm:_chat/{digest}``.
CHAT_PREFIX = "llm:_chat/"
#: Events read back to find a chat's latest generation and whether it was delivered.
_LOOKBACK = 32


class ChatRecord(NamedTuple):
    """A chat's latest generation.

    Attributes:
        generation: The generation's id.
        message: The id of the UI message it answers with.
        delivered: Whether a client received its whole stream.
    """

    generation: str
    message: str
    delivered: bool


class ChatIndex:
    """Chat id → the generation answering it, per identity, on ``hub``."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    @staticmethod
    def channel(owner: str, chat_id: str) -> str:
        """The channel that records ``owner``'s chat ``chat_id``."""
        digest = hashlib.sha256(f"{owner}\0{chat_id}".encode()).hexdigest()
        return CHAT_PREFIX + digest[:40]

    async def record(
        self, owner: str, chat_id: str, generation_id: str, message_id: str | None = None
    ) -> None:
        """Note that ``generation_id`` now answers the chat, as UI message ``message_id``
        (by default the generation id).

        Raises:
            BackendUnavailable: the backend cannot be reached.
        """
        data: dict[str, JSONValue] = {
            "generation": generation_id,
            "message": message_id or generation_id,
        }
        await self.hub.publish(self.channel(owner, chat_id), data, event="chat")

    async def delivered(self, owner: str, chat_id: str, generation_id: str) -> None:
        """Note that a client received the generation's whole stream.

        Raises:
            BackendUnavailable: the backend cannot be reached.
        """
        await self.hub.publish(
            self.channel(owner, chat_id), {"generation": generation_id}, event="delivered"
        )

    async def latest(self, owner: str, chat_id: str) -> ChatRecord | None:
        """The chat's latest generation; None for no record.

        Raises:
            BackendUnavailable: the backend cannot be reached.
        """
        events = (await self.hub.history(self.channel(owner, chat_id), limit=_LOOKBACK)).events
        delivered: set[str] = set()
        for event in reversed(events):
            data = event.data
            generation = data.get("generation") if isinstance(data, dict) else None
            if not isinstance(generation, str):
                continue
            if event.event == "delivered":
                delivered.add(generation)
            elif event.event == "chat":
                message = data.get("message")
                message = message if isinstance(message, str) else generation
                return ChatRecord(generation, message, generation in delivered)
        return None

    async def active(self, owner: str, chat_id: str) -> ChatRecord | None:
        """The generation to resume for the chat: its latest, unless delivered.

        Raises:
            BackendUnavailable: the backend cannot be reached.
        """
        latest = await self.latest(owner, chat_id)
        return None if latest is None or latest.delivered else latest
