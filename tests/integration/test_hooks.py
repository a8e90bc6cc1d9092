"""Hooks end to end: proxy hooks of ``tidings serve`` against a real backend process, and
Python hooks of an embedded app, over SSE, WebSocket (both write paths) and HTTP publish."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.env import TIMEOUT
from tests.support.hook_backend import BackendProcess
from tests.support.server import ServerProcess
from tests.support.sse import open_sse
from tests.support.ws import Peer
from tidings.errors import Rejected
from tidings.hub import Hub
from tidings.server import ConnectContext, PublishContext, SubscribeContext, create_app
from tidings.settings import Settings
from tidings.testing import free_port, run_server
from tidings.wire.protocol import Format

#: The proxy_timeout of the servers below: the backend's ``slow`` answers take longer,
#: its other answers far less, even on a loaded machine (so it scales with TIMEOUT).
PROXY_TIMEOUT = TIMEOUT / 2
SLOW = f"the {{}} proxy is unavailable: no answer within {PROXY_TIMEOUT:g} s"
BOOM = "the {} proxy is unavailable: it answered 500"
COOKIE = "session=s1"


@pytest.fixture(scope="module")
def backend() -> Iterator[BackendProcess]:
    with BackendProcess() as process:
        yield process


@pytest.fixture(scope="module", params=["fast", "asgi"])
def server(request: pytest.FixtureRequest, backend: BackendProcess) -> Iterator[ServerProcess]:
    env = {
        "TIDINGS_FAST_WRITE": "1" if request.param == "fast" else "0",
        "TIDINGS_PROXY_TIMEOUT": str(PROXY_TIMEOUT),
        "TIDINGS_PROXY_HEADERS": "cookie",
        **backend.proxy_env(),
    }
    with ServerProcess(env=env) as process:
        yield process


@pytest.fixture(scope="module", params=["fast", "asgi"])
def down_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A server whose proxy hooks point at a port nothing listens on."""
    dead = f"http://127.0.0.1:{free_port()}"
    env = {
        "TIDINGS_FAST_WRITE": "1" if request.param == "fast" else "0",
        **{
            f"TIDINGS_PROXY_{name.upper()}_URL": f"{dead}/{name}"
            for name in ("connect", "subscribe", "publish")
        },
    }
    with ServerProcess(env=env) as process:
        yield process


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


def named(word: str) -> str:
    """A channel no other test uses, whose first word tells the backend what to answer."""
    return f"{word}-{uuid.uuid4().hex[:8]}"


def ws_url(url: str, query: str = "") -> str:
    return url.replace("http://", "ws://") + "/ws" + (f"?{query}" if query else "")


@contextlib.asynccontextmanager
async def peer(url: str, query: str = "") -> AsyncIterator[Peer]:
    async with connect(
        ws_url(url, query),
        subprotocols=[Format.JSON.subprotocol],  # type: ignore[list-item]
        additional_headers={"cookie": COOKIE},
        open_timeout=TIMEOUT,
    ) as ws:
        yield Peer(ws, Format.JSON)


async def handshake_refusal(url: str, query: str) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as refused:
        async with peer(url, query):
            pass
    response = refused.value.response
    error: dict[str, Any] = orjson.loads(response.body)["error"]
    return response.status_code, error


async def seen(backend: BackendProcess, channel: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=backend.url) as client:
        entries: list[dict[str, Any]] = (
            await client.get("/seen", params={"channel": channel})
        ).json()
        return entries


async def history(client: httpx.AsyncClient, channel: str) -> list[Any]:
    response = await client.get(f"/api/history/{channel}")
    assert response.status_code == 200, response.text
    return [event["data"] for event in response.json()["events"]]


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"]


# -- proxy hooks: SSE --------------------------------------------------------------------------


async def test_sse_allowed_by_the_backend_which_saw_who_and_the_cookie(
    client: httpx.AsyncClient, backend: BackendProcess
) -> None:
    channel = named("ok")
    async with open_sse(client, f"/sse?channel={channel}", headers={"cookie": COOKIE}) as reader:
        await reader.until(b"retry:")
        published = await client.post("/api/publish", json={"channel": channel, "data": 1})
        assert published.status_code == 200, published.text
        (event,) = await reader.events(1)
        assert event.data == "1"
    connect_seen, subscribe_seen, publish_seen = await seen(backend, channel)
    assert connect_seen["hook"] == "connect"
    assert connect_seen["body"]["transport"] == "sse"
    assert connect_seen["body"]["channels"] == [channel]
    assert connect_seen["body"]["peer"] == "127.0.0.1"
    assert connect_seen["cookie"] == COOKIE
    assert subscribe_seen["body"]["action"] == "subscribe"
    assert subscribe_seen["body"]["info"] == {"cookie": COOKIE}  # what connect answered
    assert publish_seen["body"]["transport"] == "http"
    assert publish_seen["cookie"] is None  # the publisher sent none


