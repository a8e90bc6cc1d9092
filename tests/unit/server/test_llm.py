"""server/llm.py through httpx's in-memory ASGI transport: the framing of both endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.env import TIMEOUT, eventually
from tidings.errors import (
    BackendUnavailable,
    FrameTooLarge,
    InvalidChatRequest,
    InvalidCursor,
    ProtocolError,
    QueueFull,
    TidingsError,
)
from tidings.hub import Hub
from tidings.llm import LLMConfig
from tidings.server import create_app
from tidings.server.auth import mint_token
from tidings.server.llm import refusal
from tidings.settings import Settings
from tidings.wire.sse import SSEDecoder

QUICK_DEMO = LLMConfig.from_table(
    {"providers": {"demo": {"kind": "demo", "first_token_delay": 0, "token_interval": 0}}}
)
BODY: dict[str, Any] = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


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


def blocks(raw: bytes) -> list[list[bytes]]:
    assert raw.endswith(b"\n\n")
    return [block.split(b"\n") for block in raw[:-2].split(b"\n\n")]


async def test_streamed_frames_are_data_lines_ending_with_done(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={**BODY, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    stream_id = response.headers["x-tidings-stream-id"]
    frames = blocks(response.content)
    # The headers go out at once with a ": ping", and pings until the first chunk.
    assert frames[0] == [b": ping"]
    frames = [lines for lines in frames if lines != [b": ping"]]
    assert all(len(lines) == 1 and lines[0].startswith(b"data: ") for lines in frames)
    assert frames[-1] == [b"data: [DONE]"]
    chunks = [orjson.loads(lines[0][6:]) for lines in frames[:-1]]
    assert {chunk["id"] for chunk in chunks} == {stream_id}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in chunk for chunk in chunks)


async def test_include_usage_adds_the_usage_chunk_before_done(client: httpx.AsyncClient) -> None:
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body)
    frames = blocks(response.content)
    usage = orjson.loads(frames[-2][0][6:])
    assert usage["choices"] == []
    assert usage["usage"]["total_tokens"] > 0


async def test_without_streaming_one_completion_object(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 200
    document = response.json()
    assert document["object"] == "chat.completion"
    assert document["id"] == response.headers["x-tidings-stream-id"]
    assert document["choices"][0]["message"]["content"].startswith('You asked: "hi".')
    assert document["usage"]["completion_tokens"] > 0


async def test_the_stream_view_uses_tidings_sse(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=BODY)
    stream_id = response.headers["x-tidings-stream-id"]
    view = await client.get(f"/v1/streams/{stream_id}")
    assert view.status_code == 200
    assert view.content.startswith(b"retry: 3000\nid: llm:" + stream_id.encode())
    decoder = SSEDecoder()
    events = decoder.feed(view.content) + decoder.feed_eof()
    assert [event.event for event in events[-2:]] == ["usage", "end"]
    assert orjson.loads(events[-1].data) == {"status": "completed"}
    middle = events[len(events) // 2]
    rest = await client.get(f"/v1/streams/{stream_id}", params={"last_event_id": middle.id})
    decoder = SSEDecoder()
    after = decoder.feed(rest.content)
    assert [event.id for event in after] == [event.id for event in events[len(events) // 2 + 1 :]]
    skipped = await client.get(f"/v1/streams/{stream_id}", params={"after": len(events) - 1})
    assert [event.event for event in SSEDecoder().feed(skipped.content)] == ["end"]
    done = await client.get(f"/v1/streams/{stream_id}", params={"after": len(events)})
    assert done.status_code == 204


@pytest.mark.parametrize("params", [{"after": "x"}, {"after": "-1"}, {"last_event_id": "nonsense"}])
async def test_bad_resume_positions_are_400(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.post("/v1/chat/completions", json=BODY)
    stream_id = response.headers["x-tidings-stream-id"]
    view = await client.get(f"/v1/streams/{stream_id}", params=params)
    assert view.status_code == 400
    assert view.json()["error"]["code"] == "invalid_cursor"


async def test_bad_stream_ids_and_methods(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/streams/has%20space")).status_code == 404
    json = {"content-type": "application/json"}  # past the cross-site write rule, to routing
    assert (await client.put("/v1/streams/abc", headers=json)).status_code == 405
    assert (await client.get("/v1/chat/completions")).status_code == 405


async def test_too_large_and_too_many(client: httpx.AsyncClient) -> None:
    huge = {**BODY, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
    response = await client.post("/v1/chat/completions", json=huge)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


async def test_stats_include_the_relay(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json=BODY)
    stats = (await client.get("/api/stats")).json()
    assert stats["llm"]["completed"] == 1
    assert stats["llm"]["tokens"] > 0


async def test_the_relay_can_be_disabled() -> None:
    async with Hub() as hub:
        app = create_app(hub, Settings(llm=LLMConfig(enabled=False)))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/v1/chat/completions", json=BODY)
            assert response.status_code == 404
            assert "llm" not in (await client.get("/api/stats")).json()


class EndlessHub(Hub):
    """A hub whose backend fails exactly when a generation's ``end`` is published."""

    async def publish(self, channel: str, data: Any = None, **options: Any) -> Any:
        if options.get("event") == "end":
            raise BackendUnavailable("test", "down")
        return await super().publish(channel, data, **options)


