"""Every exception Tidings raises, in one tree.

::

    TidingsError                          root; every error raised by Tidings is one of these
    ├── ProtocolError                     malformed input on the wire (.code)
    │   ├── FrameTooLarge                 (.size, .limit)
    │   ├── UnknownOp                     (.op)
    │   ├── RateLimited                   over a command or publish rate (.limit, .retry_after)
    │   ├── IntegerOutOfRange(…, ValueError)  an integer JSON/MessagePack data cannot keep (.text)
    │   ├── InvalidCursor(…, ValueError)  a resume cursor that cannot be read (.cursor, .reason)
    │   └── InvalidChatRequest(…, ValueError)  a chat completion request refused (.param)
    │       └── ModelNotFound                  no route serves the requested model
    ├── InvalidChannel(…, ValueError)     (.channel, .reason)
    ├── InvalidPublication(…, ValueError) bad event type, data or size; nothing was published
    ├── Unauthorized                      no identity, or a refused token or key (.reason)
    ├── PermissionDenied                  (.channel, .action): the namespace forbids the action
    ├── Rejected                          a hook refused (.code, .message, .status)
    ├── HookFailed                        a hook raised an unexpected error or timed out (.hook)
    ├── ProxyUnavailable                  a proxy hook's backend failed to answer (.hook, .reason)
    ├── PublishError                      a publish did not happen; nothing was half-applied
    │   ├── BackendUnavailable            the backend is down or timing out (.backend)
    │   ├── ShuttingDown                  the server is draining (.retry_after)
    │   └── PublishRejected               client: a publish refused (also a RequestRejected)
    ├── SubscriptionClosed                the hub ended a subscription (.reason)
    ├── AlreadySubscribed                 a subscription already receives the channel (.channel)
    ├── ConnectionClosed                  client: server closed (.close_code, .reason, .reconnect)
    ├── RequestRejected                   client: a request refused (.code, .message, .status)
    ├── StreamRejected                    client: a non-retryable HTTP status (.status, .message)
    ├── ServerUnavailable                 client: the server cannot be reached (.url), "unreachable"
    ├── InvalidURL(…, ValueError)         client: a server URL that cannot be used (.url)
    ├── ReconnectExhausted                client: max attempts reached (.attempts, .last_error)
    ├── RequestTimeout(…, TimeoutError)   client: no reply in time (.op, .timeout)
    ├── QueueFull                         a bounded queue is full (.limit)
    ├── UnknownJob(…, LookupError)        no job of that name or id (.name)
    └── UpstreamError                     an LLM upstream failed (.status, .body)
        └── UpstreamTimeout               the upstream did not answer in time

Each class carries ``code``, the stable string that HTTP bodies, WebSocket
replies and the JavaScript client use for it (the values are the members of
:class:`tidings.wire.codes.ErrorCode`). The client errors that report a
refusal (``RequestRejected``, ``PublishRejected``, ``StreamRejected``) carry
the server's own code and message instead. This module imports nothing from
Tidings so that every layer can use it.
"""

from __future__ import annotations

import re

__all__ = [
    "AlreadySubscribed",
    "BackendUnavailable",
    "ConnectionClosed",
    "FrameTooLarge",
    "HookFailed",
    "IntegerOutOfRange",
    "InvalidArguments",
    "InvalidChannel",
    "InvalidChatRequest",
    "InvalidCursor",
    "InvalidPublication",
    "InvalidURL",
    "ModelNotFound",
    "PermissionDenied",
    "ProtocolError",
    "ProxyUnavailable",
    "PublishError",
    "PublishRejected",
    "QueueFull",
    "RateLimited",
    "ReconnectExhausted",
    "Rejected",
    "RequestRejected",
    "RequestTimeout",
    "ServerUnavailable",
    "ShuttingDown",
    "StreamRejected",
    "SubscriptionClosed",
    "TidingsError",
    "TooManyConnections",
    "Unauthorized",
    "UnknownJob",
    "UnknownOp",
    "UpstreamError",
    "UpstreamTimeout",
]


class TidingsError(Exception):
    """Root of every error raised by Tidings.

    ``retry_after`` is the seconds after which the same request may succeed,
    when the refusal says so (a rate limit, a server draining), else None.
    """

    code: str = "internal"
    retry_after: float | None = None


