"""server/hooks.py and its place in ops.py: after authorize(), refuse, rewrite, fail safe."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.support.env import TIMEOUT
from tidings.errors import (
    HookFailed,
    PermissionDenied,
    ProxyUnavailable,
    RateLimited,
    Rejected,
)
from tidings.hub import Hub
from tidings.server import ops
from tidings.server.auth import Authority, Kind, Principal
from tidings.server.errors import close_code, error_response, http_status
from tidings.server.hooks import (
    ConnectContext,
    Hooks,
    PublishContext,
    SubscribeContext,
)
from tidings.server.ops import Caller
from tidings.server.rates import PublishGate, PublishRates
from tidings.wire import protocol
from tidings.wire.codes import CloseCode

ALICE = Principal(Kind.CLIENT, sub="alice")
HEADERS = [(b"cookie", b"session=s1"), (b"x-other", b"1")]


class Recorder:
    """Hooks that record every context and answer as told."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.info: Any = None
        self.replacement: Any = None
        self.refuse: set[str] = set()

    async def on_connect(self, context: ConnectContext) -> Any:
        self.seen.append(context)
        return self.info

    async def on_subscribe(self, context: SubscribeContext) -> None:
        self.seen.append(context)
        if context.channel in self.refuse:
            raise Rejected("not_yours", f"{context.channel} is not yours", status=403)

    async def on_publish(self, context: PublishContext) -> Any:
        self.seen.append(context)
        if context.channel in self.refuse:
            raise Rejected("moderated", "say it nicer", status=422)
        return self.replacement

    def hooks(self, **options: Any) -> Hooks:
        return Hooks(self.on_connect, self.on_subscribe, self.on_publish, **options)


def caller_of(hub: Hub, hooks: Hooks, **fields: Any) -> Caller:
    authority = Authority(hub.namespaces, hooks=hooks)
    return Caller(hub, authority, ALICE, "10.0.0.7", headers=HEADERS, **fields)


def publish(channel: str, data: Any = None, *, text: str | None = None) -> protocol.Publish:
    return protocol.Publish(None, channel, data, text)


async def history(hub: Hub, channel: str) -> list[tuple[bytes, bool]]:
    result = await hub.history(channel, since=None, limit=10)
    return [(event.raw, event.is_text) for event in result.events]


# -- the runner ---------------------------------------------------------------------------


async def test_hooks_without_callables_are_false_and_ask_nothing() -> None:
    assert not Hooks()
    assert Hooks(on_publish=Recorder().on_publish)
    assert Authority(Hub().namespaces, hooks=Hooks()).hooks is None


def test_hooks_refuse_a_bad_timeout_or_a_value_that_is_not_callable() -> None:
    with pytest.raises(ValueError, match="timeout must be > 0"):
        Hooks(timeout=0)
    with pytest.raises(TypeError, match="on_publish must be an async callable"):
        Hooks(on_publish="https://example.com")  # type: ignore[arg-type]


