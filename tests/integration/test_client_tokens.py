"""The Python clients against a real server with JWTs: they outlive their tokens.

Each token lasts about 2 s; the clients ask ``get_token`` for new ones and
keep receiving across several expiries, with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx

from tests.support.env import TIMEOUT
from tidings.client import Backoff, Message, Socket, apublish, listen
from tidings.server.auth import mint_token
from tidings.settings import Settings
from tidings.testing import run_server

SECRET = "integration-secret-integration-secret"
API_KEY = "publisher-key-publisher-key"
CHANNEL = "chat:room"
#: Seconds each token lives (whole seconds: ``exp`` is an integer).
TTL = max(2, round(TIMEOUT * 0.4))
#: Tokens a client must go through: the first one and three after expiries.
TOKENS = 4
#: Seconds between publishes: several events per token.
PACE = TTL / 10


def settings() -> Settings:
    return Settings(
        log_level="warning",
        jwt_secret=SECRET,
        api_keys=f"publisher:{API_KEY}",
        namespaces={"chat": {"history_size": 10000}},
    )


class Tokens:
    """get_token: a short-lived token for ``ada``, allowed to subscribe to the channel."""

    def __init__(self) -> None:
        self.issued = 0
        self.enough = asyncio.Event()

    def __call__(self) -> str:
        self.issued += 1
        if self.issued >= TOKENS:
            self.enough.set()
        return mint_token(SECRET, sub="ada", ttl=TTL, grants={"subscribe": [CHANNEL]})


@asynccontextmanager
async def publishing(url: str, stop: asyncio.Event) -> AsyncIterator[Callable[[], int]]:
    """Publish 1, 2, 3 … to the channel (as the server, with the API key) until ``stop``;
    yields a function that says how many were published."""
    published = 0

    async def run(http: httpx.AsyncClient) -> None:
        nonlocal published
        while not stop.is_set():
            await apublish(url, CHANNEL, published + 1, client=http)
            published += 1
            await asyncio.sleep(PACE)  # pacing, not synchronisation
        # One last event after ``stop``: a receiver waiting for the next event
        # when the tokens ran out gets it, and finds it has them all.
        await apublish(url, CHANNEL, published + 1, client=http)
        published += 1

    async with httpx.AsyncClient(headers={"x-api-key": API_KEY}) as http:
        task = asyncio.get_running_loop().create_task(run(http))
        try:
            yield lambda: published
        finally:
            stop.set()
            await task


async def receive_until(
    next_item: Callable[[], Awaitable[object]], tokens: Tokens, url: str
) -> list[object]:
    """Collect data until ``tokens`` ran out and every published event arrived."""
    stop = tokens.enough
    received: list[object] = []
    limit = TIMEOUT * 2 + TTL * TOKENS
    async with publishing(url, stop) as published:
        try:
            async with asyncio.timeout(limit):
                while not stop.is_set() or len(received) < published():
                    received.append(await next_item())
        except TimeoutError:
            raise AssertionError(
                f"in {limit} s: {tokens.issued} of {TOKENS} tokens used,"
                f" {len(received)} of {published()} events received"
            ) from None
    return received


async def test_sse_listener_outlives_its_tokens() -> None:
    tokens = Tokens()
    async with (
        run_server(settings=settings()) as url,
        listen(url, [CHANNEL], get_token=tokens, backoff=Backoff(base=0.05)) as events,
    ):

        async def next_data() -> object:
            item = await anext(events)
            assert isinstance(item, Message), item
            return item.json()

        received = await receive_until(next_data, tokens, url)
    assert received == list(range(1, len(received) + 1))  # no gap, no duplicate
    assert tokens.issued >= TOKENS


async def test_socket_outlives_its_tokens() -> None:
    tokens = Tokens()
    async with (
        run_server(settings=settings()) as url,
        Socket(url, get_token=tokens, backoff=Backoff(base=0.05)) as socket,
    ):
        room = await socket.subscribe(CHANNEL)

        async def next_data() -> object:
            item = await anext(room)
            return item.data

        received = await receive_until(next_data, tokens, url)
    assert received == list(range(1, len(received) + 1))  # no gap, no duplicate
    assert tokens.issued >= TOKENS
