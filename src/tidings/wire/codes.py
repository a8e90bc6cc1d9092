"""The one table of stable error codes and WebSocket close codes.

Error codes are the strings that HTTP error bodies, WebSocket error replies
and both clients use. Close codes follow RFC 6455 below 4000; Tidings' own
codes use two documented ranges:

- 4000-4499: the connection ended for a reason that reconnecting fixes; the
  client reconnects with backoff and resumes from its cursor.
- 4500-4999: terminal; reconnecting with the same request fails again.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = ["CloseCode", "ErrorCode", "should_reconnect"]


class ErrorCode(StrEnum):
    """Stable error identifiers; the value is the string on the wire."""

    BAD_REQUEST = "bad_request"
    INVALID_JSON = "invalid_json"
    INVALID_MSGPACK = "invalid_msgpack"
    INVALID_CHANNEL = "invalid_channel"
    INVALID_CURSOR = "invalid_cursor"
    INVALID_REQUEST = "invalid_request"
    INVALID_PUBLICATION = "invalid_publication"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNKNOWN_OP = "unknown_op"
    ALREADY_SUBSCRIBED = "already_subscribed"
    NOT_SUBSCRIBED = "not_subscribed"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PERMISSION_DENIED = "permission_denied"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    PUBLISH_FAILED = "publish_failed"
    UNAVAILABLE = "unavailable"
    SUBSCRIPTION_CLOSED = "subscription_closed"
    CONNECTION_CLOSED = "connection_closed"
    STREAM_REJECTED = "stream_rejected"
    RECONNECT_EXHAUSTED = "reconnect_exhausted"
    QUEUE_FULL = "queue_full"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    INTERNAL = "internal"
    # The OpenAI-compatible endpoints (/v1/…) also use OpenAI's own names.
    INVALID_VALUE = "invalid_value"
    TOO_MANY_GENERATIONS = "too_many_generations"
    MODEL_NOT_FOUND = "model_not_found"
    HISTORY_LOST = "history_lost"
    GENERATION_LOST = "generation_lost"
    # Hooks (server/hooks.py): a refusal whose own code the hook chose, a hook
    # that failed, and a proxy hook whose backend could not answer.
    REJECTED = "rejected"
    HOOK_FAILED = "hook_failed"
    PROXY_UNAVAILABLE = "proxy_unavailable"
    # Client side only: no server sends these.
    UNREACHABLE = "unreachable"
    INVALID_URL = "invalid_url"


class CloseCode(IntEnum):
    """WebSocket close codes Tidings sends (and its clients understand)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    ABNORMAL_CLOSURE = 1006  # never sent: the connection dropped without a close frame
    INVALID_DATA = 1007
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013  # too many connections: reconnect later
    # 4000-4499: reconnect and resume.
    SHUTDOWN = 4001
    HEARTBEAT_TIMEOUT = 4002
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4029
    TOKEN_EXPIRED = 4401  # the token expired unrefreshed: get a new one, reconnect, resume
    # 4500-4999: terminal, do not reconnect.
    BAD_REQUEST = 4500
    UNAUTHORIZED = 4501
    FORBIDDEN = 4503


def should_reconnect(code: int) -> bool:
    """Tell whether a client should reconnect after a close with ``code``."""
    if 4500 <= code <= 4999:
        return False
    return code not in (CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_DATA, CloseCode.MESSAGE_TOO_BIG)
