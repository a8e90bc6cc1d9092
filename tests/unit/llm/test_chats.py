"""llm/chats.py: which generation answers a chat, per identity, kept in the hub."""

from __future__ import annotations

from tidings.hub import Hub
from tidings.llm.chats import CHAT_PREFIX, ChatIndex, ChatRecord


async def test_the_latest_undelivered_generation_is_the_active_one() -> None:
    async with Hub() as hub:
        chats = ChatIndex(hub)
        assert await chats.active("user:a", "c") is None
        await chats.record("user:a", "c", "g1")
        assert await chats.active("user:a", "c") == ChatRecord("g1", "g1", False)
        await chats.record("user:a", "c", "g2", "m-assistant")
        await chats.delivered("user:a", "c", "g1")  # an older answer, delivered late
        assert await chats.latest("user:a", "c") == ChatRecord("g2", "m-assistant", False)
        assert await chats.active("user:a", "c") == ChatRecord("g2", "m-assistant", False)
        await chats.delivered("user:a", "c", "g2")
        assert await chats.latest("user:a", "c") == ChatRecord("g2", "m-assistant", True)
        assert await chats.active("user:a", "c") is None


async def test_chat_ids_are_scoped_by_identity() -> None:
    async with Hub() as hub:
        chats = ChatIndex(hub)
        await chats.record("user:a", "c", "g1")
        assert await chats.active("user:b", "c") is None
        channel = ChatIndex.channel("user:a", "c")
        assert channel.startswith(CHAT_PREFIX)
        assert channel != ChatIndex.channel("user:b", "c")
        assert "user:a" not in channel
        await hub.publish(channel, "junk", event="chat")
        assert await chats.active("user:a", "c") == ChatRecord(
            "g1", "g1", False
        )  # a record it cannot read is skipped
