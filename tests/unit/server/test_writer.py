"""server/writer.py: the ``tidings.write`` extension's name, and its interfaces as implemented.

The interfaces are ``typing.Protocol`` classes; the implementations are the
extension objects of ``server/fastwrite.py`` and the listeners of the SSE and
WebSocket transports. Each must offer every member, with the same parameters.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
from typing import Protocol

import pytest

import tidings.server
from tidings.server import fastwrite
from tidings.server.writer import (
    FAST_WRITE,
    FastWrite,
    HTTPFastWrite,
    WebSocketFastWrite,
    WriteListener,
)


def listeners() -> list[type]:
    """Every class of ``tidings.server`` that listens to a transport (not asyncio protocols)."""
    wanted = {"connection_lost", "pause_writing", "resume_writing", "shutdown"}
    found = []
    for info in pkgutil.iter_modules(tidings.server.__path__, "tidings.server."):
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if (
                inspect.isclass(cls)
                and cls.__module__ == module.__name__
                and not issubclass(cls, asyncio.BaseProtocol)
                and not getattr(cls, "_is_protocol", False)
                and wanted <= set(dir(cls))
            ):
                found.append(cls)
    return found


IMPLEMENTATIONS = [
    (HTTPFastWrite, fastwrite._HTTPFastWrite),
    (WebSocketFastWrite, fastwrite._WebSocketFastWrite),
    *[(WriteListener, cls) for cls in listeners()],
]


def members(protocol: type) -> dict[str, object]:
    """The members a Protocol class declares, its bases' included."""
    found: dict[str, object] = {}
    for cls in reversed(protocol.__mro__):
        if cls is object or cls is Protocol or not getattr(cls, "_is_protocol", False):
            continue
        found.update({k: v for k, v in vars(cls).items() if not k.startswith("_")})
    return found


def parameters(member: object) -> list[str]:
    function = member.fget if isinstance(member, property) else member
    assert callable(function)
    return list(inspect.signature(function).parameters)


def test_the_extension_name() -> None:
    assert FAST_WRITE == "tidings.write"


def test_the_extensions_share_the_base_interface() -> None:
    base = set(members(FastWrite))
    assert base == {"abort", "attach", "detach", "paused", "write"}
    assert base < set(members(HTTPFastWrite))
    assert base < set(members(WebSocketFastWrite))
    assert set(members(HTTPFastWrite)) - base == {"end", "hand_off", "release"}
    assert set(members(WebSocketFastWrite)) - base == {
        "close",
        "hand_off",
        "pause_reading",
        "resume_reading",
    }


def test_the_sse_and_websocket_transports_listen() -> None:
    modules = {cls.__module__ for interface, cls in IMPLEMENTATIONS if interface is WriteListener}
    assert {"tidings.server.sse", "tidings.server.pump"} < modules
    assert "tidings.server._ws_connection" in modules  # the WebSocket connection


def test_the_listener_interface() -> None:
    assert set(members(WriteListener)) == {
        "connection_lost",
        "pause_writing",
        "resume_writing",
        "shutdown",
    }


@pytest.mark.parametrize(
    ("interface", "implementation"),
    IMPLEMENTATIONS,
    ids=[f"{impl.__module__}.{impl.__qualname__}" for _, impl in IMPLEMENTATIONS],
)
def test_each_implementation_offers_every_member(interface: type, implementation: type) -> None:
    for name, declared in members(interface).items():
        offered = inspect.getattr_static(implementation, name, None)
        assert offered is not None, f"{implementation.__qualname__} lacks {name}"
        assert isinstance(offered, property) == isinstance(declared, property), name
        assert parameters(offered) == parameters(declared), name