async def test_a_lost_end_event_still_ends_every_response() -> None:
    async with EndlessHub() as hub:
        app = create_app(hub, Settings(llm=QUICK_DEMO))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                streamed = await client.post("/v1/chat/completions", json={**BODY, "stream": True})
                assert streamed.content.endswith(b"data: [DONE]\n\n")
                whole = await client.post("/v1/chat/completions", json=BODY)
                assert whole.status_code == 200
                assert whole.json()["choices"][0]["finish_reason"] == "stop"
                view = await client.get(f"/v1/streams/{whole.headers['x-tidings-stream-id']}")
                assert view.content.endswith(b'event: end\ndata: {"status":"completed"}\n\n')
        finally:
            await app.state.tidings.relay.aclose()


async def test_a_snapshot_of_a_generation_whose_end_was_lost_still_ends() -> None:
    async with EndlessHub() as hub:
        app = create_app(hub, Settings(llm=QUICK_DEMO))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                whole = await client.post("/v1/chat/completions", json=BODY)
                stream_id = whole.headers["x-tidings-stream-id"]
                view = await client.get(f"/v1/streams/{stream_id}", params={"snapshot": "1"})
            events = SSEDecoder().feed(view.content)
            assert [event.event for event in events] == ["message", "end"]
            (choice,) = orjson.loads(events[0].data)["choices"]
            assert choice["delta"]["content"] == whole.json()["choices"][0]["message"]["content"]
            assert orjson.loads(events[1].data) == {"status": "completed"}
        finally:
            await app.state.tidings.relay.aclose()


class NoReplayHub(Hub):
    """A hub whose backend fails when history is read from a position (a snapshot's read)."""

    async def history(self, channel: str, **options: Any) -> Any:
        if options.get("since") is not None:
            raise BackendUnavailable("test", "down")
        return await super().history(channel, **options)


async def test_a_backend_failure_while_taking_a_snapshot_is_a_503() -> None:
    async with NoReplayHub() as hub:
        app = create_app(hub, Settings(llm=QUICK_DEMO))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                whole = await client.post("/v1/chat/completions", json=BODY)
                stream_id = whole.headers["x-tidings-stream-id"]
                view = await client.get(f"/v1/streams/{stream_id}", params={"snapshot": "1"})
                assert view.status_code == 503
                assert view.json()["error"]["code"] == "unavailable"
                bad = await client.get(f"/v1/streams/{stream_id}", params={"snapshot": "2"})
                assert bad.status_code == 400
                assert bad.json()["error"]["param"] == "snapshot"
        finally:
            await app.state.tidings.relay.aclose()


