"""The permission matrix, fuzzed credentials and private channels, against real servers.

One table (:data:`KINDS` x :data:`RULES` x transport x operation) generates
every cell; each cell's expected outcome is computed from the table by
:func:`expected`, a plain statement of the rules in docs/reference/settings.md,
and checked against a server on loopback, on the fast write path and on the
plain ASGI path. Refusals (the negative cells) run first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess
from tidings.server.auth import mint_token
from tidings.settings import Settings
from tidings.testing import run_server

SECRET = "permission-matrix-secret-32-byte"
API_KEY = "matrix-api-key-0123456789"
OK, UNAUTHORIZED, FORBIDDEN = 200, 401, 403


@dataclass(frozen=True)
class Rule:
    """A namespace rule: its table, and the channel a cell uses."""

    name: str
    channel: str
    table: dict[str, Any]
    anonymous: bool = False
    private: bool = False
    publish: bool | str = True


RULES = [
    Rule("default with auth", "plain:room", {}),
    Rule("anonymous=true", "open:room", {"anonymous": True}, anonymous=True),
    Rule("private", "user:alice", {"private": True}, private=True),
    Rule('publish="token"', "tok:room", {"publish": "token"}, publish="token"),
    Rule("publish=false", "ro:room", {"publish": False}, publish=False),
]
NAMESPACES = {rule.channel.partition(":")[0]: rule.table for rule in RULES if rule.table}
ACTIONS = ("subscribe", "publish", "history", "presence")


def token(sub: str, *, grants: dict[str, list[str]] | None = None, ttl: float = 600) -> str:
    return mint_token(SECRET, sub=sub, ttl=ttl, grants=grants)


def granted_token() -> str:
    # Grants on every namespace but the private one, where ownership decides.
    patterns = [f"{rule.channel.partition(':')[0]}:*" for rule in RULES if not rule.private]
    return token("alice", grants={action: patterns for action in ACTIONS})


#: Token kinds: a name and the Authorization header value (None: no credential).
KINDS: dict[str, Callable[[], str | None]] = {
    "none": lambda: None,
    "granted": lambda: f"Bearer {granted_token()}",
    "no grants": lambda: f"Bearer {token('carol')}",
    "expired": lambda: f"Bearer {token('alice', ttl=-120)}",
    "wrong signature": lambda: (
        "Bearer " + mint_token("another-secret-of-at-least-32-byt", sub="alice", ttl=600)
    ),
    "API key": lambda: f"ApiKey {API_KEY}",
}


def expected(kind: str, rule: Rule, action: str) -> int:
    """The outcome the rules give a cell."""
    if kind in ("expired", "wrong signature"):
        return UNAUTHORIZED
    if kind == "API key":
        return OK
    if action == "publish" and rule.publish is False:
        return FORBIDDEN  # the namespace forbids clients whoever they are
    if kind == "granted":
        return OK  # a grant, or (private) the owner's own channel
    refused = UNAUTHORIZED if kind == "none" else FORBIDDEN
    if rule.private:
        return refused
    if action == "publish" and rule.publish == "token":
        return refused
    return OK if rule.anonymous else refused


def matrix_settings() -> Settings:
    return Settings(
        log_level="warning",
        jwt_secret=SECRET,
        api_keys=f"ops:{API_KEY}",
        namespaces=NAMESPACES,
    )


Cell = tuple[str, Rule, str]


def cells(actions: tuple[str, ...]) -> list[Cell]:
    every = [(kind, rule, action) for kind in KINDS for rule in RULES for action in actions]
    return sorted(every, key=lambda cell: expected(*cell) == OK)  # negative cells first


def headers(kind: str) -> dict[str, str]:
    value = KINDS[kind]()
    return {} if value is None else {"Authorization": value}


# -- one checker per transport -------------------------------------------------------------------


async def sse_outcome(url: str, kind: str, rule: Rule, action: str) -> int:
    async with (
        httpx.AsyncClient(timeout=TIMEOUT) as client,
        client.stream(
            "GET", f"{url}/sse", params={"channel": rule.channel}, headers=headers(kind)
        ) as response,
    ):
        if response.status_code == OK:
            assert response.headers["content-type"].startswith("text/event-stream")
        else:
            body = orjson.loads(await response.aread())
            assert body["error"]["code"] in ("unauthorized", "permission_denied")
        return response.status_code


async def http_outcome(url: str, kind: str, rule: Rule, action: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, headers=headers(kind)) as client:
        if action == "publish":
            response = await client.post("/api/publish", json={"channel": rule.channel, "data": 1})
        else:
            response = await client.get(f"/api/{action}/{rule.channel}")
    if response.status_code == UNAUTHORIZED:
        assert response.headers["www-authenticate"] == "Bearer"
    if response.status_code != OK:
        assert response.json()["error"]["code"] in ("unauthorized", "permission_denied")
    return response.status_code


_WS_CODES = {"unauthorized": UNAUTHORIZED, "permission_denied": FORBIDDEN}


async def ws_outcome(url: str, kind: str, rule: Rule, action: str) -> int:
    command: dict[str, Any] = {"id": 1, "op": action, "channel": rule.channel}
    if action == "publish":
        command["data"] = 1
    try:
        async with connect(
            url.replace("http", "ws", 1) + "/ws",
            subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
            additional_headers=headers(kind),
            open_timeout=TIMEOUT,
        ) as socket:
            await socket.send(orjson.dumps(command).decode())
            while True:
                reply = orjson.loads(await socket.recv())
                if isinstance(reply, dict) and reply.get("id") == 1:
                    break
    except InvalidStatus as exc:
        return exc.response.status_code
    if "error" in reply:
        return _WS_CODES[reply["error"]["code"]]
    return OK


TRANSPORTS: dict[str, tuple[Callable[[str, str, Rule, str], Awaitable[int]], tuple[str, ...]]] = {
    "SSE": (sse_outcome, ("subscribe",)),
    "WebSocket": (ws_outcome, ACTIONS),
    "HTTP API": (http_outcome, ("publish", "history", "presence")),
}


@pytest.mark.parametrize("fast_write", [True, False], ids=["fast", "asgi"])
@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_permission_matrix(transport: str, fast_write: bool) -> None:
    check, actions = TRANSPORTS[transport]
    wrong = []
    async with run_server(settings=matrix_settings(), fast_write=fast_write) as url:
        for kind, rule, action in cells(actions):
            got = await check(url, kind, rule, action)
            want = expected(kind, rule, action)
            if got != want:
                wrong.append(f"{kind} x {rule.name} x {action}: {got}, expected {want}")
    assert not wrong, "\n".join(wrong)


def test_the_table_has_every_kind_of_cell() -> None:
    outcomes = {expected(*cell) for cell in cells(ACTIONS)}
    assert outcomes == {OK, UNAUTHORIZED, FORBIDDEN}
    assert [expected(*cell) == OK for cell in cells(ACTIONS)].index(True) > 0


# -- private channels never leak -----------------------------------------------------------------


@pytest.mark.parametrize("fast_write", [True, False], ids=["fast", "asgi"])
async def test_private_history_and_presence_never_leak(fast_write: bool) -> None:
    alice = {"Authorization": f"Bearer {token('alice')}"}
    # Bob holds a token, even one granting his own private channels.
    bob_token = token("bob", grants={action: ["user:bob", "user:bob/*"] for action in ACTIONS})
    bob = {"Authorization": f"Bearer {bob_token}"}
    async with (
        run_server(settings=matrix_settings(), fast_write=fast_write) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client,
        connect(
            url.replace("http", "ws", 1) + "/ws",
            subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
            additional_headers=alice,
        ) as present,
    ):
        await present.send(
            orjson.dumps({"id": 1, "op": "subscribe", "channel": "user:alice"}).decode()
        )
        assert orjson.loads(await present.recv())["ok"] is True
        secret = {"diary": "alice-only-secret"}
        published = await client.post(
            "/api/publish", json={"channel": "user:alice", "data": secret}, headers=alice
        )
        assert published.status_code == OK
        mine = await client.get("/api/history/user:alice", headers=alice)
        assert mine.json()["events"][0]["data"] == secret
        assert (await client.get("/api/presence/user:alice", headers=alice)).json()["clients"]
        for path in ("/api/history/user:alice", "/api/presence/user:alice"):
            for who in (bob, {}):
                response = await client.get(path, headers=who)
                assert response.status_code in (UNAUTHORIZED, FORBIDDEN)
                assert "alice-only-secret" not in response.text
                assert "clients" not in response.json()
        async with connect(
            url.replace("http", "ws", 1) + "/ws",
            subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
            additional_headers=bob,
        ) as intruder:
            for n, op in enumerate(("history", "presence", "subscribe"), 1):
                command = {"id": n, "op": op, "channel": "user:alice"}
                await intruder.send(orjson.dumps(command).decode())
                reply = orjson.loads(await intruder.recv())
                assert reply["error"]["code"] == "permission_denied"
                assert b"alice-only-secret" not in orjson.dumps(reply)


# -- fuzzed credentials --------------------------------------------------------------------------

_latin1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
_segment = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
_jwt_like = st.builds(lambda *parts: ".".join(parts), _segment, _segment, _segment)
_alg_none = st.just(
    "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0."
)
_credential = st.one_of(st.text(_latin1, max_size=200), _jwt_like, _alg_none)
_authorization = st.one_of(
    st.text(_latin1, max_size=200),
    st.builds(
        lambda scheme, value: f"{scheme} {value}",
        st.sampled_from(["Bearer", "bearer", "ApiKey", "Basic", "Token", ""]),
        _credential,
    ),
).map(lambda value: value.strip(" \t"))  # HTTP trims a field value's ends


@pytest.fixture(scope="module")
def fuzz_server() -> Any:
    env = {
        "TIDINGS_JWT_SECRET": SECRET,
        "TIDINGS_API_KEYS": f"ops:{API_KEY}",
        "TIDINGS_FAST_WRITE": "1",
    }
    with ServerProcess(env=env) as process:
        yield process


_fuzz = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_fuzz
@given(value=_authorization)
def test_fuzzed_authorization_header_is_401_never_500(
    fuzz_server: ServerProcess, value: str
) -> None:
    # Whatever the header holds (nothing at all, too), plain:x needs a real token.
    with httpx.Client(base_url=fuzz_server.url, timeout=TIMEOUT) as client:
        for path in ("/api/history/plain:x", "/sse?channel=plain:x"):
            with client.stream(
                "GET", path, headers={"Authorization": value.encode("latin-1")}
            ) as response:
                assert response.status_code == UNAUTHORIZED, (value, response.read())


@_fuzz
@given(value=_credential)
def test_fuzzed_query_token_is_401_never_500(fuzz_server: ServerProcess, value: str) -> None:
    with httpx.Client(base_url=fuzz_server.url, timeout=TIMEOUT) as client:
        for path in ("/api/history/plain:x", "/sse"):
            params = {"token": value, **({"channel": "plain:x"} if path == "/sse" else {})}
            with client.stream("GET", path, params=params) as response:
                assert response.status_code == UNAUTHORIZED, (value, response.read())


def test_a_fresh_token_still_passes_the_fuzzed_paths(fuzz_server: ServerProcess) -> None:
    grant = token("alice", grants={"history": ["plain:*"]})
    with httpx.Client(base_url=fuzz_server.url, timeout=TIMEOUT) as client:
        response = client.get("/api/history/plain:x", params={"token": grant})
    assert response.status_code == OK
    assert response.json()["channel"] == "plain:x"
