"""OpenAIProvider: any OpenAI-compatible upstream over httpx streaming.

OpenAI, vLLM, Ollama, llama.cpp's server, LM Studio and others all speak
``POST {base_url}/chat/completions`` with ``stream: true``. The response is
read with httpx (uncompressed: ``accept-encoding: identity`` unless ``headers``
say otherwise) and parsed with Tidings' own :class:`~tidings.wire.sse.SSEDecoder`;
no SDK is needed. httpx errors are translated once, to
:class:`~tidings.errors.UpstreamError` and :class:`~tidings.errors.UpstreamTimeout`,
by ``providers.upstream``, which the Anthropic provider shares.
Closing the iterator (a cancelled generation) leaves the ``async with`` of the
request, which closes the upstream connection at once: the upstream sees the
client go and stops generating.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping
from types import MappingProxyType
from typing import Any

import httpx
import orjson

from tidings.errors import UpstreamError
from tidings.llm.chunks import Delta
from tidings.llm.providers.base import display_url
from tidings.llm.providers.upstream import (
    MAX_EVENT_BYTES,
    error_kind,
    http_client,
    map_httpx_errors,
    secrets_of,
    summarize,
)
from tidings.llm.request import ChatRequest
from tidings.wire.sse import SSEDecoder

__all__ = ["OpenAIProvider", "parse_chunk"]

logger = logging.getLogger(__name__)

_KNOWN_DELTA_FIELDS = frozenset({"role", "content", "tool_calls"})
#: The ``extra`` of a delta that has none (shared: deltas are never changed).
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


def parse_chunk(data: str) -> list[Delta]:
    """Turn one upstream ``chat.completion.chunk`` (JSON text) into deltas.

    Raises:
        UpstreamError: the data is not a chunk, or it is an error object
            (an upstream failing mid-stream sends ``{"error": {...}}``).
    """
    # Messages say what was wrong, never what the upstream sent (see providers.upstream).
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("upstream sent a chunk that is not JSON") from exc
    if not isinstance(chunk, dict):
        raise UpstreamError("upstream sent a chunk that is not an object")
    if chunk.get("error") is not None:
        raise UpstreamError(
            "upstream failed mid-stream" + error_kind(chunk["error"]), body=data[:4096]
        )
    choices = chunk.get("choices") or []
    if not isinstance(choices, list):
        raise UpstreamError("upstream sent a chunk whose choices is not a list")
    deltas = [_choice_delta(choice) for choice in choices]
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        deltas.append(Delta(usage=usage))
    return deltas


def _choice_delta(choice: object) -> Delta:
    if not isinstance(choice, dict):
        raise UpstreamError("upstream sent a choice that is not an object")
    delta = choice.get("delta") or {}
    if not isinstance(delta, dict):
        raise UpstreamError("upstream sent a delta that is not an object")
    content = delta.get("content")
    if len(delta) == 1 and content.__class__ is str:
        # A token: the delta is its text alone (the chunk of almost every step).
        index = choice.get("index", 0)
        return Delta(
            content=content,
            finish_reason=choice.get("finish_reason") or None,
            index=index if index.__class__ is int else 0,
            extra=_NO_EXTRA,
        )
    tool_calls = delta.get("tool_calls")
    extra = {
        key: value
        for key, value in delta.items()
        if key not in _KNOWN_DELTA_FIELDS and value is not None
    }
    index = choice.get("index", 0)
    return Delta(
        content=content if isinstance(content, str) else None,
        role=delta["role"] if isinstance(delta.get("role"), str) else None,
        tool_calls=tuple(tool_calls) if isinstance(tool_calls, list) and tool_calls else None,
        finish_reason=choice.get("finish_reason") or None,
        index=index if isinstance(index, int) else 0,
        extra=extra,
    )


class OpenAIProvider:
    """Relays to an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: The API root, such as ``https://api.openai.com/v1`` or
            ``http://127.0.0.1:11434/v1`` (Ollama).
        api_key: Sent as ``Authorization: Bearer …`` when not empty.
        timeout: Seconds to wait for the response and for each next chunk.
        connect_timeout: Seconds to wait for the connection.
        headers: Extra request headers.
        model: Send this model name upstream instead of the requested one.
        transport: An httpx transport (tests); the default opens real connections.
    """

    def __init__(
        self,
        base_url: str,
        *,
        name: str = "openai",
        api_key: str = "",
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        model: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.models_url = base_url.rstrip("/") + "/models"
        self.model = model
        request_headers = {"accept": "text/event-stream", **(headers or {})}
        if not any(name.lower() == "accept-encoding" for name in request_headers):
            # A compressor holds tokens back, and an uncompressed body is read
            # with one layer less per chunk (aiter_raw).
            request_headers["accept-encoding"] = "identity"
        if api_key:
            request_headers["authorization"] = f"Bearer {api_key}"
        #: What messages may name: the URLs without credentials.
        self.display_url = display_url(self.url)
        self._display_models_url = display_url(self.models_url)
        self._secrets = secrets_of(api_key, headers, base_url)
        self._client = http_client(
            request_headers,
            timeout=timeout,
            connect_timeout=connect_timeout,
            transport=transport,
        )

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The body sent upstream: the client's, always streamed, with usage."""
        body = dict(request.body or {"model": request.model, "messages": list(request.messages)})
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        if self.model is not None:
            body["model"] = self.model
        return body

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        body = orjson.dumps(self.request_body(request))
        decoder = SSEDecoder(max_event_bytes=MAX_EVENT_BYTES)
        finished = False
        with map_httpx_errors(self.display_url):
            async with self._client.stream(
                "POST", self.url, content=body, headers={"content-type": "application/json"}
            ) as response:
                if response.status_code >= 400:
                    text = await response.aread()
                    raise UpstreamError(
                        self._summary(response.status_code, text),
                        status=response.status_code,
                        body=text[:4096].decode("utf-8", "replace"),
                    )
                # Undecoded when it is not compressed: one layer less per chunk
                # (aiter_bytes for a body already read, as a test transport's).
                raw_body = (
                    response.headers.get("content-encoding", "identity") == "identity"
                    and not response.is_stream_consumed
                )
                async for raw in response.aiter_raw() if raw_body else response.aiter_bytes():
                    for event in decoder.feed(raw):
                        if event.data == "[DONE]":
                            return
                        for delta in parse_chunk(event.data):
                            finished = finished or delta.finish_reason is not None
                            yield delta
                for event in decoder.feed_eof():
                    if event.data == "[DONE]":
                        return
                    for delta in parse_chunk(event.data):
                        yield delta
        if not finished:
            raise UpstreamError("upstream closed the stream before the answer was finished")
        logger.debug(
            "upstream %s ended without [DONE] after the last choice finished", self.display_url
        )

    async def models(self) -> list[str]:
        """The upstream's ``GET /models`` ids (or the configured ``model`` alone)."""
        with map_httpx_errors(self._display_models_url):
            response = await self._client.get(self.models_url)
        if response.status_code >= 400:
            raise UpstreamError(
                self._summary(response.status_code, response.content),
                status=response.status_code,
            )
        try:
            data = orjson.loads(response.content)["data"]
            return [str(entry["id"]) for entry in data]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise UpstreamError(f"upstream {self._display_models_url} sent no model list") from exc

    def _summary(self, status: int, body: bytes) -> str:
        return summarize(status, body, self._secrets)

    async def aclose(self) -> None:
        await self._client.aclose()
