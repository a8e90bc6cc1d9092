"""ChatRequest: a validated ``POST /v1/chat/completions`` body.

Validation refuses what no provider could serve, with the offending field
in ``InvalidChatRequest.param`` (OpenAI's error ``param``). Fields this
module does not know are kept and forwarded to the upstream untouched, so
provider-specific options (``top_k``, ``repetition_penalty`` …) still work,
except the fields that would choose where or how the request is sent
(:data:`ROUTING_FIELDS`): the server's settings decide that, never a client.

The extension field ``tidings`` (:data:`EXTENSION_FIELD`) is Tidings' own:
``{"on_disconnect": "cancel" | "continue" | "grace", "grace": seconds}``
says what happens to the generation when its last listener goes. It is read
into :attr:`ChatRequest.on_disconnect` and :attr:`ChatRequest.grace` and
removed from :attr:`ChatRequest.body`, so it never reaches an upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tidings.errors import InvalidChatRequest

__all__ = [
    "DISCONNECT_POLICIES",
    "EXTENSION_FIELD",
    "ROLES",
    "ROUTING_FIELDS",
    "ChatRequest",
    "RequestLimits",
    "validate_request",
]

#: The body field that carries Tidings' own options; never forwarded upstream.
EXTENSION_FIELD = "tidings"
#: What ``tidings.on_disconnect`` may say: cancel at once, run to the end, or
#: wait ``grace`` seconds for a listener to come back (the default).
DISCONNECT_POLICIES = ("cancel", "continue", "grace")

#: Message roles the Chat Completions API defines.
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: Body fields that name an upstream or its credentials: refused, never forwarded.
ROUTING_FIELDS = frozenset(
    {
        "api_base",
        "api_key",
        "api_type",
        "api_version",
        "base_url",
        "baseURL",
        "deployment_id",
        "endpoint",
        "headers",
        "organization",
        "provider",
        "url",
    }
)
_NUMBER_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds a request must respect.

    Args:
        max_messages: Messages per request.
        max_tokens: The largest ``max_tokens`` / ``max_completion_tokens`` accepted.
        max_model_length: Characters in the model name.
        max_grace: The largest ``tidings.grace`` accepted, in seconds.
    """

    max_messages: int = 1024
    max_tokens: int = 32768
    max_model_length: int = 256
    max_grace: float = 600.0


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat completion request that passed validation.

    Attributes:
        model: The requested model name.
        messages: The conversation, as sent.
        stream: Whether the client asked for a streamed answer.
        include_usage: Whether the client asked for the usage chunk
            (``stream_options.include_usage``).
        max_tokens: The completion length limit, if any.
        body: The request body, for providers that forward it (without
            the ``tidings`` field).
        on_disconnect: ``"grace"``, ``"cancel"`` or ``"continue"``: what
            happens when the last listener goes (see :data:`DISCONNECT_POLICIES`).
        grace: With ``"grace"``, the seconds to wait; None: the server's setting.
    """

    model: str
    messages: tuple[Mapping[str, Any], ...]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    body: Mapping[str, Any] | None = None
    on_disconnect: str = "grace"
    grace: float | None = None

    @property
    def prompt(self) -> str:
        """The text of the last user message ("" when there is none)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _text_of(message.get("content"))
        return ""


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _fail(message: str, param: str | None) -> InvalidChatRequest:
    return InvalidChatRequest(message, param=param)


def _check_message(index: int, message: object) -> Mapping[str, Any]:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _fail(f"{param} must be an object", param)
    role = message.get("role")
    if role not in ROLES:
        raise _fail(
            f"{param}.role must be one of {', '.join(sorted(ROLES))}, not {role!r}",
            f"{param}.role",
        )
    content = message.get("content")
    if content is None:
        if role != "assistant" or not message.get("tool_calls"):
            raise _fail(f"{param}.content is required", f"{param}.content")
    elif not isinstance(content, str | list):
        raise _fail(f"{param}.content must be a string or a list of parts", f"{param}.content")
    if "name" in message and not isinstance(message["name"], str):
        raise _fail(f"{param}.name must be a string", f"{param}.name")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise _fail(f"{param}.tool_call_id is required for a tool message", f"{param}.tool_call_id")
    return message