class ProtocolError(TidingsError):
    """Malformed input on the wire.

    ``code`` is the wire code of the refusal (``bad_request`` unless given).
    ``tidings.server.errors`` says which HTTP status and WebSocket close code
    each error gets.
    """

    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class FrameTooLarge(ProtocolError):
    """A frame, body or line is larger than the configured limit."""

    code = "too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes is more than the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class UnknownOp(ProtocolError):
    """A WebSocket command names an operation that does not exist."""

    code = "unknown_op"

    def __init__(self, op: object) -> None:
        super().__init__(f"unknown op {op!r}")
        self.op = op


class RateLimited(ProtocolError):
    """More commands or publishes than a rate limit allows.

    ``limit`` is the allowed rate per second. ``retry_after`` is the number
    of seconds after which the refused request would be admitted (None when
    unknown): HTTP answers carry it as ``Retry-After``, WebSocket error
    replies as ``retry_after``. A WebSocket client that keeps sending
    commands far past ``ws_rate_limit`` is closed with 4029 (reconnect later).
    """

    code = "rate_limited"

    def __init__(
        self,
        limit: float,
        *,
        retry_after: float | None = None,
        what: str = "commands",
        scope: str = "",
    ) -> None:
        message = f"more than {limit:g} {what} per second{' ' + scope if scope else ''}"
        if retry_after is not None:
            message += f"; retry in {retry_after:.2g} s"
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after


class IntegerOutOfRange(ProtocolError, ValueError):
    """An integer outside [-2**63, 2**64-1], the range JSON and MessagePack data keep.

    A server that stored it would change its value (orjson reads it as a
    float) or fail to send it on, so it is refused whole. ``text`` is the
    integer's start. ``code`` is ``invalid_json`` (``invalid_msgpack`` when
    MessagePack cannot encode it).
    """

    code = "invalid_json"

    def __init__(self, text: str, *, code: str | None = None) -> None:
        shown = text if len(text) <= 24 else text[:20] + "..."
        super().__init__(
            f"the integer {shown} is outside [-2**63, 2**64-1], the range of integers "
            "Tidings keeps exactly; send it as a string",
            code=code,
        )
        self.text = text


class InvalidCursor(ProtocolError, ValueError):
    """A resume cursor (``Last-Event-ID``) that cannot be read."""

    code = "invalid_cursor"

    def __init__(self, cursor: str, reason: str) -> None:
        super().__init__(f"invalid cursor {cursor[:80]!r}: {reason}")
        self.cursor = cursor
        self.reason = reason


class InvalidChatRequest(ProtocolError, ValueError):
    """A chat completion request that cannot be served; ``param`` names the field."""

    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFound(InvalidChatRequest):
    """A chat completion request for a model that no route serves (HTTP 404, as OpenAI's)."""

    code = "model_not_found"


class InvalidArguments(ProtocolError, ValueError):
    """A job's arguments that do not match its function; ``field`` names the argument."""

    code = "invalid_value"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"argument {field!r}: {reason}")
        self.field = field
        self.reason = reason


class InvalidChannel(TidingsError, ValueError):
    """A channel name that is not ``[A-Za-z0-9_:.@/-]{1,255}``."""

    code = "invalid_channel"

    def __init__(self, channel: object, reason: str) -> None:
        super().__init__(f"invalid channel name {str(channel)[:80]!r}: {reason}")
        self.channel = channel
        self.reason = reason


class InvalidPublication(TidingsError, ValueError):
    """A publication that cannot be accepted; nothing was published."""

    code = "invalid_publication"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unauthorized(TidingsError):
    """The request carries no identity where one is needed, or one that is refused.

    ``reason`` says which (``"missing"``, ``"expired"``, ``"invalid"`` …) without
    repeating the credential.
    """

    code = "unauthorized"

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"authentication required ({reason})")
        self.reason = reason


class PermissionDenied(TidingsError):
    """The channel's namespace does not allow this action for clients."""

    code = "permission_denied"

    def __init__(self, channel: str, action: str, *, what: str = "channel") -> None:
        super().__init__(f"{action} is not allowed on {what} {channel!r}")
        self.channel = channel
        self.action = action


#: What a :class:`Rejected` code may be: the characters of Tidings' own codes.
_REJECTED_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
#: Longest message of a :class:`Rejected` that reaches a client (longer ones are cut).
REJECTED_MESSAGE_MAX = 512