async def test_a_hook_that_raises_is_a_logged_500(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(context: PublishContext) -> Any:
        raise KeyError("user")

    caller = caller_of(hub, Hooks(on_publish=broken))
    with caplog.at_level(logging.ERROR), pytest.raises(HookFailed) as refused:
        await ops.publish(caller, publish("a", 1))
    assert (refused.value.code, refused.value.hook, http_status(refused.value)) == (
        "hook_failed",
        "on_publish",
        500,
    )
    assert "KeyError" in caplog.text
    assert "alice" in caplog.text  # who, for the operator
    assert await history(hub, "a") == []


async def test_a_slow_hook_is_cancelled_at_its_timeout(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    cancelled = asyncio.Event()

    async def stuck(context: SubscribeContext) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    caller = caller_of(hub, Hooks(on_subscribe=stuck, timeout=0.05))
    with caplog.at_level(logging.WARNING), pytest.raises(HookFailed, match=r"within 0\.05 s"):
        await ops.history(caller, protocol.History(None, "a"))
    assert cancelled.is_set()
    assert "on_subscribe hook did not answer within 0.05 s" in caplog.text


async def test_a_hook_object_with_a_timeout_of_its_own_gets_it(hub: Hub) -> None:
    class Patient:
        timeout = TIMEOUT

        async def __call__(self, context: PublishContext) -> Any:
            await asyncio.sleep(0.05)  # the hook's own work: past Hooks.timeout, within its own
            return "late but fine"

    caller = caller_of(hub, Hooks(on_publish=Patient(), timeout=0.01))
    await ops.publish(caller, publish("a", 1))
    assert await history(hub, "a") == [(b'"late but fine"', False)]


async def test_a_tidings_error_from_a_hook_passes_as_it_is(hub: Hub) -> None:
    async def down(context: ConnectContext) -> Any:
        raise ProxyUnavailable("connect", "it answered 502")

    with pytest.raises(ProxyUnavailable) as refused:
        await ops.connect(caller_of(hub, Hooks(on_connect=down), transport="sse"), ["a"])
    assert (http_status(refused.value), refused.value.retry_after) == (503, 1.0)
    assert close_code(refused.value) == CloseCode.TRY_AGAIN_LATER


# -- Rejected ----------------------------------------------------------------------------------


def test_rejected_carries_its_code_message_and_status() -> None:
    refused = Rejected("login_required", "sign in first", status=401)
    assert (refused.code, refused.message) == ("login_required", "sign in first")
    assert refused.status == 401
    response = error_response(refused)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.body == b'{"error":{"code":"login_required","message":"sign in first"}}'
    assert http_status(Rejected("rate_limited", "slow down", status=403)) == 403
    assert close_code(Rejected()) == CloseCode.FORBIDDEN
    assert str(Rejected()) == "refused"


@pytest.mark.parametrize(
    ("code", "status"),
    [("", 403), ("has space", 403), ("x" * 65, 403), ("ok", 200), ("ok", 500), ("ok", True)],
)
def test_rejected_refuses_a_code_or_status_it_cannot_pass_on(code: str, status: int) -> None:
    with pytest.raises(ValueError, match=r"a Rejected (code|status) must be"):
        Rejected(code, "m", status=status)


def test_a_long_rejected_message_is_cut() -> None:
    assert len(Rejected("c", "x" * 5000).message) == 512


# -- connect ----------------------------------------------------------------------------------


async def test_connect_tells_who_where_and_which_channels_then_asks_for_each(hub: Hub) -> None:
    recorder = Recorder()
    recorder.info = {"plan": "pro"}
    caller = caller_of(hub, recorder.hooks(), transport="ws")
    connected = await ops.connect(caller, ["a", "b"])
    assert connected.info == {"plan": "pro"}
    connect, *subscribes = recorder.seen
    assert connect.principal is ALICE
    assert (connect.peer, connect.transport, connect.channels) == ("10.0.0.7", "ws", ("a", "b"))
    assert connect.headers["cookie"] == "session=s1"
    assert [(s.channel, s.action, s.info) for s in subscribes] == [
        ("a", "subscribe", {"plan": "pro"}),
        ("b", "subscribe", {"plan": "pro"}),
    ]


async def test_connect_without_hooks_is_the_caller_as_it_was(hub: Hub) -> None:
    caller = Caller(hub, Authority(hub.namespaces), ALICE)
    assert await ops.connect(caller, ["a"]) is caller


async def test_connect_refused_for_one_channel_refuses_the_connection(hub: Hub) -> None:
    recorder = Recorder()
    recorder.refuse = {"b"}
    with pytest.raises(Rejected, match="b is not yours"):
        await ops.connect(caller_of(hub, recorder.hooks(), transport="sse"), ["a", "b"])


async def test_connect_info_that_is_not_json_is_a_logged_500(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    recorder.info = {"when": object()}
    with caplog.at_level(logging.ERROR), pytest.raises(HookFailed, match="not JSON"):
        await ops.connect(caller_of(hub, recorder.hooks(), transport="ws"), ["a"])
    assert "on_connect hook returned info" in caplog.text


# -- reads ------------------------------------------------------------------------------------


async def test_every_read_of_a_channel_asks_on_subscribe(hub: Hub) -> None:
    recorder = Recorder()
    caller = caller_of(hub, recorder.hooks())
    subscription = hub.subscription()
    try:
        await ops.subscribe(caller, subscription, protocol.Subscribe(None, "a"), max_channels=4)
    finally:
        subscription.close()
    await ops.history(caller, protocol.History(None, "a"))
    await ops.presence(caller, protocol.Presence(None, "a"))
    assert [(c.channel, c.action, c.transport) for c in recorder.seen] == [
        ("a", "subscribe", "http"),
        ("a", "history", "http"),
        ("a", "presence", "http"),
    ]


async def test_a_refused_read_reads_nothing(hub: Hub) -> None:
    recorder = Recorder()
    recorder.refuse = {"secret"}
    caller = caller_of(hub, recorder.hooks())
    subscription = hub.subscription()
    try:
        with pytest.raises(Rejected):
            await ops.subscribe(
                caller, subscription, protocol.Subscribe(None, "secret"), max_channels=4
            )
        assert not subscription.channels
    finally:
        subscription.close()
    with pytest.raises(Rejected):
        await ops.history(caller, protocol.History(None, "secret"))


async def test_hooks_run_only_after_authorize_allowed(hub: Hub) -> None:
    recorder = Recorder()
    caller = caller_of(hub, recorder.hooks())
    with pytest.raises(PermissionDenied):
        await ops.history(caller, protocol.History(None, "hidden:x"))
    with pytest.raises(PermissionDenied):
        await ops.publish(caller, publish("ro:x", 1))
    assert recorder.seen == []


# -- publish ----------------------------------------------------------------------------------


async def test_publish_tells_the_hook_everything(hub: Hub) -> None:
    recorder = Recorder()
    caller = caller_of(hub, recorder.hooks(), transport="ws", info={"n": 1})
    await ops.publish(caller, protocol.Publish(None, "a", {"x": 1}, None, "note"))
    (context,) = recorder.seen
    assert (context.channel, context.event, context.data, context.text) == (
        "a",
        "note",
        {"x": 1},
        False,
    )
    assert (context.transport, context.info, context.peer) == ("ws", {"n": 1}, "10.0.0.7")


@pytest.mark.parametrize(
    ("command", "replacement", "stored"),
    [
        (publish("a", {"x": 1}), None, [(b'{"x":1}', False)]),
        (publish("a", {"x": 1}), {"x": 2}, [(b'{"x":2}', False)]),
        (publish("a", "hi"), "HI", [(b'"HI"', False)]),
        (publish("a", text="hi"), "HI", [(b"HI", True)]),
        (publish("a", text="hi"), {"said": "hi"}, [(b'{"said":"hi"}', False)]),
        (publish("a", {"x": 1}), 0, [(b"0", False)]),
    ],
)
async def test_on_publish_keeps_or_replaces_the_data(
    hub: Hub, command: protocol.Publish, replacement: Any, stored: list[tuple[bytes, bool]]
) -> None:
    recorder = Recorder()
    recorder.replacement = replacement
    result = await ops.publish(caller_of(hub, recorder.hooks()), command)
    assert result["offset"] == 1
    assert await history(hub, "a") == stored
    (context,) = recorder.seen
    assert context.text is (command.text is not None)
    assert context.data == (command.text if command.text is not None else command.data)


async def test_a_refused_publish_publishes_nothing(hub: Hub) -> None:
    recorder = Recorder()
    recorder.refuse = {"a"}
    with pytest.raises(Rejected) as refused:
        await ops.publish(caller_of(hub, recorder.hooks()), publish("a", 1))
    assert (refused.value.code, http_status(refused.value)) == ("moderated", 422)
    assert await history(hub, "a") == []


async def test_a_replacement_that_is_not_json_is_a_logged_500(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    recorder.replacement = {1, 2}
    with caplog.at_level(logging.ERROR), pytest.raises(HookFailed, match="not JSON-serialisable"):
        await ops.publish(caller_of(hub, recorder.hooks()), publish("a", 1))
    assert await history(hub, "a") == []


async def test_a_rate_limit_refuses_before_the_hook_is_asked(hub: Hub) -> None:
    recorder = Recorder()
    gate = PublishGate(PublishRates(connection=1.0, burst=1.0))
    caller = caller_of(hub, recorder.hooks(), gate=gate, bucket=gate.connection_bucket())
    await ops.publish(caller, publish("a", 1))
    with pytest.raises(RateLimited):
        await ops.publish(caller, publish("a", 2))
    assert len(recorder.seen) == 1


async def test_the_gate_is_settled_when_the_hook_refuses(hub: Hub) -> None:
    recorder = Recorder()
    recorder.refuse = {"a"}
    gate = PublishGate()
    caller = caller_of(hub, recorder.hooks(), gate=gate)
    with pytest.raises(Rejected):
        await ops.publish(caller, publish("a", 1))
    # Nothing is left admitted: a drain does not wait for the refused publish.
    async with asyncio.timeout(TIMEOUT):
        await gate.drain(wait=TIMEOUT * 10)