@pytest.mark.parametrize(
    ("word", "status", "code", "message"),
    [
        ("noconnect", 401, "login_required", "sign in first"),
        ("deny", 403, "not_allowed", "the backend says no to {channel}"),
        ("slow", 503, "proxy_unavailable", SLOW.format("subscribe")),
        ("slowconnect", 503, "proxy_unavailable", SLOW.format("connect")),
        ("boom", 503, "proxy_unavailable", BOOM.format("subscribe")),
    ],
)  # fmt: skip
async def test_sse_refused_by_the_backend_before_any_byte_of_stream(
    client: httpx.AsyncClient, word: str, status: int, code: str, message: str
) -> None:
    channel = named(word)
    response = await client.get(f"/sse?channel={channel}")
    assert error_of(response) == (status, code, message.format(channel=channel))
    assert response.headers["content-type"] == "application/json"


# -- proxy hooks: WebSocket ---------------------------------------------------------------------


async def test_ws_connect_info_is_presence_and_subscribe_publish_pass_the_backend(
    server: ServerProcess, client: httpx.AsyncClient, backend: BackendProcess
) -> None:
    channel = named("rewrite")
    async with peer(server.url) as ws:
        await ws.result("connect", info={"mine": "ignored: the backend's info wins"})
        subscribed = await ws.result("subscribe", channel=channel)
        assert subscribed["offset"] == 0
        await ws.result("publish", channel=channel, data={"n": 1})
        push = await ws.push()
        assert push["data"] == {"rewritten": {"n": 1}}
        (member,) = (await client.get(f"/api/presence/{channel}")).json()["clients"]
        assert member["info"] == {"cookie": COOKIE}
    hooks = [(entry["hook"], entry["body"]["transport"]) for entry in await seen(backend, channel)]
    assert hooks == [("subscribe", "ws"), ("publish", "ws"), ("subscribe", "http")]


@pytest.mark.parametrize(
    ("op", "word", "code"),
    [
        ("subscribe", "deny", "not_allowed"),
        ("subscribe", "slow", "proxy_unavailable"),
        ("history", "deny", "not_allowed"),
        ("presence", "boom", "proxy_unavailable"),
        ("publish", "deny", "not_allowed"),
        ("publish", "slow", "proxy_unavailable"),
        ("publish", "boom", "proxy_unavailable"),
    ],
)
async def test_ws_commands_refused_by_the_backend_leave_the_connection_open(
    server: ServerProcess, client: httpx.AsyncClient, op: str, word: str, code: str
) -> None:
    channel = named(word)
    fields: dict[str, Any] = {"channel": channel}
    if op == "publish":
        fields["data"] = {"n": 1}
    async with peer(server.url) as ws:
        reply = await ws.request(op, **fields)
        assert reply["error"]["code"] == code, reply
        assert await ws.result("ping") == {}
    # Nothing was subscribed or published: the channel is unknown to the server
    # (reading it back would ask the backend, which refuses these channels).
    listed = (await client.get("/api/channels")).json()["channels"]
    assert channel not in {entry["channel"] for entry in listed}


@pytest.mark.parametrize(
    ("word", "status", "code"),
    [("noconnect", 401, "login_required"), ("deny", 403, "not_allowed"),
     ("slowconnect", 503, "proxy_unavailable")],
)  # fmt: skip
async def test_ws_handshake_refused_by_the_backend(
    server: ServerProcess, word: str, status: int, code: str
) -> None:
    got_status, error = await handshake_refusal(server.url, f"channel={named(word)}")
    assert (got_status, error["code"]) == (status, code)


# -- proxy hooks: HTTP publish --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "outcome"),
    [
        ("ok", (200, None, None)),
        ("rewrite", (200, None, None)),
        ("deny", (403, "not_allowed", "the backend says no to {channel}")),
        ("slow", (503, "proxy_unavailable", SLOW.format("publish"))),
        ("boom", (503, "proxy_unavailable", BOOM.format("publish"))),
    ],
)  # fmt: skip
async def test_http_publish_through_the_backend(
    client: httpx.AsyncClient, word: str, outcome: tuple[int, str | None, str | None]
) -> None:
    channel = named(word)
    response = await client.post("/api/publish", json={"channel": channel, "data": {"n": 1}})
    status, code, message = outcome
    if code is None:
        assert response.status_code == status, response.text
        expected = {"rewritten": {"n": 1}} if word == "rewrite" else {"n": 1}
        assert await history(client, channel) == [expected]
    else:
        assert error_of(response) == (status, code, (message or "").format(channel=channel))
        if status == 503:
            assert response.headers["retry-after"] == "1"