class Rejected(TidingsError):
    """A hook refused a connect, subscribe or publish; nothing was changed.

    Raise it from an ``on_connect``, ``on_subscribe`` or ``on_publish`` hook
    (``docs/howto/hooks.md``); a proxy hook raises it for a 4xx answer of its
    backend. The client gets ``code`` and ``message`` as they are: an HTTP
    ``status`` answer with ``{"error": {"code", "message"}}``, or a WebSocket
    error reply with that code.

    Args:
        code: The error code the client sees: 1-64 of ``A-Z a-z 0-9 _ . : -``.
        message: The explanation the client sees (cut to 512 characters).
        status: The HTTP status of the refusal, 400-499 (default 403).

    Raises:
        ValueError: ``code`` or ``status`` is not one of those.
    """

    code = "rejected"

    def __init__(self, code: str = "rejected", message: str = "", *, status: int = 403) -> None:
        if not isinstance(code, str) or not _REJECTED_CODE.match(code):
            raise ValueError("a Rejected code must be 1-64 of A-Z a-z 0-9 _ . : -")
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 499:
            raise ValueError(f"a Rejected status must be 400-499, not {status!r}")
        message = str(message or "refused")
        if len(message) > REJECTED_MESSAGE_MAX:
            message = message[: REJECTED_MESSAGE_MAX - 3] + "..."
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class HookFailed(TidingsError):
    """A hook raised something other than a Tidings error, or did not answer in
    time; the request is refused (HTTP 500) and the cause is logged."""

    code = "hook_failed"

    def __init__(self, hook: str, reason: str) -> None:
        super().__init__(f"the {hook} hook failed: {reason}")
        self.hook = hook
        self.reason = reason


class ProxyUnavailable(TidingsError):
    """A proxy hook's backend is down, timed out, answered 5xx or an unreadable
    body; the request is refused (fail closed, HTTP 503) and the cause is logged."""

    code = "proxy_unavailable"

    def __init__(self, hook: str, reason: str, *, retry_after: float | None = 1.0) -> None:
        super().__init__(f"the {hook} proxy is unavailable: {reason}")
        self.hook = hook
        self.reason = reason
        self.retry_after = retry_after


class PublishError(TidingsError):
    """A publish did not happen. Nothing was half-applied: retrying is safe."""

    code = "publish_failed"


class BackendUnavailable(PublishError):
    """The backend (Redis) is down or did not answer in time."""

    code = "unavailable"

    def __init__(self, backend: str, detail: str = "") -> None:
        message = f"backend {backend} is unavailable"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.backend = backend


class ShuttingDown(PublishError):
    """The server is draining before it stops: it accepts no more publishes.

    Nothing was published; publish again to another node or after
    ``retry_after`` seconds (HTTP 503 with ``Retry-After``).
    """

    code = "unavailable"

    def __init__(self, retry_after: float = 1.0, *, what: str = "publishes") -> None:
        super().__init__(f"the server is shutting down and accepts no {what}")
        self.retry_after = retry_after


