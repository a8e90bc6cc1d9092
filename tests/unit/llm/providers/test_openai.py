"""llm/providers/openai.py over httpx.MockTransport: parsing, errors, the request sent."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest

from tidings.errors import UpstreamError, UpstreamTimeout
from tidings.llm.chunks import Delta
from tidings.llm.providers.base import display_url
from tidings.llm.providers.openai import OpenAIProvider, parse_chunk
from tidings.llm.request import validate_request

REQUEST = validate_request(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "seed": 7}
)


def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    document = {"id": "x", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(document) + b"\n\n"


def provider_for(
    handler: Callable[[httpx.Request], httpx.Response], **options: object
) -> OpenAIProvider:
    return OpenAIProvider(
        "http://upstream/v1/",
        api_key="k",
        transport=httpx.MockTransport(handler),
        **options,  # type: ignore[arg-type]
    )


async def collect(provider: OpenAIProvider) -> list[Delta]:
    try:
        return [delta async for delta in provider.stream(REQUEST)]
    finally:
        await provider.aclose()


class Split(httpx.AsyncByteStream):
    """A body delivered in pieces of ``size`` bytes, to exercise the incremental decoder."""

    def __init__(self, body: bytes, size: int) -> None:
        self.body = body
        self.size = size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.size):
            yield self.body[start : start + self.size]


@pytest.mark.parametrize("size", [1, 7, 10_000])
async def test_streams_deltas_in_any_split(size: int) -> None:
    seen: list[httpx.Request] = []
    body = (
        b": comment\n\n"
        + chunk({"role": "assistant", "content": ""})
        + chunk({"content": "Hé"})
        + chunk({"content": "llo", "reasoning_content": "r"})
        + chunk({}, "stop")
        + b'data: {"id":"x","choices":[],"usage":{"total_tokens":4}}\n\n'
        + b"data: [DONE]\n\n"
    )

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, stream=Split(body, size))

    deltas = await collect(provider_for(handler))
    assert [delta.content for delta in deltas] == ["", "Hé", "llo", None, None]
    assert deltas[2].extra == {"reasoning_content": "r"}
    assert deltas[3].finish_reason == "stop"
    assert deltas[4].usage == {"total_tokens": 4}
    (request,) = seen
    assert str(request.url) == "http://upstream/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer k"
    assert request.headers["accept-encoding"] == "identity"  # nothing held by a compressor
    sent = orjson.loads(request.content)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["seed"] == 7


async def test_a_compressed_stream_is_decoded() -> None:
    # Asked for by the configured headers (or sent anyway by a proxy).
    body = chunk({"content": "Hé"}) + chunk({}, "stop") + b"data: [DONE]\n\n"
    compressed = gzip.compress(body)
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers["accept-encoding"])
        return httpx.Response(
            200, headers={"content-encoding": "gzip"}, stream=Split(compressed, 5)
        )

    deltas = await collect(provider_for(handler, headers={"Accept-Encoding": "gzip"}))
    assert asked == ["gzip"]
    assert [(delta.content, delta.finish_reason) for delta in deltas] == [
        ("Hé", None),
        (None, "stop"),
    ]


async def test_model_override() -> None:
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(orjson.loads(request.content))
        return httpx.Response(200, content=chunk({}, "stop") + b"data: [DONE]\n\n")

    await collect(provider_for(handler, model="served-name"))
    assert bodies[0]["model"] == "served-name"


async def test_an_error_status_becomes_upstream_error_with_a_summary() -> None:
    # The message is what clients see: status, type and code, never the upstream's text.
    def handler(request: httpx.Request) -> httpx.Response:
        error = {"message": "slow down", "type": "rate_limit_error", "code": "rpm"}
        return httpx.Response(429, json={"error": error})

    with pytest.raises(UpstreamError) as caught:
        await collect(provider_for(handler))
    assert str(caught.value) == "upstream answered 429 (type: rate_limit_error, code: rpm)"
    assert caught.value.status == 429
    assert "slow down" in caught.value.body  # kept for the caller, never sent on


async def test_an_upstream_echoing_the_key_is_summarised_without_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        echoed = request.headers["authorization"]
        error = {"message": f"bad key: {echoed}", "type": "auth", "code": echoed.split()[1]}
        return httpx.Response(401, json={"error": error})

    provider = OpenAIProvider(
        "http://upstream/v1",
        api_key="sk-secret-key-123",
        headers={"x-gateway-token": "gw-secret-456"},
        transport=httpx.MockTransport(handler),
    )
    with pytest.raises(UpstreamError) as caught:
        await collect(provider)
    assert str(caught.value) == "upstream answered 401"
    assert "secret" not in repr(caught.value.args)


async def test_urls_in_messages_have_no_credentials() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    provider = OpenAIProvider(
        "http://alice:pa55word@upstream/v1?api-key=qsecret", transport=httpx.MockTransport(refused)
    )
    assert provider.display_url == "http://***@upstream/v1?***"
    with pytest.raises(UpstreamError) as caught:
        await collect(provider)
    message = str(caught.value)
    assert message.startswith("upstream http://***@upstream/v1")
    assert "pa55word" not in message
    assert "alice" not in message
    assert "qsecret" not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("http://u:p@127.0.0.1:8080/v1", "http://***@127.0.0.1:8080/v1"),
        ("http://u@[::1]/v1?key=1#frag", "http://***@[::1]/v1?***"),
        ("http://[bad", "<unparsable URL>"),
    ],
)
def test_display_url(url: str, shown: str) -> None:
    assert display_url(url) == shown


async def test_an_error_mid_stream() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = chunk({"content": "a"}) + b'data: {"error": {"message": "overloaded"}}\n\n'
        return httpx.Response(200, content=body)

    provider = provider_for(handler)
    received = []
    with pytest.raises(UpstreamError, match="failed mid-stream") as caught:
        async for delta in provider.stream(REQUEST):
            received.append(delta.content)
    await provider.aclose()
    assert received == ["a"]
    assert "overloaded" not in str(caught.value)
    assert "overloaded" in caught.value.body


async def test_a_stream_that_ends_unfinished_is_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunk({"content": "a"}))

    with pytest.raises(UpstreamError, match="before the answer was finished"):
        await collect(provider_for(handler))


async def test_a_finished_stream_without_done_is_accepted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunk({"content": "a"}) + chunk({}, "stop"))

    deltas = await collect(provider_for(handler))
    assert deltas[-1].finish_reason == "stop"


async def test_timeouts_and_connection_errors_are_translated() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(UpstreamTimeout) as caught:
        await collect(provider_for(timeout))
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    with pytest.raises(UpstreamError, match="ConnectError"):
        await collect(provider_for(refused))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not json", "not JSON"),
        ("[1]", "not an object"),
        ('{"choices": 1}', "not a list"),
        ('{"choices": [1]}', "choice that is not an object"),
        ('{"choices": [{"delta": 2}]}', "delta that is not an object"),
    ],
)
def test_parse_chunk_refuses_what_is_not_a_chunk(data: str, message: str) -> None:
    with pytest.raises(UpstreamError, match=message):
        parse_chunk(data)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"delta": {"content": "a"}}, Delta(content="a")),
        ({"index": 1, "delta": {"content": ""}, "finish_reason": None}, Delta(content="", index=1)),
        ({"index": "x", "delta": {"content": "b"}, "finish_reason": ""}, Delta(content="b")),
        (
            {"delta": {"content": "c"}, "finish_reason": "length"},
            Delta("c", finish_reason="length"),
        ),
        ({"delta": {"content": 3}}, Delta()),  # not text: dropped, as with other fields
    ],
)
def test_parse_chunk_of_a_content_only_delta(choice: dict[str, object], expected: Delta) -> None:
    (delta,) = parse_chunk(orjson.dumps({"choices": [choice]}).decode())
    assert delta == expected
    assert dict(delta.extra) == {}


def test_parse_chunk_passes_tool_calls_through() -> None:
    call = {"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}
    document = {"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}
    (delta,) = parse_chunk(orjson.dumps(document).decode())
    assert delta.tool_calls == (call,)
    assert delta.is_token


async def test_models_lists_the_upstream_ids() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == "http://upstream/v1/models"
        return httpx.Response(200, json={"object": "list", "data": [{"id": "a"}, {"id": "b"}]})

    provider = provider_for(handler)
    try:
        assert await provider.models() == ["a", "b"]
    finally:
        await provider.aclose()


@pytest.mark.parametrize(
    "response",
    [httpx.Response(404, json={"error": {"message": "no"}}), httpx.Response(200, json=[1])],
)
async def test_models_failures_are_upstream_errors(response: httpx.Response) -> None:
    provider = provider_for(lambda request: response)
    try:
        with pytest.raises(UpstreamError):
            await provider.models()
    finally:
        await provider.aclose()