def _check_int(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(f"{name} must be an integer from {low} to {high}, not {value!r}", name)
    return value


def _check_extension(value: object, limits: RequestLimits) -> tuple[str, float | None]:
    """``(on_disconnect, grace)`` from the ``tidings`` field."""
    field = EXTENSION_FIELD
    if not isinstance(value, dict):
        raise _fail(f"{field} must be an object", field)
    unknown = sorted(set(value) - {"on_disconnect", "grace"})
    if unknown:
        name = f"{field}.{unknown[0]}"
        raise _fail(f"{name} is not an option: {field} takes on_disconnect and grace", name)
    policy = value.get("on_disconnect", "grace")
    if policy not in DISCONNECT_POLICIES:
        choices = ", ".join(repr(name) for name in DISCONNECT_POLICIES)
        raise _fail(
            f"{field}.on_disconnect must be one of {choices}, not {policy!r}",
            f"{field}.on_disconnect",
        )
    grace = value.get("grace")
    if grace is None:
        return policy, None
    param = f"{field}.grace"
    if policy != "grace":
        raise _fail(f"{param} is only allowed with on_disconnect 'grace'", param)
    number = isinstance(grace, int | float) and not isinstance(grace, bool)
    if not number or not 0 <= grace <= limits.max_grace:
        raise _fail(
            f"{param} must be a number of seconds from 0 to {limits.max_grace:g}, not {grace!r}",
            param,
        )
    return policy, float(grace)


def validate_request(body: object, limits: RequestLimits | None = None) -> ChatRequest:
    """Validate a decoded request body and return the :class:`ChatRequest`.

    Raises:
        InvalidChatRequest: the body is not a valid chat completion request;
            ``param`` names the field at fault.
    """
    limits = limits or RequestLimits()
    if not isinstance(body, dict):
        raise _fail("the request body must be a JSON object", None)
    routing = sorted(ROUTING_FIELDS.intersection(body))
    if routing:
        name = routing[0]
        raise _fail(f"{name} cannot be set by a request: the server chooses the upstream", name)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model is required and must be a non-empty string", "model")
    if len(model) > limits.max_model_length:
        raise _fail(f"model is longer than {limits.max_model_length} characters", "model")
    if "://" in model or any(char.isspace() for char in model):
        raise _fail("model must be a model name, not a URL", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail("messages is required and must be a non-empty list", "messages")
    if len(messages) > limits.max_messages:
        raise _fail(f"at most {limits.max_messages} messages per request", "messages")
    checked = tuple(_check_message(index, message) for index, message in enumerate(messages))
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _fail("stream must be a boolean", "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _fail("stream_options is only allowed when stream is true", "stream_options")
        if not isinstance(options, dict):
            raise _fail("stream_options must be an object", "stream_options")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise _fail(
                "stream_options.include_usage must be a boolean", "stream_options.include_usage"
            )
    max_tokens = _check_int(body, "max_tokens", 1, limits.max_tokens)
    max_completion = _check_int(body, "max_completion_tokens", 1, limits.max_tokens)
    if max_completion is not None:
        max_tokens = max_completion if max_tokens is None else min(max_tokens, max_completion)
    n = _check_int(body, "n", 1, 1)
    del n  # one choice per generation: a generation is one stream
    for name, (low, high) in _NUMBER_RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not low <= value <= high:
            raise _fail(f"{name} must be a number from {low:g} to {high:g}, not {value!r}", name)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _fail("tools must be a list", "tools")
    on_disconnect, grace = "grace", None
    if EXTENSION_FIELD in body:
        on_disconnect, grace = _check_extension(body[EXTENSION_FIELD], limits)
        body = {name: value for name, value in body.items() if name != EXTENSION_FIELD}
    return ChatRequest(
        model=model,
        messages=checked,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        body=body,
        on_disconnect=on_disconnect,
        grace=grace,
    )
