"""AnthropicProvider: Anthropic's Messages API, relayed as chat completion chunks.

Theory of operation. A chat request (OpenAI's shape) is translated into a
Messages API request by :func:`messages_request`: system and developer
messages become the separate ``system`` prompt; assistant ``tool_calls``
become ``tool_use`` blocks and ``tool`` messages ``tool_result`` blocks;
consecutive messages of one role are merged, as the API wants turns to
alternate; ``max_tokens``, which the API requires, comes from the request or
from the provider's default. Input that cannot be translated (tool-call
arguments that are not JSON, a content part of unknown type) is refused
with status 400 before anything is sent.

The answer is an SSE stream of typed events. :class:`MessageStream` is the
sans-I/O half: it takes one event's JSON at a time and returns the
:class:`~tidings.llm.chunks.Delta` values it means, in OpenAI's terms:

=====================================  ==========================================
Messages API event                     delta
=====================================  ==========================================
``message_start``                      role ``assistant``; keeps ``input_tokens``
``content_block_start`` ``tool_use``   ``tool_calls[{index, id, type, name}]``
``content_block_delta`` text           ``content``
``content_block_delta`` input JSON     ``tool_calls[{index, function.arguments}]``
``content_block_delta`` thinking       ``reasoning_content``
``message_delta``                      ``finish_reason``; keeps ``output_tokens``
``message_stop``                       usage (prompt, completion, total); the end
``error``                              :class:`~tidings.errors.UpstreamError`
``ping``, unknown types                nothing
=====================================  ==========================================

Unknown event types and delta types are ignored, as the Messages API asks
of clients (it may add new ones); data that is not a JSON object, or that
contradicts the stream (a JSON delta for a block that is not a tool call),
ends the generation with an error. The I/O half is
:class:`AnthropicProvider`, over httpx like the OpenAI provider, and with
its error handling: refusals are summarised (status, error type), never
quoted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import httpx
import orjson

from tidings.errors import InvalidChatRequest, UpstreamError
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

__all__ = ["DEFAULT_BASE_URL", "AnthropicProvider", "MessageStream", "messages_request"]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
API_VERSION = "2023-06-01"
#: Messages API ``stop_reason`` -> chat completion ``finish_reason``.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: The usage counts that make up ``prompt_tokens``.
_INPUT_COUNTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
#: Pages of ``GET /models`` read at most (1000 models each).
MAX_MODEL_PAGES = 10


def _refuse(message: str) -> UpstreamError:
    """A request this provider cannot translate: answered 400, nothing sent."""
    return UpstreamError(message, status=400)


# -- request ------------------------------------------------------------------------


def _blocks(content: object, param: str) -> list[dict[str, Any]]:
    """OpenAI message content (a string or parts) as Messages API content blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for index, part in enumerate(content if isinstance(content, list) else ()):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            blocks.append(_image(str(part["image_url"].get("url", "")), f"{param}[{index}]"))
        else:
            raise _refuse(f"{param}[{index}] is a content part this provider cannot send")
    return blocks


def _image(url: str, param: str) -> dict[str, Any]:
    if url.startswith("data:"):
        head, _, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if encoding != "base64" or not data:
            raise _refuse(f"{param}.image_url must be a base64 data URL or an http(s) URL")
        source = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("http://", "https://")):
        source = {"type": "url", "url": url}
    else:
        raise _refuse(f"{param}.image_url must be a base64 data URL or an http(s) URL")
    return {"type": "image", "source": source}


