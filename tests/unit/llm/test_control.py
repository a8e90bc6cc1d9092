"""llm/control.py: cancel and heard messages between relays on one hub."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.support.env import TIMEOUT
from tidings.hub import Hub
from tidings.llm.control import CONTROL_CHANNEL, RelayControl


async def test_messages_reach_every_control_and_bad_ones_are_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[tuple[str, ...]] = []
    done = asyncio.Event()

    def on_heard(generation_id: str) -> None:
        received.append(("heard", generation_id))
        if generation_id == "last":
            done.set()

    async with Hub() as hub:
        listener = RelayControl(
            hub,
            on_cancel=lambda generation_id, reason: received.append(
                ("cancel", generation_id, reason)
            ),
            on_heard=on_heard,
        )
        sender = RelayControl(hub, on_cancel=lambda *_: None, on_heard=lambda _: None)
        try:
            await listener.start()
            await listener.start()  # once is enough
            assert hub.subscriber_count(CONTROL_CHANNEL) == 1
            with caplog.at_level(logging.WARNING, logger="tidings.llm.control"):
                await sender.send_cancel("a", "deleted")
                await hub.publish(CONTROL_CHANNEL, {"op": "cancel"})
                await hub.publish(CONTROL_CHANNEL, [1, 2])
                await hub.publish(CONTROL_CHANNEL, {"op": "unknown", "id": "x"})
                await sender.send_heard("last")
                async with asyncio.timeout(TIMEOUT):
                    await done.wait()
        finally:
            await listener.aclose()
            await sender.aclose()
        assert hub.subscriber_count(CONTROL_CHANNEL) == 0
    assert received == [("cancel", "a", "deleted"), ("heard", "last")]
    assert caplog.text.count("malformed control message") == 2


async def test_the_control_ends_quietly_when_the_hub_shuts_down() -> None:
    hub = Hub()
    await hub.start()
    control = RelayControl(hub, on_cancel=lambda *_: None, on_heard=lambda _: None)
    await control.start()
    task = control._task
    assert task is not None
    await hub.aclose()
    async with asyncio.timeout(TIMEOUT):
        await task
    await control.aclose()
