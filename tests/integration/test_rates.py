"""Publish rate limits, the per-client generation cap, draining and exact numbers,
end to end on a real server (both write paths where the transport matters)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgpack
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.env import TIMEOUT
from tests.support.fake_openai import FakeUpstream, Scenario
from tests.support.server import ServerProcess
from tests.support.ws import Peer
from tidings.client import Socket, apublish
from tidings.errors import IntegerOutOfRange, PublishRejected
from tidings.llm import LLMConfig
from tidings.server.app import create_app
from tidings.server.auth import mint_token
from tidings.settings import Settings
from tidings.testing import run_server
from tidings.wire.protocol import Format

SECRET = "publish-rates-test-secret-32-byte"
BIG = 123456789012345678901234567890
#: X-Forwarded-For of a client behind the trusted proxy (the test's loopback address).
ALICE, BOB = {"x-forwarded-for": "203.0.113.1"}, {"x-forwarded-for": "203.0.113.2"}


def rated(**values: Any) -> Settings:
    return Settings(log_level="warning", trusted_proxies="127.0.0.1", **values)


@contextlib.asynccontextmanager
async def served(settings: Settings, fast_write: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        run_server(settings=settings, fast_write=fast_write) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http,
    ):
        yield http


@contextlib.asynccontextmanager
async def peer(
    http: httpx.AsyncClient, fmt: Format = Format.JSON, **headers: str
) -> AsyncIterator[Peer]:
    url = str(http.base_url).replace("http://", "ws://").rstrip("/") + "/ws"
    async with connect(
        url,
        subprotocols=[fmt.subprotocol],  # type: ignore[list-item]
        additional_headers=headers,
    ) as ws:
        yield Peer(ws, fmt)


async def history(http: httpx.AsyncClient, channel: str) -> list[Any]:
    response = await http.get(f"/api/history/{channel}", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [event["data"] for event in response.json()["events"]]


# -- publish rates -------------------------------------------------------------------------


async def test_an_http_flood_from_one_address_gets_429_while_another_is_served() -> None:
    async with served(rated(publish_rate_per_address=2.0, publish_burst=2.0)) as http:
        started = time.monotonic()
        statuses = []
        for n in range(30):
            response = await http.post(
                "/api/publish", json={"channel": "flood", "data": n}, headers=ALICE
            )
            statuses.append(response.status_code)
            if response.status_code == 429:
                refused = response
        elapsed = time.monotonic() - started
        accepted = statuses.count(200)
        assert statuses.count(429) == 30 - accepted > 0
        assert accepted <= 2.0 * elapsed + 4 + 1e-6
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        # Another address behind the same proxy is served; nothing refused was stored.
        other = await http.post("/api/publish", json={"channel": "flood", "data": "b"}, headers=BOB)
        assert other.status_code == 200, other.text
        assert len(await history(http, "flood")) == accepted + 1


@pytest.mark.parametrize("fast_write", [True, False], ids=["fast", "asgi"])
async def test_ws_publishes_over_many_connections_of_one_address_are_limited_in_total(
    fast_write: bool,
) -> None:
    settings = rated(publish_rate_per_address=3.0, publish_burst=1.0)
    async with served(settings, fast_write) as http, contextlib.AsyncExitStack() as stack:
        peers = [await stack.enter_async_context(peer(http, **ALICE)) for _ in range(8)]
        started = time.monotonic()
        replies = [
            await p.request("publish", channel="many", data=n) for n in range(4) for p in peers
        ]
        elapsed = time.monotonic() - started
        accepted = [reply for reply in replies if reply.get("ok")]
        refused = [reply["error"] for reply in replies if "error" in reply]
        assert len(accepted) <= 3.0 * elapsed + 3 + 1e-6
        assert refused
        assert all(error["code"] == "rate_limited" for error in refused)
        assert all(0 < error["retry_after"] <= 1 for error in refused)
        # Every connection stays usable, and publishes again once the bucket refills.
        for p in peers:
            assert await p.result("ping") == {}
        await asyncio.sleep(max(error["retry_after"] for error in refused))
        assert (await peers[0].request("publish", channel="many", data="later")).get("ok")
        assert len(await history(http, "many")) == len(accepted) + 1


async def test_the_per_connection_limit_leaves_other_connections_alone() -> None:
    settings = rated(
        publish_rate_per_connection=2.0, publish_rate_per_address=0.0, publish_burst=1.0
    )
    async with served(settings) as http, peer(http) as first, peer(http) as second:
        replies = [await first.request("publish", channel="conn", data=n) for n in range(6)]
        assert any("error" in reply for reply in replies)
        assert (await second.request("publish", channel="conn", data="x")).get("ok")


async def test_the_principal_limit_follows_a_subject_across_addresses() -> None:
    settings = rated(
        jwt_secret=SECRET,
        publish_rate_per_address=0.0,
        publish_rate_per_principal=2.0,
        publish_burst=1.0,
        api_keys="ops:publish-rates-api-key-0123",
        namespaces={"t": {"anonymous": True}},
    )
    grants = {"publish": ["t:*"], "history": ["t:*"], "subscribe": ["t:*"]}
    alice = {"authorization": "Bearer " + mint_token(SECRET, sub="alice", ttl=600, grants=grants)}
    bob = {"authorization": "Bearer " + mint_token(SECRET, sub="bob", ttl=600, grants=grants)}
    key = {"x-api-key": "publish-rates-api-key-0123"}
    async with served(settings) as http:
        statuses = []
        for n, address in enumerate([ALICE, BOB] * 4):
            response = await http.post(
                "/api/publish", json={"channel": "t:p", "data": n}, headers=alice | address
            )
            statuses.append(response.status_code)
        assert 429 in statuses
        response = await http.post(
            "/api/publish", json={"channel": "t:p", "data": 0}, headers=bob | ALICE
        )
        assert response.status_code == 200, response.text
        for _ in range(10):  # server API keys are exempt
            response = await http.post(
                "/api/publish", json={"channel": "t:p", "data": 0}, headers=key
            )
            assert response.status_code == 200, response.text


async def test_the_python_socket_retries_a_rate_limited_publish_and_loses_none() -> None:
    settings = rated(publish_rate_per_connection=10.0, publish_burst=0.5)
    async with (
        run_server(settings=settings) as url,
        Socket(url, rate_limit=None) as socket,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http,
    ):
        async with asyncio.timeout(TIMEOUT * 2):
            positions = await asyncio.gather(*(socket.publish("retry", n) for n in range(25)))
        assert len({position.offset for position in positions}) == 25
        assert sorted(await history(http, "retry")) == list(range(25))


async def test_the_http_client_exposes_retry_after() -> None:
    async with served(rated(publish_rate_per_address=1.0, publish_burst=1.0)) as http:
        url = str(http.base_url)
        await apublish(url, "once", 1)
        with pytest.raises(PublishRejected) as refused:
            for n in range(5):
                await apublish(url, "once", n)
        assert refused.value.status == 429
        assert refused.value.code == "rate_limited"
        assert refused.value.retry_after is not None
        assert refused.value.retry_after >= 1


# -- generations per client -------------------------------------------------------------------


async def test_one_client_may_run_only_its_share_of_generations() -> None:
    async with FakeUpstream() as upstream:
        upstream.scenario("paused", Scenario(pause_after=1))
        llm = LLMConfig.from_table({"base_url": upstream.base_url, "max_generations_per_client": 1})
        async with served(rated(llm=llm)) as http:
            body = {"model": "paused", "messages": [{"role": "user", "content": "hi"}]}
            body["stream"] = True
            async with http.stream(
                "POST", "/v1/chat/completions", json=body, headers=ALICE
            ) as first:
                assert first.status_code == 200
                await upstream.next_call(1, TIMEOUT)
                again = await http.post("/v1/chat/completions", json=body, headers=ALICE)
                assert again.status_code == 429
                error = again.json()["error"]
                assert (error["type"], error["code"]) == (
                    "rate_limit_error",
                    "too_many_generations",
                )
                assert "for this client" in error["message"]
                upstream.scenarios["paused"].release.set()
                other = await http.post(
                    "/v1/chat/completions", json={**body, "stream": False}, headers=BOB
                )
                assert other.status_code == 200, other.text
            stats = (await http.get("/api/stats")).json()["llm"]
            assert stats["active"] <= 1


# -- draining --------------------------------------------------------------------------------


@pytest.mark.parametrize("fast_write", [True, False], ids=["fast", "asgi"])
async def test_a_draining_server_refuses_publishes_before_it_closes_subscribers(
    fast_write: bool,
) -> None:
    settings = Settings(log_level="warning")
    app = create_app(settings=settings)
    state = app.state.tidings
    async with (
        run_server(app, settings=settings, fast_write=fast_write) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http,
        peer(http) as subscriber,
        peer(http) as publisher,
    ):
        await subscriber.result("subscribe", channel="drain")
        assert (await publisher.request("publish", channel="drain", data=1)).get("ok")
        await state.drain(wait=TIMEOUT)
        response = await http.post("/api/publish", json={"channel": "drain", "data": 2})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "unavailable"
        assert response.headers["retry-after"] == "1"
        error = (await publisher.request("publish", channel="drain", data=3))["error"]
        assert error["code"] == "unavailable"
        assert error["retry_after"] == 1.0
        # The subscriber is still there and got exactly what was accepted.
        assert (await subscriber.push())["data"] == 1
        assert await subscriber.result("ping") == {}
        assert await history(http, "drain") == [1]


async def test_sigterm_delivers_every_accepted_publish_to_the_subscriber() -> None:
    with ServerProcess(env={"TIDINGS_LOG_LEVEL": "warning"}) as server:
        url = server.url.replace("http://", "ws://") + "/ws"
        async with (
            connect(url, subprotocols=["tidings.v1.json"]) as sub_ws,  # type: ignore[list-item]
            connect(url, subprotocols=["tidings.v1.json"]) as pub_ws,  # type: ignore[list-item]
            httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
        ):
            subscriber = Peer(sub_ws)
            await subscriber.result("subscribe", channel="term")
            accepted: set[Any] = set()
            refused: list[str] = []
            received: list[Any] = []
            stop = asyncio.Event()
            enough = asyncio.Event()  # set once 50 publishes are accepted

            def accept(data: str) -> None:
                accepted.add(data)
                if len(accepted) >= 50:
                    enough.set()

            async def over_ws() -> None:
                publisher = Peer(pub_ws)
                for n in range(100_000):
                    try:
                        reply = await publisher.request("publish", channel="term", data=f"w{n}")
                    except (ConnectionClosed, TimeoutError):
                        return
                    if reply.get("ok"):
                        accept(f"w{n}")
                    else:
                        refused.append(reply["error"]["code"])
                    if stop.is_set() and n % 10 == 0:
                        return

            async def over_http(worker: int) -> None:
                for n in range(100_000):
                    data = f"h{worker}-{n}"
                    try:
                        response = await http.post(
                            "/api/publish", json={"channel": "term", "data": data}
                        )
                    except httpx.TransportError:
                        return
                    if response.status_code == 200:
                        accept(data)
                    else:
                        refused.append(response.json()["error"]["code"])
                        return

            async def receive() -> None:
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        received.append((await subscriber.push(timeout=TIMEOUT * 4))["data"])

            reader = asyncio.create_task(receive())
            publishers = [asyncio.create_task(over_ws())]
            publishers += [asyncio.create_task(over_http(worker)) for worker in range(4)]
            async with asyncio.timeout(TIMEOUT * 2):
                await enough.wait()
            server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            async with asyncio.timeout(TIMEOUT * 4):
                await reader
                stop.set()
                await asyncio.gather(*publishers, return_exceptions=True)
            assert sub_ws.close_code is not None
        assert accepted <= set(received), accepted - set(received)
        assert set(refused) <= {"unavailable"}


@pytest.mark.parametrize("fast_write", ["1", "0"], ids=["fast", "asgi"])
async def test_a_publish_in_flight_at_sigterm_is_refused_not_lost(fast_write: str) -> None:
    """A request whose body arrives after the subscribers were closed gets 503."""
    with ServerProcess(env={"TIDINGS_FAST_WRITE": fast_write}) as server:
        url = server.url.replace("http://", "ws://") + "/ws"
        body = b'{"channel": "late", "data": "late"}'
        async with connect(url, subprotocols=["tidings.v1.json"]) as ws:  # type: ignore[list-item]
            subscriber = Peer(ws)
            await subscriber.result("subscribe", channel="late")
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(
                    b"POST /api/publish HTTP/1.1\r\nHost: t\r\n"
                    b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body)
                )
                async with asyncio.timeout(TIMEOUT):
                    # The server asks for the body once the app reads it: the request is in flight.
                    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
                server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
                pushes = []
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        pushes.append(await subscriber.push(timeout=TIMEOUT * 2))
                writer.write(body)
                async with asyncio.timeout(TIMEOUT * 2):
                    answer = await reader.read()
            finally:
                writer.close()
        status = answer.split(b" ", 2)[1]
        assert status == b"503", answer[:300]
        assert b"unavailable" in answer
        assert b"retry-after: 1" in answer.lower()
        assert pushes == []


# -- integers beyond 64 bits -------------------------------------------------------------------


async def test_big_integers_are_refused_on_every_transport_and_nothing_is_stored() -> None:
    llm = LLMConfig.from_table({})
    async with served(Settings(log_level="warning", llm=llm)) as http:
        body = b'{"channel": "big", "data": {"n": %d}}' % BIG
        response = await http.post(
            "/api/publish", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"
        assert "2**64" in response.json()["error"]["message"]
        async with peer(http) as json_peer:
            await json_peer.ws.send(
                f'{{"id": 1, "op": "publish", "channel": "big", "data": [{-BIG}]}}'
            )
            error = (await json_peer.reply(None))["error"]
            assert error["code"] == "invalid_json"
            assert await json_peer.result("ping") == {}
        chat = (
            b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "seed": %d}' % BIG
        )
        response = await http.post(
            "/v1/chat/completions", content=chat, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"
        assert await history(http, "big") == []
        # The edges of the range keep their value, in JSON and in MessagePack.
        edges = [2**64 - 1, -(2**63)]
        response = await http.post(
            "/api/publish",
            content=orjson.dumps({"channel": "big", "data": edges}),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 200, response.text
        async with peer(http, Format.MSGPACK) as packed:
            await packed.ws.send(
                msgpack.packb({"id": 1, "op": "publish", "channel": "big", "data": edges})
            )
            assert (await packed.reply(1)).get("ok")
        assert await history(http, "big") == [edges, edges]


async def test_the_python_clients_refuse_big_integers_before_sending() -> None:
    async with run_server(settings=Settings(log_level="warning")) as url:
        with pytest.raises(IntegerOutOfRange):
            await apublish(url, "big", {"n": BIG})
        for fmt in ("json", "msgpack"):
            async with Socket(url, format=fmt) as socket:  # type: ignore[arg-type]
                with pytest.raises(IntegerOutOfRange):
                    await socket.publish("big", [1, {"n": -BIG}])
                await socket.publish("big", 2**64 - 1)
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
            assert await history(http, "big") == [2**64 - 1, 2**64 - 1]