def _tool_use(call: object, param: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(call, dict) or not isinstance(function, dict):
        raise _refuse(f"{param} must be a function tool call")
    arguments = function.get("arguments") or "{}"
    try:
        arguments = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        raise _refuse(f"{param}.function.arguments is not JSON") from None
    if not isinstance(arguments, dict):
        raise _refuse(f"{param}.function.arguments must be a JSON object")
    return {
        "type": "tool_use",
        "id": str(call.get("id", "")),
        "name": str(function.get("name", "")),
        "input": arguments,
    }


def _turns(messages: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The system texts and the alternating user/assistant turns of ``messages``."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(block["text"] for block in _blocks(message.get("content"), param))
            continue
        if role == "user":
            blocks = _blocks(message.get("content"), f"{param}.content")
        elif role == "assistant":
            blocks = _blocks(message.get("content"), f"{param}.content") + [
                _tool_use(call, f"{param}.tool_calls[{number}]")
                for number, call in enumerate(message.get("tool_calls") or ())
            ]
        elif role == "tool":
            role = "user"
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
            content = _blocks(message.get("content"), f"{param}.content")
            if content:
                result["content"] = content
            blocks = [result]
        else:
            raise _refuse(f"{param}.role {role!r} cannot be sent to this provider")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _tool_choice(choice: object, parallel: object) -> dict[str, Any]:
    result: dict[str, Any]
    if choice is None:
        result = {"type": "auto"}
    elif choice in ("auto", "none"):
        result = {"type": choice}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": str(choice["function"].get("name", ""))}
    else:
        raise _refuse("tool_choice must be auto, none, required or a function")
    if parallel is False and result["type"] != "none":
        result["disable_parallel_tool_use"] = True
    return result


def _tool(tool: object, index: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise _refuse(f"tools[{index}] must be a function tool with a name")
    spec: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if isinstance(function.get("description"), str):
        spec["description"] = function["description"]
    return spec


def messages_request(
    request: ChatRequest, *, max_tokens: int, model: str | None = None
) -> dict[str, Any]:
    """The Messages API body for ``request``, always streamed.

    Args:
        max_tokens: Used when the request sets no ``max_tokens``.
        model: Sent instead of the requested model name.

    Raises:
        UpstreamError: (status 400) the request cannot be expressed in the
            Messages API; the message names the field.
    """
    body = request.body or {}
    system, turns = _turns(request.messages)
    document: dict[str, Any] = {
        "model": model or request.model,
        "messages": turns,
        "max_tokens": request.max_tokens or max_tokens,
        "stream": True,
    }
    if system:
        document["system"] = "\n\n".join(system)
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            document[name] = body[name]
    stop = body.get("stop")
    if stop is not None:
        document["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(body.get("user"), str):
        document["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools") or []
    if tools:
        document["tools"] = [_tool(tool, index) for index, tool in enumerate(tools)]
        document["tool_choice"] = _tool_choice(
            body.get("tool_choice"), body.get("parallel_tool_calls")
        )
    return document


# -- response -------------------------------------------------------------------------


class MessageStream:
    """Messages API stream events in, deltas out (sans-I/O).

    Feed each event's data to :meth:`event`; :attr:`done` is true once
    ``message_stop`` came, :attr:`finished` once the stop reason did.
    """

    def __init__(self) -> None:
        self.done = False
        self.finished = False
        self._counts = dict.fromkeys((*_INPUT_COUNTS, "output_tokens"), 0)
        #: Content block index -> tool call index, for ``tool_use`` blocks.
        self._tools: dict[int, int] = {}

    def event(self, data: str) -> list[Delta]:
        """The deltas of one event (its ``data:`` text).

        Raises:
            UpstreamError: an ``error`` event, or data that is not a valid event.
        """
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream sent an event that is not JSON") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise UpstreamError("upstream sent an event that is not an object with a type")
        kind = event["type"]
        if kind == "error":
            raise UpstreamError(
                "upstream failed mid-stream" + error_kind(event.get("error")), body=data[:4096]
            )
        handler = self._HANDLERS.get(kind)
        if handler is None:
            logger.debug("ignored an upstream event of unknown type %.48r", kind)
            return []
        return handler(self, event)

    def usage(self) -> Delta:
        """The usage delta: what ``message_start`` and ``message_delta`` counted.

        ``prompt_tokens`` counts the input read from and written to the
        prompt cache too; ``prompt_tokens_details.cached_tokens`` the former.
        """
        counts = self._counts
        prompt = sum(counts[name] for name in _INPUT_COUNTS)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": counts["output_tokens"],
            "total_tokens": prompt + counts["output_tokens"],
        }
        if counts["cache_read_input_tokens"]:
            usage["prompt_tokens_details"] = {"cached_tokens": counts["cache_read_input_tokens"]}
        return Delta(usage=usage)

    def _count(self, usage: object) -> None:
        """Keep the counts of a ``usage`` object (they are totals so far, not increments)."""
        if isinstance(usage, dict):
            for name in self._counts:
                value = usage.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    self._counts[name] = value

    def _message_start(self, event: dict[str, Any]) -> list[Delta]:
        message = event.get("message")
        self._count(message.get("usage") if isinstance(message, dict) else None)
        return [Delta(role="assistant", content="")]

    def _block_start(self, event: dict[str, Any]) -> list[Delta]:
        block = _object(event, "content_block")
        index = _index(event)
        if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
            return [Delta(content=block["text"])]
        if block.get("type") != "tool_use":
            return []
        number = self._tools[index] = len(self._tools)
        call = {
            "index": number,
            "id": str(block.get("id", "")),
            "type": "function",
            "function": {"name": str(block.get("name", "")), "arguments": ""},
        }
        return [Delta(tool_calls=(call,))]

    def _block_delta(self, event: dict[str, Any]) -> list[Delta]:
        delta = _object(event, "delta")
        index = _index(event)
        kind = delta.get("type")
        if kind == "text_delta":
            return [Delta(content=_string(delta, "text"))]
        if kind == "input_json_delta":
            number = self._tools.get(index)
            if number is None:
                raise UpstreamError("upstream sent tool input for a block that is not a tool call")
            fragment = _string(delta, "partial_json")
            return [Delta(tool_calls=({"index": number, "function": {"arguments": fragment}},))]
        if kind == "thinking_delta":
            return [Delta(extra={"reasoning_content": _string(delta, "thinking")})]
        return []  # signature_delta, citations_delta and types yet to come

    def _message_delta(self, event: dict[str, Any]) -> list[Delta]:
        self._count(event.get("usage"))
        reason = _object(event, "delta").get("stop_reason")
        if not isinstance(reason, str) or self.finished:
            return []
        self.finished = True
        return [Delta(finish_reason=FINISH_REASONS.get(reason, "stop"))]

    def _message_stop(self, event: dict[str, Any]) -> list[Delta]:
        self.done = True
        if not self.finished:
            self.finished = True
            return [Delta(finish_reason="stop"), self.usage()]
        return [self.usage()]

    def _nothing(self, event: dict[str, Any]) -> list[Delta]:
        return []

    _HANDLERS = {
        "message_start": _message_start,
        "content_block_start": _block_start,
        "content_block_delta": _block_delta,
        "content_block_stop": _nothing,
        "message_delta": _message_delta,
        "message_stop": _message_stop,
        "ping": _nothing,
    }


def _object(event: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = event.get(name)
    if not isinstance(value, dict):
        raise UpstreamError(f"upstream sent a {event['type']} event without its {name} object")
    return value


def _index(event: Mapping[str, Any]) -> int:
    index = event.get("index")
    if isinstance(index, bool) or not isinstance(index, int):
        raise UpstreamError(f"upstream sent a {event['type']} event without an index")
    return index


def _string(delta: Mapping[str, Any], name: str) -> str:
    value = delta.get(name)
    if not isinstance(value, str):
        raise UpstreamError(f"upstream sent a {delta.get('type')} without its {name}")
    return value


# -- I/O ----------------------------------------------------------------------------------


class AnthropicProvider:
    """Relays to Anthropic's ``POST {base_url}/messages`` (streamed).

    Args:
        base_url: The API root (``https://api.anthropic.com/v1``).
        api_key: Sent as ``x-api-key`` when not empty.
        max_tokens: ``max_tokens`` for requests that set none (the API requires it).
        timeout: Seconds to wait for the response and for each next event.
        connect_timeout: Seconds to wait for the connection.
        headers: Extra request headers (``anthropic-beta`` …).
        model: Send this model name upstream instead of the requested one.
        models: The names ``models()`` lists, instead of asking ``GET /models``.
        transport: An httpx transport (tests); the default opens real connections.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        name: str = "anthropic",
        api_key: str = "",
        max_tokens: int = 4096,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        model: str | None = None,
        models: Sequence[str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_tokens <= 0:
            raise ValueError("max_tokens must be > 0")
        self.name = name
        self.url = base_url.rstrip("/") + "/messages"
        self.models_url = base_url.rstrip("/") + "/models"
        self.max_tokens = max_tokens
        self.model = model
        self._models = list(models) if models is not None else None
        request_headers = {
            "accept": "text/event-stream",
            "anthropic-version": API_VERSION,
            **(headers or {}),
        }
        if api_key:
            request_headers["x-api-key"] = api_key
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
        """The Messages API body sent upstream (see :func:`messages_request`)."""
        return messages_request(request, max_tokens=self.max_tokens, model=self.model)

    def check(self, request: ChatRequest) -> None:
        """Refuse a request that cannot be translated, before the generation starts.

        Raises:
            InvalidChatRequest: what :func:`messages_request` refuses.
        """
        try:
            self.request_body(request)
        except UpstreamError as exc:
            raise InvalidChatRequest(str(exc)) from exc

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        body = orjson.dumps(self.request_body(request))
        decoder = SSEDecoder(max_event_bytes=MAX_EVENT_BYTES)
        state = MessageStream()
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
                async for raw in response.aiter_bytes():
                    for event in decoder.feed(raw):
                        for delta in state.event(event.data):
                            yield delta
                        if state.done:
                            return
                for event in decoder.feed_eof():
                    for delta in state.event(event.data):
                        yield delta
        if not state.finished:
            raise UpstreamError("upstream closed the stream before the answer was finished")
        if not state.done:
            logger.debug(
                "upstream %s ended without message_stop after the stop reason", self.display_url
            )
            yield state.usage()

    async def models(self) -> list[str]:
        """The configured ``models``, or the upstream's ``GET /models`` ids (every page)."""
        if self._models is not None:
            return list(self._models)
        names: list[str] = []
        params: dict[str, str | int] = {"limit": 1000}
        for _ in range(MAX_MODEL_PAGES):
            with map_httpx_errors(self._display_models_url):
                response = await self._client.get(self.models_url, params=params)
            if response.status_code >= 400:
                raise UpstreamError(
                    self._summary(response.status_code, response.content),
                    status=response.status_code,
                )
            try:
                page = orjson.loads(response.content)
                names.extend(str(entry["id"]) for entry in page["data"])
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise UpstreamError(
                    f"upstream {self._display_models_url} sent no model list"
                ) from exc
            if not page.get("has_more") or not page.get("last_id"):
                break
            params["after_id"] = str(page["last_id"])
        return names

    def _summary(self, status: int, body: bytes) -> str:
        return summarize(status, body, self._secrets)

    async def aclose(self) -> None:
        await self._client.aclose()
