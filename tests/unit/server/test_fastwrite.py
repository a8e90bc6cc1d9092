"""server/fastwrite.py and server/guard.py: the uvicorn and websockets internals they rely on.

Every private name each module uses is listed once, in its ``RELIES_ON``;
these tests check each against the installed uvicorn and websockets, so an
upgrade that renames or removes one fails here, naming it and the module.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
from functools import cache
from types import ModuleType

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.server import ServerProtocol

from tidings.server import fastwrite, guard
from tidings.server.fastwrite import FastHttpToolsProtocol, FastWebSocketsProtocol

#: Each module that relies on internals, with the names it lists.
RELYING = [(fastwrite, name) for name in fastwrite.RELIES_ON] + [
    (guard, name) for name in guard.RELIES_ON
]

#: Each of Tidings' classes, the module whose list covers it, and the foreign
#: class whose methods it overrides.
OVERRIDES = [
    (fastwrite, FastHttpToolsProtocol, HttpToolsProtocol),
    (fastwrite, FastWebSocketsProtocol, WebSocketsSansIOProtocol),
    (fastwrite, fastwrite._ServerProtocol, ServerProtocol),
    (guard, guard.GuardedHttpToolsProtocol, HttpToolsProtocol),
    (guard, guard.GuardedWebSocketsProtocol, WebSocketsSansIOProtocol),
]


@cache
def assigned_on_self(owner: type) -> frozenset[str]:
    """The names ``owner`` (or a class it inherits from) assigns as ``self.<name>``."""
    names: set[str] = set()
    for cls in owner.__mro__:
        if cls is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for target in targets:
                for leaf in ast.walk(target):
                    if (
                        isinstance(leaf, ast.Attribute)
                        and isinstance(leaf.value, ast.Name)
                        and leaf.value.id == "self"
                    ):
                        names.add(leaf.attr)
    return frozenset(names)


def kind_of(owner: type, name: str) -> str | None:
    """What ``name`` is on ``owner`` as installed: a (async) method, an attribute, or None."""
    try:
        found = inspect.getattr_static(owner, name)
    except AttributeError:
        return "attribute" if name in assigned_on_self(owner) else None
    if inspect.iscoroutinefunction(found):
        return "async method"
    if inspect.isfunction(found):
        return "method"
    return "attribute" if name in assigned_on_self(owner) else None


@pytest.mark.parametrize(
    ("module", "entry"),
    RELYING,
    ids=[f"{m.__name__.rsplit('.', 1)[1]}:{o.__qualname__}.{n}" for m, (o, n, _) in RELYING],
)
def test_every_internal_name_exists_with_its_kind(
    module: ModuleType, entry: tuple[type, str, str]
) -> None:
    owner, name, kind = entry
    found = kind_of(owner, name)
    assert found == kind, (
        f"{owner.__module__}.{owner.__qualname__}.{name} is {found or 'gone'}, not {kind}: "
        f"{module.__name__} needs updating for this uvicorn/websockets release"
    )


@pytest.mark.parametrize("module", [fastwrite, guard], ids=lambda m: m.__name__)
def test_the_list_is_sorted_by_owner_then_name_and_has_no_duplicates(module: ModuleType) -> None:
    entries = [(owner.__qualname__, name) for owner, name, _ in module.RELIES_ON]
    assert len(set(entries)) == len(entries)
    owners = list(dict.fromkeys(owner for owner, _ in entries))
    for owner in owners:
        names = [name for each, name in entries if each == owner]
        assert names == sorted(names), owner


@pytest.mark.parametrize(
    ("module", "ours", "theirs"), OVERRIDES, ids=[ours.__name__ for _, ours, _ in OVERRIDES]
)
def test_every_overridden_method_is_listed(module: ModuleType, ours: type, theirs: type) -> None:
    listed = {name for owner, name, _ in module.RELIES_ON if owner is theirs}
    defined = {
        name
        for cls in ours.__mro__
        if cls.__module__ == module.__name__
        for name in vars(cls)
        if not name.startswith("__") and hasattr(theirs, name)
    }
    assert defined <= listed, f"not in {module.__name__}.RELIES_ON: {sorted(defined - listed)}"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    pass


@pytest.mark.parametrize("cls", [FastHttpToolsProtocol, FastWebSocketsProtocol])
async def test_the_added_state_stays_out_of_the_instance_dict(cls: type) -> None:
    config = uvicorn.Config(app, ws_per_message_deflate=False)
    config.load()
    protocol = cls(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    assert protocol.fast_listener is None
    assert protocol.writer is None
    assert not {"fast_listener", "writer", "receiver"} & set(vars(protocol))


async def test_the_websocket_parser_is_tidings_own() -> None:
    config = uvicorn.Config(app, ws_per_message_deflate=False)
    config.load()
    protocol = FastWebSocketsProtocol(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    assert type(protocol.conn) is fastwrite._ServerProtocol
    assert protocol.receiver is None


def test_the_checker_tells_the_kinds_apart() -> None:
    assert kind_of(WebSocketsSansIOProtocol, "no_such_name") is None
    assert kind_of(WebSocketsSansIOProtocol, "run_asgi") == "async method"
    assert kind_of(WebSocketsSansIOProtocol, "shutdown") == "method"
    assert kind_of(WebSocketsSansIOProtocol, "close_sent") == "attribute"
