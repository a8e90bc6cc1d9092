"""server/guard.py: its limits from settings and its answers (its internals: test_fastwrite.py)."""

from __future__ import annotations

import asyncio
import sys

import orjson
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from tidings.server import guard
from tidings.server.guard import ProtocolLimits, answer, with_limits
from tidings.settings import Settings, SettingsError


def test_limits_come_from_settings_and_bind_to_a_subclass() -> None:
    settings = Settings(max_url_bytes=100, max_header_bytes=200, header_timeout=0.5)
    limits = ProtocolLimits.from_settings(settings)
    assert (limits.max_url_bytes, limits.max_header_bytes, limits.header_timeout) == (100, 200, 0.5)
    assert limits.line_bytes >= 200
    bound = with_limits(guard.GuardedHttpToolsProtocol, limits)
    assert issubclass(bound, guard.GuardedHttpToolsProtocol)
    assert bound.limits is limits
    assert guard.GuardedHttpToolsProtocol.limits == guard.DEFAULT_LIMITS


def test_an_answer_is_a_whole_http_response_with_the_json_error() -> None:
    data = answer(503, "unavailable", "busy", retry_after=5)
    head, body = data.split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"connection: close" in lines
    assert b"retry-after: 5" in lines
    assert f"content-length: {len(body)}".encode() in lines
    assert orjson.loads(body) == {"error": {"code": "unavailable", "message": "busy"}}


@pytest.mark.parametrize(
    "values",
    [
        {"max_url_bytes": 0},
        {"max_header_bytes": -1},
        {"max_headers": 0},
        {"max_headers": 129},
        {"max_connections": 0},
        {"max_connections_per_client": -1},
        {"header_timeout": 0},
        {"body_timeout": -1},
        {"ws_handshake_timeout": 0},
        {"idle_timeout": 0},
    ],
)
def test_bad_limits_are_refused_by_name(values: dict[str, float]) -> None:
    with pytest.raises(SettingsError, match=next(iter(values))):
        Settings(**values)  # type: ignore[arg-type]


def test_sockets_stay_below_the_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard.resource, "getrlimit", lambda _: (1000, 4096))
    assert ProtocolLimits.from_settings(Settings(max_connections=5000)).max_connections == 936
    assert ProtocolLimits.from_settings(Settings(max_connections=50)).max_connections == 50


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    pass


async def test_the_guard_state_is_one_attribute_of_the_connection() -> None:
    config = uvicorn.Config(_app)
    config.load()
    loop = asyncio.get_running_loop()
    plain = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    guarded = guard.GuardedHttpToolsProtocol(
        config=config, server_state=ServerState(), app_state={}, _loop=loop
    )
    # uvicorn's instance dictionary keeps its (shared-key) size: one entry more.
    assert set(vars(guarded)) - set(vars(plain)) == {"guard"}
    assert sys.getsizeof(vars(guarded)) == sys.getsizeof(vars(plain))
