"""What the HTTP providers share: their httpx client, error translation, and
the secrets an upstream's error must never make a client see.

An upstream refusal reaches the client as a summary (:func:`summarize`): the
status, and the error's ``type`` and ``code`` when they look like
identifiers; never the upstream's own text, since an upstream (or a proxy in
front of it) may quote the request back, ``Authorization`` header included.
httpx's errors are translated once, at the edge (:func:`map_httpx_errors`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

import httpx
import orjson

from tidings.errors import UpstreamError, UpstreamTimeout

__all__ = [
    "MAX_EVENT_BYTES",
    "error_kind",
    "http_client",
    "map_httpx_errors",
    "secrets_of",
    "summarize",
]

#: Largest upstream SSE event accepted, in characters.
MAX_EVENT_BYTES = 1024 * 1024
#: An upstream error ``type`` or ``code`` worth repeating: a short identifier.
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,47}\Z")
#: Secrets shorter than this are not looked for in messages (too many false hits).
_MIN_SECRET_LENGTH = 8


def error_kind(error: object) -> str:
    """`` (type: …, code: …)`` for an upstream error object, from identifier-like values only."""
    if not isinstance(error, dict):
        return ""
    kinds = [
        f"{name}: {value}"
        for name in ("type", "code")
        if isinstance(value := error.get(name), str) and _IDENTIFIER.match(value)
    ]
    return f" ({', '.join(kinds)})" if kinds else ""


def summarize(status: int, body: bytes, secrets: tuple[str, ...]) -> str:
    """What a client may learn of an upstream refusal: its status, error type and code.

    When the type or code holds one of ``secrets`` (an upstream that puts
    our key in its error type), only the status.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    summary = f"upstream answered {status}" + error_kind(error)
    if any(secret in summary for secret in secrets):
        return f"upstream answered {status}"
    return summary


def secrets_of(api_key: str, headers: Mapping[str, str] | None, base_url: str) -> tuple[str, ...]:
    """The values an upstream error must never repeat: the key, the configured
    header values, the user and password of ``base_url``."""
    try:
        parts = urlsplit(base_url)
        userinfo: tuple[str | None, ...] = (parts.username, parts.password)
    except ValueError:
        userinfo = ()
    values = (api_key, *(headers or {}).values(), *(value for value in userinfo if value))
    return tuple(value for value in values if value and len(value) >= _MIN_SECRET_LENGTH)


def http_client(
    headers: Mapping[str, str],
    *,
    timeout: float,
    connect_timeout: float,
    transport: httpx.AsyncBaseTransport | None,
) -> httpx.AsyncClient:
    """The provider's client: ``timeout`` for the response and each next chunk."""
    return httpx.AsyncClient(
        headers=dict(headers),
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        transport=transport,
        # Requests to the upstream are one per generation and long; a
        # bounded pool would queue generations behind each other.
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
    )


@contextlib.contextmanager
def map_httpx_errors(url: str) -> Iterator[None]:
    """Translate httpx's errors to UpstreamError, once, at the edge.

    ``url`` is the display form (:func:`~tidings.llm.providers.base.display_url`).
    httpx's own message is left out: some quote the request (a header value,
    the full URL).
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"upstream {url} timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(f"upstream {url} failed ({type(exc).__name__})") from exc
