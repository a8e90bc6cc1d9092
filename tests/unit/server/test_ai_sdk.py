"""server/ai_sdk.py through httpx's in-memory ASGI transport: framing, and a backend that fails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.env import eventually
from tidings.errors import BackendUnavailable
from tidings.hub import Hub
from tidings.llm import LLMConfig
from tidings.server import create_app
from tidings.settings import Settings

QUICK_DEMO = LLMConfig.from_table(
    {"providers": {"demo": {"kind": "demo", "first_token_delay": 0, "token_interval": 0}}}
)
BODY: dict[str, Any] = {
    "id": "chat-1",
    "model": "demo",
    "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with Hub() as hub:
        app = create_app(hub, Settings(llm=QUICK_DEMO))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                yield client
        finally:
            await app.state.tidings.relay.aclose()


def data_lines(raw: bytes) -> list[bytes]:
    """Every block's one line, checked to be a ``data:`` line."""
    assert raw.endswith(b"\n\n")
    blocks = [block.split(b"\n") for block in raw[:-2].split(b"\n\n")]
    assert all(len(lines) == 1 and lines[0].startswith(b"data: ") for lines in blocks)
    return [lines[0][6:] for lines in blocks]


async def test_the_answer_is_a_ui_message_stream(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ai-sdk/chat", json=BODY)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.headers["cache-control"] == "no-cache"
    lines = data_lines(response.content)
    assert lines[-1] == b"[DONE]"
    chunks = [orjson.loads(line) for line in lines[:-1]]
    assert chunks[0] == {"type": "start", "messageId": response.headers["x-tidings-stream-id"]}
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}
    text = "".join(chunk["delta"] for chunk in chunks if chunk["type"] == "text-delta")
    assert text.startswith('You asked: "hi".')
    # The same generation over Tidings' own view.
    view = await client.get(f"/v1/streams/{response.headers['x-tidings-stream-id']}")
    assert view.status_code == 200


class DownHub(Hub):
    """A hub whose backend fails for chat records."""

    async def publish(self, channel: str, data: Any = None, **options: Any) -> Any:
        if channel.startswith("llm:_chat/"):
            raise BackendUnavailable("test", "down")
        return await super().publish(channel, data, **options)

    async def history(self, channel: str, *args: Any, **options: Any) -> Any:
        if channel.startswith("llm:_chat/"):
            raise BackendUnavailable("test", "down")
        return await super().history(channel, *args, **options)


async def test_a_backend_that_fails_is_503_and_stops_the_generation() -> None:
    async with DownHub() as hub:
        app = create_app(hub, Settings(llm=QUICK_DEMO))
        relay = app.state.tidings.relay
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.post("/v1/ai-sdk/chat", json=BODY)
                assert response.status_code == 503
                assert response.json()["error"]["code"] == "unavailable"
                await eventually(lambda: relay.stats().cancelled == 1)
                for method in ("GET", "DELETE"):
                    refused = await client.request(
                        method,
                        "/v1/ai-sdk/chat/chat-1/stream",
                        headers={"content-type": "application/json"},
                    )
                    assert refused.status_code == 503
        finally:
            await relay.aclose()
