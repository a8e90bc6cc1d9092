"""server/proxy.py against an httpx.MockTransport: what it sends, and each kind of answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from starlette.datastructures import Headers

from tests.support.env import TIMEOUT
from tidings.errors import InvalidPublication, ProxyUnavailable, Rejected
from tidings.llm import GenerationRecord
from tidings.server.app import build_hooks, create_app
from tidings.server.auth import ANONYMOUS, Kind, Principal
from tidings.server.errors import http_status
from tidings.server.hooks import ConnectContext, PublishContext, SubscribeContext
from tidings.server.proxy import PROXY_GRACE, Proxy, ProxyHook, describe
from tidings.settings import Settings, SettingsError

BACKEND = "http://backend.test"
HEADERS = Headers(
    raw=[(b"cookie", b"session=s1"), (b"authorization", b"Bearer t"), (b"x-secret", b"no")]
)
ALICE = Principal(Kind.CLIENT, sub="alice")

Handler = Callable[[httpx.Request], Any]


def connect_context() -> ConnectContext:
    return ConnectContext(ALICE, "10.0.0.7", "ws", HEADERS, ("a", "b"))


def subscribe_context() -> SubscribeContext:
    return SubscribeContext(ANONYMOUS, "", "sse", HEADERS, {"plan": "pro"}, "a", "history")


def publish_context(data: Any = None, *, text: bool = False) -> PublishContext:
    data = {"x": 1} if data is None else data
    return PublishContext(ALICE, "10.0.0.7", "http", HEADERS, None, "a", "note", data, text)


@pytest.fixture
async def proxy_of() -> AsyncIterator[Callable[..., Proxy]]:
    made: list[Proxy] = []

    def make(handler: Handler, **options: Any) -> Proxy:
        options.setdefault("forward", ("cookie", "authorization"))
        proxy = Proxy(
            connect_url=f"{BACKEND}/connect",
            subscribe_url=f"{BACKEND}/subscribe",
            publish_url=f"{BACKEND}/publish",
            transport=httpx.MockTransport(handler),
            **options,
        )
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.aclose()


def answer(status: int, body: Any = b"", **headers: str) -> Handler:
    content = body if isinstance(body, bytes) else orjson.dumps(body)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers=headers)

    return handler


# -- what is sent ------------------------------------------------------------------------------


def test_describe_each_action() -> None:
    assert describe(connect_context()) == {
        "transport": "ws",
        "peer": "10.0.0.7",
        "principal": "client",
        "user": "alice",
        "channels": ["a", "b"],
    }
    assert describe(subscribe_context()) == {
        "transport": "sse",
        "peer": "",
        "principal": "anonymous",
        "user": None,
        "info": {"plan": "pro"},
        "channel": "a",
        "action": "history",
    }
    assert describe(publish_context("hi", text=True)) == {
        "transport": "http",
        "peer": "10.0.0.7",
        "principal": "client",
        "user": "alice",
        "info": None,
        "channel": "a",
        "event": "note",
        "data": "hi",
        "text": True,
    }


async def test_a_hook_posts_json_with_only_the_named_headers(
    proxy_of: Callable[..., Proxy],
) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200)

    proxy = proxy_of(handler)
    assert proxy.publish is not None
    assert await proxy.publish(publish_context()) is None
    (request,) = requests
    assert (request.method, str(request.url)) == ("POST", f"{BACKEND}/publish")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["cookie"] == "session=s1"
    assert request.headers["authorization"] == "Bearer t"
    assert "x-secret" not in request.headers
    assert orjson.loads(request.content)["data"] == {"x": 1}


async def test_publish_data_that_is_not_json_is_refused_before_sending(
    proxy_of: Callable[..., Proxy],
) -> None:
    proxy = proxy_of(answer(200))
    assert proxy.publish is not None
    with pytest.raises(InvalidPublication, match="cannot be sent as JSON"):
        await proxy.publish(publish_context(b"\x00binary"))


# -- 2xx allows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "result"),
    [
        ("connect", b"", None),
        ("connect", {"info": {"plan": "pro"}}, {"plan": "pro"}),
        ("subscribe", {"anything": 1}, None),
        ("publish", {}, None),
        ("publish", {"data": None}, None),
        ("publish", {"data": {"clean": True}}, {"clean": True}),
        ("publish", b"  \n", None),
    ],
)
async def test_2xx_allows_with_its_info_or_data(
    proxy_of: Callable[..., Proxy], name: str, body: Any, result: Any
) -> None:
    proxy = proxy_of(answer(200 if body else 204, body))
    hook: ProxyHook | None = getattr(proxy, name)
    assert hook is not None
    context = {
        "connect": connect_context,
        "subscribe": subscribe_context,
        "publish": publish_context,
    }[name]()
    assert await hook(context) == result  # type: ignore[arg-type]


# -- 4xx refuses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (403, {"error": {"code": "banned", "message": "go away"}}, "banned", "go away"),
        (401, {"error": {"code": "login", "message": "sign in"}}, "login", "sign in"),
        (422, {"error": {"code": "has space", "message": "kept"}}, "rejected", "kept"),
        (403, {"error": {"code": "only_code"}}, "only_code", "refused by proxy_publish"),
        (403, b"<html>forbidden</html>", "rejected", "refused by proxy_publish"),
        (429, [1, 2], "rejected", "refused by proxy_publish"),
        (404, b"", "rejected", "refused by proxy_publish"),
    ],
)
async def test_4xx_refuses_with_its_code_message_and_status(
    proxy_of: Callable[..., Proxy], status: int, body: Any, code: str, message: str
) -> None:
    proxy = proxy_of(answer(status, body))
    assert proxy.publish is not None
    with pytest.raises(Rejected) as refused:
        await proxy.publish(publish_context())
    assert (refused.value.code, refused.value.message, refused.value.status) == (
        code,
        message,
        status,
    )
    assert http_status(refused.value) == status


# -- anything else fails closed -------------------------------------------------------------------


def refuse_connection(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (answer(500, {"error": {"code": "x", "message": "y"}}), "it answered 500"),
        (answer(503), "it answered 503"),
        (answer(302, location="http://elsewhere.test/"), "it answered 302"),
        (answer(200, b"not json"), "not a JSON object"),
        (answer(200, [1]), "not a JSON object"),
        (answer(200, b'{"data": 123456789012345678901234567890}'), "not a JSON object"),
        (refuse_connection, "cannot reach it (ConnectError)"),
        (answer(200, b"x" * 2000), "longer than proxy_max_body_bytes (1000)"),
        (answer(200, b"{}", **{"content-length": "5000"}), "longer than proxy_max_body_bytes"),
    ],
)
async def test_anything_else_is_proxy_unavailable_and_logged(
    proxy_of: Callable[..., Proxy],
    caplog: pytest.LogCaptureFixture,
    handler: Handler,
    reason: str,
) -> None:
    proxy = proxy_of(handler, max_body_bytes=1000)
    assert proxy.publish is not None
    with caplog.at_level(logging.WARNING), pytest.raises(ProxyUnavailable) as refused:
        await proxy.publish(publish_context())
    assert reason in refused.value.reason
    assert (refused.value.code, http_status(refused.value)) == ("proxy_unavailable", 503)
    assert "proxy_publish_url" in caplog.text
    assert BACKEND not in caplog.text  # a URL may hold a password


async def test_a_backend_slower_than_proxy_timeout_is_unavailable(
    proxy_of: Callable[..., Proxy],
) -> None:
    released = asyncio.Event()

    async def never(request: httpx.Request) -> httpx.Response:
        try:
            await asyncio.Event().wait()
        finally:
            released.set()
        raise AssertionError("unreachable")

    proxy = proxy_of(never, timeout=0.05)
    assert proxy.subscribe is not None
    assert proxy.subscribe.timeout == 0.05 + PROXY_GRACE
    with pytest.raises(ProxyUnavailable, match=r"no answer within 0\.05 s"):
        await proxy.subscribe(subscribe_context())
    async with asyncio.timeout(TIMEOUT):
        await released.wait()


# -- settings and wiring -------------------------------------------------------------------------


def test_proxy_settings_are_checked_without_echoing_urls() -> None:
    with pytest.raises(SettingsError, match="proxy_publish_url must be an http") as refused:
        Settings(proxy_publish_url="ftp://user:hunter2@backend/")
    assert "hunter2" not in str(refused.value)
    with pytest.raises(SettingsError, match="proxy_connect_url"):
        Settings(proxy_connect_url="http://")
    with pytest.raises(SettingsError, match="proxy_subscribe_url"):
        Settings(proxy_subscribe_url="http://backend:99999/")
    with pytest.raises(SettingsError, match="proxy_timeout must be > 0"):
        Settings(proxy_timeout=0)
    with pytest.raises(SettingsError, match="hook_timeout must be > 0"):
        Settings(hook_timeout=-1)
    with pytest.raises(SettingsError, match="proxy_max_body_bytes must be > 0"):
        Settings(proxy_max_body_bytes=0)
    with pytest.raises(SettingsError, match="entry 2 is not a header name"):
        Settings(proxy_headers="cookie, bad header")
    with pytest.raises(SettingsError, match="content-length describes the request"):
        Settings(proxy_headers="Content-Length")


def test_proxy_header_names_are_lower_case_and_once_each() -> None:
    settings = Settings(proxy_headers=" Cookie,authorization,cookie ,X-Tenant")
    assert settings.proxy_header_names() == ("cookie", "authorization", "x-tenant")


async def test_a_hook_is_a_callable_or_a_proxy_url_never_both() -> None:
    async def mine(context: PublishContext) -> None:
        return None

    settings = Settings(proxy_publish_url=f"{BACKEND}/publish", hook_timeout=1.5)
    with pytest.raises(SettingsError, match="on_publish is given both"):
        build_hooks(settings, on_publish=mine)
    hooks, proxy = build_hooks(settings, on_connect=mine)  # type: ignore[arg-type]
    assert proxy is not None
    try:
        assert (hooks.on_connect, hooks.on_publish, hooks.timeout) == (mine, proxy.publish, 1.5)
        assert hooks.on_subscribe is None
    finally:
        await proxy.aclose()
    hooks, proxy = build_hooks(Settings())
    assert proxy is None
    assert not hooks


def test_create_app_puts_the_hooks_on_the_one_authority() -> None:
    async def mine(context: SubscribeContext) -> None:
        return None

    app = create_app(settings=Settings(hook_timeout=2.0), on_subscribe=mine)
    hooks = app.state.tidings.authority.hooks
    assert (hooks.on_subscribe, hooks.timeout) == (mine, 2.0)
    assert create_app().state.tidings.authority.hooks is None


# -- proxy_complete_url ----------------------------------------------------------------------


def a_record() -> GenerationRecord:
    return GenerationRecord(
        id="chatcmpl-1", model="m", provider="p", created=1, status="completed", text="hi"
    )


async def test_the_complete_hook_posts_the_record(proxy_of: Callable[..., Proxy]) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    proxy = Proxy(complete_url=f"{BACKEND}/complete", transport=httpx.MockTransport(handler))
    try:
        assert proxy.complete is not None
        assert proxy.connect is None
        assert await proxy.complete(a_record()) is None
    finally:
        await proxy.aclose()
    [request] = sent
    assert request.url == f"{BACKEND}/complete"
    assert request.headers["content-type"] == "application/json"
    assert "cookie" not in request.headers
    assert orjson.loads(request.content) == a_record().to_json()


@pytest.mark.parametrize("status", [302, 400, 500])
async def test_a_complete_hook_not_answered_2xx_is_logged(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = Proxy(complete_url=f"{BACKEND}/complete", transport=httpx.MockTransport(answer(status)))
    try:
        assert proxy.complete is not None
        with (
            caplog.at_level(logging.WARNING, logger="tidings.server.proxy"),
            pytest.raises(ProxyUnavailable),
        ):
            await proxy.complete(a_record())
    finally:
        await proxy.aclose()
    assert f"proxy_complete_url: it answered {status}; the record was not delivered" in caplog.text
    assert BACKEND not in caplog.text


async def test_a_complete_hook_given_twice_is_refused() -> None:
    async def hook(record: GenerationRecord) -> None:
        pass

    settings = Settings(proxy_complete_url=f"{BACKEND}/complete")
    with pytest.raises(SettingsError, match="on_complete is given both"):
        build_hooks(settings, on_complete=hook)
    hooks, proxy = build_hooks(settings)
    assert proxy is not None
    try:
        assert hooks.on_complete is proxy.complete
    finally:
        await proxy.aclose()