class RequestRejected(TidingsError):
    """Client side: the server answered a request with an error; nothing was done.

    ``code`` is the server's error code (``"permission_denied"``,
    ``"invalid_channel"``, ``"not_subscribed"`` …, ``"internal"`` when the
    answer had none), ``message`` its explanation, ``status`` the HTTP
    status (None for a WebSocket reply) and ``retry_after`` the seconds the
    server asked to wait, or None.
    """

    code = "internal"

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        what: str = "request",
    ) -> None:
        at = f" with {status}" if status is not None else ""
        super().__init__(f"{what} refused{at}: {code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after


class PublishRejected(PublishError, RequestRejected):
    """Client side: the server answered a publish with an error; nothing was published.

    ``status`` is the HTTP status (None when the refusal came as a WebSocket
    reply) and ``code`` the server's error code (for example
    ``"invalid_channel"``, ``"permission_denied"``, ``"rate_limited"`` or,
    with Redis down or the server shutting down, ``"unavailable"``);
    ``message`` is the server's explanation. ``retry_after`` is the seconds
    the server asked to wait (its ``Retry-After``), or None.
    """

    code = "publish_failed"

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        RequestRejected.__init__(
            self, code, message, status=status, retry_after=retry_after, what="publish"
        )


class SubscriptionClosed(TidingsError):
    """The hub ended a subscription.

    ``reason`` is ``"slow_consumer"`` (the outbox overflowed under the
    ``disconnect`` policy) or ``"shutdown"`` (the hub is closing).
    """

    code = "subscription_closed"

    def __init__(self, reason: str) -> None:
        super().__init__(f"subscription closed: {reason}")
        self.reason = reason


class AlreadySubscribed(TidingsError):
    """A subscription was asked for a channel it already receives; nothing changed."""

    code = "already_subscribed"

    def __init__(self, channel: str) -> None:
        super().__init__(f"already subscribed to {channel!r}")
        self.channel = channel


class ConnectionClosed(TidingsError):
    """Client side: the server closed the connection.

    ``reconnect`` tells whether the close code asks the client to come back.
    """

    code = "connection_closed"

    def __init__(self, code: int, reason: str = "", *, reconnect: bool = True) -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.close_code = code
        self.reason = reason
        self.reconnect = reconnect


class StreamRejected(TidingsError):
    """Client side: the server answered with a status that retrying cannot fix.

    ``code`` and ``message`` are the server's when its answer was a Tidings
    error body (``{"error": {"code", "message"}}``), else ``"stream_rejected"``
    and the start of the body.
    """

    code = "stream_rejected"

    def __init__(
        self, status: int, body: str = "", *, code: str | None = None, message: str | None = None
    ) -> None:
        self.message = message if message is not None else body[:200]
        shown = f"{code}: {self.message}" if code is not None else self.message
        super().__init__(f"server answered {status}{': ' + shown if shown else ''}")
        self.status = status
        self.body = body
        if code is not None:
            self.code = code


class ServerUnavailable(TidingsError):
    """Client side: the server could not be reached, or the connection failed
    before it answered (refused, reset, the connection timed out).

    Its code is ``"unreachable"``: no server answered (a server that answers
    ``"unavailable"`` is a :class:`RequestRejected`). The underlying error
    is the exception's ``__cause__``. A request that was sent may still have
    been applied: publish with a ``key`` to retry safely.
    """

    code = "unreachable"

    def __init__(self, url: str, detail: str = "") -> None:
        message = f"cannot reach {url}"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.url = url


class InvalidURL(TidingsError, ValueError):
    """Client side: a server URL that cannot be used (no http(s) or ws(s) scheme, no host)."""

    code = "invalid_url"

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"invalid server URL {url[:200]!r}: {reason}")
        self.url = url
        self.reason = reason


class TooManyConnections(TidingsError):
    """Server side: the server holds as many connections as it allows, in total or
    from one client address (``max_connections``, ``max_connections_per_client``).

    Answered 503 with ``Retry-After``; the client may try again later.
    """

    code = "unavailable"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ReconnectExhausted(TidingsError):
    """Client side: the maximum number of reconnection attempts was reached."""

    code = "reconnect_exhausted"

    def __init__(self, attempts: int, last_error: BaseException | None) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last_error!r}")
        self.attempts = attempts
        self.last_error = last_error


class RequestTimeout(TidingsError, TimeoutError):
    """Client side: a WebSocket command got no reply within its deadline."""

    code = "timeout"

    def __init__(self, op: str, timeout: float) -> None:
        super().__init__(f"no reply to {op} within {timeout:g} s")
        self.op = op
        self.timeout = timeout


class QueueFull(TidingsError):
    """A bounded queue (offline publishes, jobs, generations) is full.

    ``per_client`` tells that the bound is one client's share, not the whole
    server's.
    """

    code = "queue_full"

    def __init__(self, limit: int, *, per_client: bool = False) -> None:
        super().__init__(f"queue is full ({limit} items{' for this client' if per_client else ''})")
        self.limit = limit
        self.per_client = per_client


class UnknownJob(TidingsError, LookupError):
    """No job is registered under ``name``, or no job has that id (for this caller)."""

    code = "not_found"

    def __init__(self, name: str, *, what: str = "job") -> None:
        super().__init__(f"no {what} {name[:80]!r}")
        self.name = name


class UpstreamError(TidingsError):
    """An LLM upstream failed, before or during a stream."""

    code = "upstream_error"

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class UpstreamTimeout(UpstreamError):
    """An LLM upstream did not connect, answer or send the next chunk in time."""

    code = "timeout"
