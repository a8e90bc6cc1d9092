"""Every answer is bounded: history, presence and channel listings, paged under max_reply_bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tidings.errors import InvalidCursor, ProtocolError
from tidings.hub import ClientInfo, Hub
from tidings.server import create_app, ops
from tidings.server.ops import Caller
from tidings.settings import Settings
from tidings.types import Position
from tidings.wire import protocol
from tidings.wire.protocol import Format

REPLY = 8 * 1024


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub() as hub:
        yield hub


@pytest.fixture
async def client(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(hub, Settings(max_reply_bytes=REPLY))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
        yield client


def encoded_size(document: object) -> int:
    return len(protocol.encode_message(document, Format.JSON))


async def test_history_stops_at_the_byte_cap_and_says_where_to_go_on(hub: Hub) -> None:
    for number in range(40):
        await hub.publish("h", text=f"{number:04d}" + "x" * 996)
    caller = Caller.open(hub)
    seen: list[int] = []
    command = protocol.History(None, "h", Position((await hub.position("h")).epoch, 0), 10000)
    pages = 0
    while True:
        result = await ops.history(caller, command, max_reply_bytes=REPLY)
        assert encoded_size(result) <= REPLY + 1024
        seen += [event["offset"] for event in result["events"]]
        pages += 1
        if not result["more"]:
            break
        following = Position(result["next"]["epoch"], result["next"]["offset"])
        command = protocol.History(None, "h", following, 10000)
    assert seen == list(range(1, 41))  # every event exactly once
    assert pages > 1
    assert result["next"]["offset"] == 40


async def test_history_without_since_pages_forward_from_the_newest_window(hub: Hub) -> None:
    for _ in range(30):
        position = await hub.publish("w", text="x" * 1000)
    caller = Caller.open(hub)
    first = await ops.history(caller, protocol.History(None, "w", None, 20), max_reply_bytes=REPLY)
    offsets = [event["offset"] for event in first["events"]]
    assert offsets[0] == 11
    assert first["more"] is True
    assert first["next"] == {"epoch": position.epoch, "offset": offsets[-1]}
    rest = await ops.history(
        caller,
        protocol.History(None, "w", Position(position.epoch, offsets[-1]), 100),
        max_reply_bytes=REPLY,
    )
    following = [e["offset"] for e in rest["events"]]
    assert following == list(range(offsets[-1] + 1, following[-1] + 1))
    assert rest["more"] is (following[-1] < 30)


async def test_history_limit_says_more_when_events_follow(hub: Hub) -> None:
    for number in range(5):
        position = await hub.publish("l", number)
    caller = Caller.open(hub)
    since = Position(position.epoch, 0)
    result = await ops.history(caller, protocol.History(None, "l", since, 2))
    assert [e["offset"] for e in result["events"]] == [1, 2]
    assert (result["next"], result["more"]) == ({"epoch": position.epoch, "offset": 2}, True)
    empty = await ops.history(caller, protocol.History(None, "l", position, 2))
    assert (empty["next"]["offset"], empty["more"]) == (5, False)
    reset = await ops.history(caller, protocol.History(None, "l", Position("other", 1), 2))
    assert reset["reset"]["reason"] == "epoch"
    assert (reset["next"]["offset"], reset["more"]) == (5, False)


async def test_one_event_larger_than_the_cap_still_comes_alone(hub: Hub) -> None:
    position = await hub.publish("one", text="x" * 3000)
    await hub.publish("one", text="x" * 3000)
    result = await ops.history(
        Caller.open(hub),
        protocol.History(None, "one", Position(position.epoch, 0), 10),
        max_reply_bytes=1024,
    )
    assert len(result["events"]) == 1
    assert result["more"] is True


async def test_presence_pages_walk_every_client_once(hub: Hub) -> None:
    info = {"bio": "y" * 900}
    async with AsyncExitStack() as stack:
        for number in range(30):
            member = hub.subscription(client=ClientInfo(f"c{number:02d}", None, info))
            stack.callback(member.close)
            await member.add("room")
        caller = Caller.open(hub)
        seen: list[str] = []
        cursor = None
        while True:
            result = await ops.presence(
                caller, protocol.Presence(None, "room", cursor, 7), max_reply_bytes=REPLY
            )
            assert len(result["clients"]) <= 7
            assert encoded_size(result) <= REPLY + 1024
            seen += [client["client"] for client in result["clients"]]
            cursor = result["next"]
            if cursor is None:
                break
        assert seen == sorted(f"c{number:02d}" for number in range(30))


async def test_presence_pages_are_cut_by_bytes_too(hub: Hub) -> None:
    async with AsyncExitStack() as stack:
        for number in range(20):
            member = hub.subscription(client=ClientInfo(f"c{number:02d}", None, "z" * 1000))
            stack.callback(member.close)
            await member.add("big")
        result = await ops.presence(
            Caller.open(hub), protocol.Presence(None, "big"), max_reply_bytes=REPLY
        )
        assert 1 < len(result["clients"]) < 20
        assert result["next"] is not None


async def test_channel_pages_walk_every_channel_once(hub: Hub) -> None:
    names = [f"ch:{number:03d}" for number in range(120)]
    for name in names:
        await hub.publish(name, 1)
    caller = Caller.open(hub)
    seen: list[str] = []
    cursor = None
    while True:
        result = await ops.channels(caller, cursor=cursor, limit=50, max_reply_bytes=2048)
        assert encoded_size(result) <= 2048 + 1024
        seen += [channel["channel"] for channel in result["channels"]]
        cursor = result["next"]
        if cursor is None:
            break
    assert seen == names


async def test_presence_info_too_large_is_refused(hub: Hub) -> None:
    command = protocol.Connect(1, {"bio": "x" * 2000})
    with pytest.raises(ProtocolError) as caught:
        ops.client_info("c", None, command, max_info_bytes=1024)
    assert caught.value.code == "too_large"
    info = ops.client_info("c", "u", protocol.Connect(1, {"bio": "ok"}), max_info_bytes=1024)
    assert info == ClientInfo("c", "u", {"bio": "ok"})


async def test_one_client_payload_is_shared_by_all_its_channels(hub: Hub) -> None:
    member = hub.subscription(client=ClientInfo("c1", None, {"bio": "x" * 500}))
    try:
        for number in range(5):
            await member.add(f"room:{number}")
        payloads = [await hub.backend.presence(f"room:{n}") for n in range(5)]
        first = payloads[0]["c1"]
        assert all(entries["c1"] is first for entries in payloads)
    finally:
        member.close()


async def test_http_listings_take_cursor_and_limit(client: httpx.AsyncClient, hub: Hub) -> None:
    for number in range(5):
        await hub.publish(f"api:{number}", 1)
    response = await client.get("/api/channels", params={"limit": 2})
    body = response.json()
    assert [c["channel"] for c in body["channels"]] == ["api:0", "api:1"]
    body = (await client.get("/api/channels", params={"cursor": body["next"]})).json()
    assert [c["channel"] for c in body["channels"]] == ["api:2", "api:3", "api:4"]
    assert body["next"] is None
    for params in ({"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"cursor": "a b"}):
        response = await client.get("/api/channels", params=params)
        assert response.status_code == 400, params
        response = await client.get("/api/presence/room", params=params)
        assert response.status_code == 400, params
    response = await client.get("/api/channels", params={"cursor": "a b"})
    assert response.json()["error"]["code"] == "invalid_cursor"


async def test_http_history_says_next_and_more(client: httpx.AsyncClient, hub: Hub) -> None:
    for _ in range(20):
        position = await hub.publish("hh", text="x" * 1000)
    body = (await client.get("/api/history/hh", params={"since": f"{position.epoch}:0"})).json()
    assert body["more"] is True
    following = body["next"]
    body = (
        await client.get(
            "/api/history/hh", params={"since": f"{following['epoch']}:{following['offset']}"}
        )
    ).json()
    assert body["events"][0]["offset"] == following["offset"] + 1


def test_presence_command_parses_cursor_and_limit() -> None:
    command = protocol.parse_command(
        {"op": "presence", "channel": "c", "cursor": "abc", "limit": 5}
    )
    assert command == protocol.Presence(None, "c", "abc", 5)
    for bad in ({"limit": 0}, {"limit": 1001}, {"limit": True}, {"cursor": 3}):
        with pytest.raises(ProtocolError):
            protocol.parse_command({"op": "presence", "channel": "c", **bad})
    with pytest.raises(InvalidCursor):
        protocol.parse_command({"op": "presence", "channel": "c", "cursor": "x" * 300})


def test_settings_refuse_bad_memory_bounds() -> None:
    from tidings.settings import SettingsError

    for bad in (
        {"history_max_bytes": -1},
        {"history_total_bytes": 0},
        {"max_reply_bytes": 10},
        {"presence_info_max_bytes": 0},
    ):
        with pytest.raises(SettingsError):
            Settings(**bad)  # type: ignore[arg-type]
    namespaces = Settings(
        history_max_bytes=1000, namespaces={"n": {"history_max_bytes": 5}}
    ).namespace_options()
    assert namespaces.options("x").history_max_bytes == 1000
    assert namespaces.options("n:x").history_max_bytes == 5
    with pytest.raises(SettingsError):
        Settings(namespaces={"n": {"history_max_bytes": -5}})


text = st.text(max_size=300)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(since=text, cursor=text, limit=st.one_of(text, st.integers(-5, 20000).map(str)))
# Digits int() refuses or reads differently from ASCII: "²" was once a 500.
@example(since="n:e:²", cursor="²", limit="²")
@example(since="n:e:٣", cursor="٣", limit="٣")
async def test_arbitrary_cursors_get_a_clear_400_never_a_500(
    client: httpx.AsyncClient, since: str, cursor: str, limit: str
) -> None:
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/api/history/fz", {"since": since}),
        ("/api/history/fz", {"limit": limit}),
        ("/api/channels", {"cursor": cursor}),
        ("/api/channels", {"limit": limit}),
        ("/api/presence/fz", {"cursor": cursor, "limit": limit}),
    ]
    for path, params in requests:
        response = await client.get(path, params=params)
        assert response.status_code in (200, 400), (path, params, response.text)
        if response.status_code == 400:
            assert orjson.loads(response.content)["error"]["code"] in (
                "bad_request",
                "invalid_cursor",
            )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    op=st.sampled_from(["history", "presence", "subscribe"]),
    document=st.dictionaries(st.sampled_from(["since", "cursor", "limit"]), json_values),
)
def test_arbitrary_command_cursors_are_refused_cleanly(op: str, document: dict[str, Any]) -> None:
    """A WebSocket command's since / cursor / limit: a clear error or a command, nothing else."""
    error: ProtocolError | None = None
    try:
        protocol.parse_command({"op": op, "channel": "c", **document})
    except ProtocolError as exc:
        error = exc
    assert error is None or error.code in ("bad_request", "invalid_cursor")
