"""hub/presence.py: ClientInfo payloads and the PresenceKeeper's ordered backend calls."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from tests.support.env import TIMEOUT
from tidings.hub.backends.base import PresenceChange
from tidings.hub.backends.memory import MemoryBackend
from tidings.hub.presence import ClientInfo, PresenceKeeper


class RecordingBackend(MemoryBackend):
    """Records presence calls and announcements; ``adds`` is set on every add."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, str]] = []
        self.changes: list[tuple[str, str, str]] = []
        self.adds = asyncio.Event()
        self.set_presence_listener(self._announced)

    def _announced(self, change: PresenceChange) -> None:
        self.changes.append((change.kind, change.channel, change.client_id))

    async def presence_add(
        self, channel: str, client_id: str, payload: bytes, *, ttl: float
    ) -> None:
        self.calls.append(("add", channel, client_id))
        await super().presence_add(channel, client_id, payload, ttl=ttl)
        self.adds.set()

    async def presence_remove(self, channel: str, client_id: str) -> None:
        self.calls.append(("remove", channel, client_id))
        await super().presence_remove(channel, client_id)


class FailingBackend(MemoryBackend):
    async def presence_add(
        self, channel: str, client_id: str, payload: bytes, *, ttl: float
    ) -> None:
        raise OSError("the backend is down")


def test_a_client_is_stored_as_a_json_document_and_read_back() -> None:
    client = ClientInfo("c1", "alice", {"name": "Alice", "tags": ["a"]})
    assert orjson.loads(client.payload()) == {
        "client": "c1",
        "user": "alice",
        "info": {"name": "Alice", "tags": ["a"]},
    }
    assert ClientInfo.from_payload(client.payload()) == client
    assert ClientInfo.from_payload(b'{"client": "c2"}') == ClientInfo("c2")


async def test_add_returns_once_the_backend_lists_the_client() -> None:
    backend = RecordingBackend()
    keeper = PresenceKeeper(backend, ttl=60)
    await keeper.add("room", ClientInfo("c1", "alice"))
    assert await backend.presence("room") == {"c1": ClientInfo("c1", "alice").payload()}
    assert keeper.entries == {("room", "c1"): ClientInfo("c1", "alice").payload()}
    assert backend.changes == [("join", "room", "c1")]
    await keeper.aclose()


async def test_operations_reach_the_backend_in_call_order() -> None:
    backend = RecordingBackend()
    keeper = PresenceKeeper(backend, ttl=60)
    await keeper.add("room", ClientInfo("c1"))
    keeper.remove("room", "c1")  # queued, never blocks
    keeper.remove("room", "c1")  # no entry any more: nothing queued
    keeper.remove("room", "nobody")
    await keeper.add("room", ClientInfo("c2"))  # after the removal, in order
    assert backend.calls == [("add", "room", "c1"), ("remove", "room", "c1"), ("add", "room", "c2")]
    assert backend.changes == [
        ("join", "room", "c1"),
        ("leave", "room", "c1"),
        ("join", "room", "c2"),
    ]
    assert list(await backend.presence("room")) == ["c2"]
    await keeper.aclose()


async def test_entries_are_refreshed_without_announcing_them_again() -> None:
    backend = RecordingBackend()
    keeper = PresenceKeeper(backend, ttl=0.15)
    await keeper.add("room", ClientInfo("c1"))
    backend.adds.clear()
    async with asyncio.timeout(TIMEOUT):
        await backend.adds.wait()  # the refresh, within ttl / 3
    assert backend.calls[:2] == [("add", "room", "c1"), ("add", "room", "c1")]
    assert backend.changes == [("join", "room", "c1")]
    await keeper.aclose()


async def test_aclose_applies_the_queued_removals() -> None:
    backend = RecordingBackend()
    keeper = PresenceKeeper(backend, ttl=60)
    await keeper.add("a", ClientInfo("c1"))
    await keeper.add("b", ClientInfo("c1"))
    keeper.remove("a", "c1")
    await keeper.aclose()
    assert await backend.presence("a") == {}
    assert backend.changes[-1] == ("leave", "a", "c1")
    assert keeper.entries == {}


async def test_a_failing_backend_does_not_fail_the_subscriber(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keeper = PresenceKeeper(FailingBackend(), ttl=60)
    with caplog.at_level(logging.WARNING, logger="tidings.hub.presence"):
        await keeper.add("room", ClientInfo("c1"))
    assert "presence update of c1 in room failed" in caplog.text
    assert ("room", "c1") in keeper.entries  # the next refresh adds it again
    await keeper.aclose()


def test_the_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="presence ttl must be > 0 seconds"):
        PresenceKeeper(MemoryBackend(), ttl=0)