class HangingEndHub(Hub):
    """A hub whose backend hangs when a generation's ``end`` is published (a Redis
    that stopped answering), until ``answer`` is set; then the publish fails."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()

    async def publish(self, channel: str, data: Any = None, **options: Any) -> Any:
        if options.get("event") == "end":
            await self.answer.wait()
            raise BackendUnavailable("test", "timed out")
        return await super().publish(channel, data, **options)


async def test_a_stream_cut_by_shutdown_ends_with_its_generations_end_not_yet_published() -> None:
    held = LLMConfig.from_table(
        {"providers": {"demo": {"kind": "demo", "first_token_delay": 0, "token_interval": 3600}}}
    )
    async with HangingEndHub() as hub:
        app = create_app(hub, Settings(llm=held))
        state = app.state.tidings
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                streamed = asyncio.create_task(
                    client.post("/v1/chat/completions", json={**BODY, "stream": True})
                )
                generation = await first_token(state.relay)
                # Cancelled at the deadline; its end cannot reach the backend before
                # the hub closes the stream's subscription.
                await state.shutdown(close_hub=True, wait=0.5)
                async with asyncio.timeout(TIMEOUT):
                    response = await streamed
                assert generation.end is not None
                assert not generation.end_published
        finally:
            hub.answer.set()
            await state.relay.aclose()
    assert response.status_code == 200
    last = blocks(response.content)[-1]
    error = orjson.loads(last[0].removeprefix(b"data: "))["error"]
    assert error["code"] == "cancelled"
    assert "shutdown" in error["message"]


async def first_token(relay: Any) -> Any:
    """The relay's one generation, once it has relayed a token."""

    def relayed() -> bool:
        generations = list(relay._generations.values())
        return bool(generations) and generations[0].tokens >= 1

    await eventually(relayed)
    return next(iter(relay._generations.values()))


class NoSubscribeHub(Hub):
    """A hub whose backend fails when a generation's channel is subscribed to."""

    async def _attach(self, subscription: Any, channel: str, *args: Any) -> Any:
        if channel.startswith("llm:chatcmpl-"):
            raise BackendUnavailable("test", "down")
        return await super()._attach(subscription, channel, *args)


async def test_a_backend_failure_while_subscribing_is_a_503() -> None:
    async with NoSubscribeHub() as hub:
        app = create_app(hub, Settings(llm=QUICK_DEMO))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                for body in (BODY, {**BODY, "stream": True}):
                    response = await client.post("/v1/chat/completions", json=body)
                    assert response.status_code == 503
                    assert response.json()["error"]["code"] == "unavailable"
                stream_id = response.headers.get("x-tidings-stream-id")
                assert stream_id is None
                relay = app.state.tidings.relay
                for generation in relay._generations.values():
                    async with asyncio.timeout(TIMEOUT):
                        assert await generation.wait() == "cancelled"
                    assert generation.cancel_reason == "unheard"
                    view = await client.get(f"/v1/streams/{generation.id}")
                    assert view.status_code == 503
        finally:
            await app.state.tidings.relay.aclose()


INVALID = "invalid_request_error"


