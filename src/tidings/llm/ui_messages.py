"""The AI SDK's chat request: UI messages in, a :class:`ChatRequest` out.

Theory of operation
-------------------

The ``ai`` package's ``DefaultChatTransport`` posts ``{"id", "messages",
"trigger", "messageId", …}``: ``id`` is the chat's id (chosen by the
client), ``messages`` the whole conversation as *UI messages*
(``{"id", "role", "parts": […]}``), and whatever the application adds
through the transport's ``body`` option beside them. :func:`parse_chat`
checks those fields, turns the UI messages into Chat Completions messages
and hands the result, with the OpenAI options of :data:`FORWARDED`, to
``validate_request``, so that the limits and rules of
``/v1/chat/completions`` hold here unchanged.

The translation follows what the AI SDK's own ``convertToModelMessages``
does with the parts a chat holds:

- ``text`` parts are the content (joined with blank lines); ``file`` parts
  whose media type is an image become ``image_url`` content parts (user
  messages only); other files are refused.
- An assistant message is cut at each ``step-start`` part: each step is one
  assistant message with its text and its ``tool_calls``, followed by one
  ``tool`` message per call that has an outcome (``output-available``,
  ``output-error``, ``output-denied``). A call without an outcome is left
  out: the upstream would refuse a call that has no answer.
- ``reasoning``, ``source-*``, ``data-*`` and ``step-start`` parts are for
  the page, not the model, and are dropped.

When the last message is an assistant's (the page ran a tool and sends its
output back), the answer continues that message: :attr:`UIChat.continues`
is its id, which the answer's ``start`` chunk must carry, as the AI SDK's
own server does, or the page would show the message twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tidings.errors import InvalidChatRequest
from tidings.llm.request import ChatRequest, RequestLimits, validate_request

__all__ = ["CHAT_ID", "FORWARDED", "UIChat", "parse_chat", "to_openai_messages"]

#: What a chat id may be: the AI SDK's generated ids, UUIDs, and names like them.
CHAT_ID = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.:@-]{1,128}\Z")
#: Body fields passed on to the upstream as they are (the rest of the body is the page's).
FORWARDED = frozenset(
    {
        "frequency_penalty",
        "max_completion_tokens",
        "max_tokens",
        "model",
        "parallel_tool_calls",
        "presence_penalty",
        "reasoning_effort",
        "seed",
        "stop",
        "temperature",
        "tool_choice",
        "tools",
        "top_p",
        "user",
    }
)
_TRIGGERS = frozenset({"submit-message", "regenerate-message"})
_ROLES = frozenset({"system", "user", "assistant"})
_OUTCOMES = frozenset({"output-available", "output-error", "output-denied"})


@dataclass(frozen=True, slots=True)
class UIChat:
    """A checked AI SDK chat request.

    Attributes:
        chat_id: The chat's id, as the client named it.
        request: The Chat Completions request it stands for (``stream`` is true).
        trigger: ``submit-message`` or ``regenerate-message``.
        continues: The id of the assistant message the answer continues (the
            last message is an assistant's, after the page added a tool's
            output to it), or None: the answer is a new message.
    """

    chat_id: str
    request: ChatRequest
    trigger: str
    continues: str | None = None


def _fail(message: str, param: str) -> InvalidChatRequest:
    return InvalidChatRequest(message, param=param)


def parse_chat(body: object, limits: RequestLimits | None = None) -> UIChat:
    """Check an AI SDK chat request body and return it as a :class:`UIChat`.

    Raises:
        InvalidChatRequest: a field is missing or wrong; ``param`` names it.
    """
    limits = limits or RequestLimits()
    if not isinstance(body, dict):
        raise _fail("the request body must be a JSON object", "body")
    chat_id = body.get("id")
    if not isinstance(chat_id, str) or not CHAT_ID.match(chat_id):
        raise _fail("id must be the chat's id: 1 to 128 letters, digits and _ . : @ -", "id")
    trigger = body.get("trigger", "submit-message")
    if trigger not in _TRIGGERS:
        raise _fail(f"trigger must be one of {', '.join(sorted(_TRIGGERS))}", "trigger")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail("messages is required and must be a non-empty list", "messages")
    if len(messages) > limits.max_messages:
        raise _fail(f"at most {limits.max_messages} messages per request", "messages")
    document = {key: value for key, value in body.items() if key in FORWARDED}
    document["messages"] = to_openai_messages(messages)
    document["stream"] = True
    last = messages[-1]
    continues = last.get("id") if last.get("role") == "assistant" else None
    return UIChat(
        chat_id,
        validate_request(document, limits),
        trigger,
        continues if isinstance(continues, str) and continues else None,
    )


def to_openai_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """The Chat Completions messages for a list of UI messages.

    Raises:
        InvalidChatRequest: a message or part is not a UI message's.
    """
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _fail(f"{param} must be an object", param)
        role = message.get("role")
        if role not in _ROLES:
            raise _fail(f"{param}.role must be system, user or assistant", f"{param}.role")
        parts = message.get("parts")
        if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
            raise _fail(f"{param}.parts must be a list of objects", f"{param}.parts")
        if role == "assistant":
            out.extend(_assistant(parts, param))
        else:
            out.append({"role": role, "content": _content(parts, param, images=role == "user")})
    return out


def _content(parts: list[Mapping[str, Any]], param: str, *, images: bool) -> str | list[Any]:
    texts: list[str] = []
    content: list[dict[str, Any]] = []
    for number, part in enumerate(parts):
        kind = part.get("type")
        where = f"{param}.parts[{number}]"
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _fail(f"{where}.text must be a string", f"{where}.text")
            texts.append(text)
            content.append({"type": "text", "text": text})
        elif kind == "file":
            media_type, url = part.get("mediaType"), part.get("url")
            if not images or not isinstance(media_type, str) or not media_type.startswith("image/"):
                raise _fail(f"{where}: only images can be sent, in user messages", where)
            if not isinstance(url, str):
                raise _fail(f"{where}.url must be a string", f"{where}.url")
            content.append({"type": "image_url", "image_url": {"url": url}})
    if len(content) > len(texts):
        return content
    return "\n\n".join(texts)


def _steps(parts: list[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    steps: list[list[Mapping[str, Any]]] = [[]]
    for part in parts:
        if part.get("type") == "step-start":
            if steps[-1]:
                steps.append([])
        else:
            steps[-1].append(part)
    return steps


def _assistant(parts: list[Mapping[str, Any]], param: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for step in _steps(parts):
        text = _content([part for part in step if part.get("type") == "text"], param, images=False)
        calls = [_tool_call(part, param) for part in step if _is_tool(part)]
        answered = [call for call in calls if call is not None]
        if not text and not answered:
            continue
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if answered:
            message["tool_calls"] = [call for call, _ in answered]
        out.append(message)
        out.extend(
            {"role": "tool", "tool_call_id": call["id"], "content": result}
            for call, result in answered
        )
    return out


def _is_tool(part: Mapping[str, Any]) -> bool:
    kind = part.get("type")
    return isinstance(kind, str) and (kind.startswith("tool-") or kind == "dynamic-tool")


def _tool_call(part: Mapping[str, Any], param: str) -> tuple[dict[str, Any], str] | None:
    """The call and its result of a tool part, or None when it has no outcome yet."""
    if part.get("state") not in _OUTCOMES:
        return None
    kind = part["type"]
    name = part.get("toolName") if kind == "dynamic-tool" else kind.removeprefix("tool-")
    call_id = part.get("toolCallId")
    if not isinstance(name, str) or not name or not isinstance(call_id, str) or not call_id:
        raise _fail(f"{param}: a tool part needs its toolCallId and tool name", param)
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": _json(part.get("input", {}))},
    }
    if part["state"] == "output-available":
        output = part.get("output")
        result = output if isinstance(output, str) else _json(output)
    elif part["state"] == "output-error":
        result = f"Error: {part.get('errorText') or 'the tool failed'}"
    else:
        result = "The tool call was denied."
    return call, result


def _json(value: object) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:  # pragma: no cover - a decoded JSON body always encodes
        raise _fail(f"a tool input or output is not JSON: {exc}", "messages") from exc
