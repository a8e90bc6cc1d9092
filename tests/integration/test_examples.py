"""The examples in examples/ run as documented."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

import httpx

from tests.support.env import TIMEOUT, eventually
from tests.support.sse import open_sse
from tidings.settings import Settings
from tidings.testing import run_server
from tidings.wire.cursor import decode_cursor

EXAMPLES = Path(__file__).parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_fastapi_example_streams_and_resumes() -> None:
    example = load("fastapi_app")
    async with run_server(example.app) as url, httpx.AsyncClient(base_url=url) as client:
        async with open_sse(client, "/orders/42/events") as reader:
            await reader.until(b"\n\n")
            response = await client.post("/orders/42/status", params={"status": "paid"})
            assert response.json() == {"offset": 1}
            (paid,) = await reader.events(1)
            assert paid.data == '{"status":"paid"}'
        await client.post("/orders/42/status", params={"status": "shipped"})
        async with open_sse(
            client, "/orders/42/events", headers={"last-event-id": paid.id}
        ) as reader:
            (shipped,) = await reader.events(1)
            assert shipped.data == '{"status":"shipped"}'
            assert decode_cursor(shipped.id)["orders:42"].offset == 2
        response = await client.get("/orders/42/events", headers={"last-event-id": "garbage"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_cursor"


async def test_websocket_chat_example_talks_and_resumes() -> None:
    example = load("websocket_chat")
    settings = Settings(log_level="warning", namespaces={"chat": {"join_leave": True}})
    async with run_server(settings=settings) as url, httpx.AsyncClient(base_url=url) as client:
        ws_url = url.replace("http://", "ws://") + "/ws"
        listener = asyncio.create_task(example.chat(ws_url, "chat:lobby", "ada", stop_after=2))

        async def listening() -> bool:
            response = await client.get("/api/presence/chat:lobby")
            return bool(response.json()["clients"])

        await eventually(listening)
        said = await example.chat(ws_url, "chat:lobby", "bob", say="hi ada", stop_after=1)
        assert said == [{"from": "bob", "text": "hi ada"}]
        await client.post(
            "/api/publish", json={"channel": "chat:lobby", "data": {"from": "eve", "text": "hey"}}
        )
        heard = await asyncio.wait_for(listener, TIMEOUT)
        assert heard == [{"from": "bob", "text": "hi ada"}, {"from": "eve", "text": "hey"}]