@pytest.mark.parametrize(
    ("error", "status", "kind", "code", "param"),
    [
        # The bodies the completions and streams endpoints answered before one table.
        (FrameTooLarge(10, 5), 413, INVALID, "too_large", None),
        (InvalidChatRequest("no", param="n"), 400, INVALID, "invalid_value", "n"),
        (ProtocolError("?", code="invalid_json"), 400, INVALID, "invalid_json", None),
        (InvalidCursor("x", "bad"), 400, INVALID, "invalid_cursor", None),
        (QueueFull(3), 429, "rate_limit_error", "too_many_generations", None),
        (QueueFull(2, per_client=True), 429, "rate_limit_error", "too_many_generations", None),
        (BackendUnavailable("redis"), 503, "server_error", "unavailable", None),
    ],
)
def test_refusals_are_shaped_like_openai_errors(
    error: TidingsError, status: int, kind: str, code: str, param: str | None
) -> None:
    response = refusal(error)
    assert response.status_code == status
    body = orjson.loads(response.body)
    assert body == {
        "error": {"message": body["error"]["message"], "type": kind, "param": param, "code": code}
    }
    if isinstance(error, QueueFull):
        who = " for this client" if error.per_client else ""
        expected = f"too many generations are running{who} (at most {error.limit})"
        assert body["error"]["message"] == expected
    else:
        assert body["error"]["message"] == str(error)


# -- ownership ------------------------------------------------------------------------------

JWT_SECRET = "a-test-secret-of-at-least-32-bytes!!"
API_KEY = "ops-key-0123456789abcdef"


def bearer(sub: str) -> dict[str, str]:
    return {"authorization": f"Bearer {mint_token(JWT_SECRET, sub=sub, ttl=600)}"}


@pytest.fixture
async def secured() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(llm=QUICK_DEMO, jwt_secret=JWT_SECRET, api_keys=f"ops:{API_KEY}")
    async with Hub(namespaces=settings.namespace_options()) as hub:
        app = create_app(hub, settings)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                yield client
        finally:
            await app.state.tidings.relay.aclose()


async def test_with_authentication_an_identity_is_needed(secured: httpx.AsyncClient) -> None:
    for method, path in [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/streams/chatcmpl-x"),
        ("DELETE", "/v1/streams/chatcmpl-x"),
    ]:
        response = await secured.request(method, path, json=BODY)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "unauthorized"
    bad = await secured.post(
        "/v1/chat/completions", json=BODY, headers={"authorization": "Bearer not-a-jwt"}
    )
    assert bad.status_code == 401
    models = await secured.get("/v1/models", headers=bearer("alice"))
    assert models.status_code == 200


async def test_only_the_owner_or_a_server_key_sees_a_generation(
    secured: httpx.AsyncClient,
) -> None:
    created = await secured.post("/v1/chat/completions", json=BODY, headers=bearer("alice"))
    assert created.status_code == 200
    stream_id = created.headers["x-tidings-stream-id"]
    unknown_id = "chatcmpl-" + "0" * 32
    for method in ("GET", "DELETE"):
        theirs = await secured.request(method, f"/v1/streams/{stream_id}", headers=bearer("bob"))
        unknown = await secured.request(method, f"/v1/streams/{unknown_id}", headers=bearer("bob"))
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.content == unknown.content.replace(unknown_id.encode(), stream_id.encode())
    view = await secured.get(f"/v1/streams/{stream_id}", headers=bearer("alice"))
    assert view.status_code == 200
    assert view.content.endswith(b'event: end\ndata: {"status":"completed"}\n\n')
    assert b"alice" not in view.content
    for headers in ({"x-api-key": API_KEY}, {"authorization": f"ApiKey {API_KEY}"}):
        assert (await secured.get(f"/v1/streams/{stream_id}", headers=headers)).status_code == 200
    deleted = await secured.delete(f"/v1/streams/{stream_id}", headers={"x-api-key": API_KEY})
    assert deleted.status_code == 200


async def test_the_channel_endpoints_are_no_way_around_the_owner(
    secured: httpx.AsyncClient,
) -> None:
    created = await secured.post("/v1/chat/completions", json=BODY, headers=bearer("alice"))
    channel = "llm:" + created.headers["x-tidings-stream-id"]
    for sub in ("alice", "bob"):
        for path in (f"/sse?channel={channel}", f"/sse/{channel}", f"/api/history/{channel}"):
            response = await secured.get(path, headers=bearer(sub))
            assert response.status_code in (401, 403), path
            assert b"chat.completion" not in response.content