async def test_a_text_publish_is_rewritten_to_json_data(
    server: ServerProcess, client: httpx.AsyncClient
) -> None:
    channel = named("rewrite")
    async with peer(server.url) as ws:
        await ws.result("publish", channel=channel, text="hi")
    assert await history(client, channel) == [{"rewritten": "hi"}]


# -- proxy hooks: the backend is down --------------------------------------------------------------


async def test_a_backend_that_is_down_refuses_everything_with_503(
    down_server: ServerProcess,
) -> None:
    url = down_server.url
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        assert (await client.get("/healthz")).status_code == 200
        sse = await client.get("/sse?channel=a")
        assert error_of(sse)[:2] == (503, "proxy_unavailable")
        assert "cannot reach it (ConnectError)" in error_of(sse)[2]
        published = await client.post("/api/publish", json={"channel": "a", "data": 1})
        assert error_of(published)[:2] == (503, "proxy_unavailable")
        assert (await client.get("/api/channels")).json()["channels"] == []
    assert (await handshake_refusal(url, ""))[0] == 503
    assert (await handshake_refusal(url, "channel=a"))[1]["code"] == "proxy_unavailable"


# -- Python hooks of an embedded app ---------------------------------------------------------


class Moderator:
    """Python hooks: refuse ``deny`` channels, rewrite ``rewrite`` ones, fail on ``boom``
    and never answer on ``slow``."""

    def __init__(self) -> None:
        self.connected: list[ConnectContext] = []

    async def on_connect(self, context: ConnectContext) -> Any:
        self.connected.append(context)
        return {"transport": context.transport}

    async def on_subscribe(self, context: SubscribeContext) -> None:
        await self.judge(context.channel)

    async def on_publish(self, context: PublishContext) -> Any:
        await self.judge(context.channel)
        if context.channel.startswith("rewrite"):
            return {"clean": context.data, "by": context.info}
        return None

    async def judge(self, channel: str) -> None:
        if channel.startswith("deny"):
            raise Rejected("moderated", f"not on {channel}", status=403)
        if channel.startswith("boom"):
            raise RuntimeError("a bug in the hook")
        if channel.startswith("slow"):
            await asyncio.Event().wait()


@pytest.fixture(params=["fast", "asgi"])
async def embedded(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Moderator]]:
    moderator = Moderator()
    settings = Settings(log_level="critical", hook_timeout=0.2)
    async with Hub() as hub:
        app = create_app(
            hub,
            settings,
            on_connect=moderator.on_connect,
            on_subscribe=moderator.on_subscribe,
            on_publish=moderator.on_publish,
        )
        async with run_server(app, settings=settings, fast_write=request.param == "fast") as url:
            yield url, moderator


async def test_python_hooks_over_sse_ws_and_http(embedded: tuple[str, Moderator]) -> None:
    url, moderator = embedded
    channel = named("rewrite")
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        async with open_sse(client, f"/sse/{channel}") as reader, peer(url) as ws:
            await reader.until(b"retry:")
            await ws.result("subscribe", channel=channel)
            await ws.result("publish", channel=channel, data=1)
            (sse_event,) = await reader.events(1)
            assert sse_event.data == '{"clean":1,"by":{"transport":"ws"}}'
            assert (await ws.push())["data"] == {"clean": 1, "by": {"transport": "ws"}}
            response = await client.post("/api/publish", json={"channel": channel, "data": 2})
            assert response.status_code == 200
            assert (await ws.push())["data"] == {"clean": 2, "by": None}
        assert [context.transport for context in moderator.connected] == ["sse", "ws"]
        assert moderator.connected[1].headers["cookie"] == COOKIE


@pytest.mark.parametrize(
    ("word", "status", "code"),
    [("deny", 403, "moderated"), ("boom", 500, "hook_failed"), ("slow", 500, "hook_failed")],
)
async def test_python_hooks_refuse_over_every_transport(
    embedded: tuple[str, Moderator], word: str, status: int, code: str
) -> None:
    url, _ = embedded
    channel = named(word)
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        assert error_of(await client.get(f"/sse/{channel}"))[:2] == (status, code)
        published = await client.post("/api/publish", json={"channel": channel, "data": 1})
        assert error_of(published)[:2] == (status, code)
        assert (await handshake_refusal(url, f"channel={channel}"))[0] == status
        async with peer(url) as ws:
            for op, fields in (("subscribe", {}), ("publish", {"data": 1}), ("history", {})):
                reply = await ws.request(op, channel=channel, **fields)
                assert reply["error"]["code"] == code, reply
            assert await ws.result("ping") == {}
        assert (await client.get("/api/channels")).json()["channels"] == []
