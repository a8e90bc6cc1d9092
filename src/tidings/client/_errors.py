"""Where the clients' errors come from: server error bodies and httpx's exceptions
become Tidings errors here, once, at the edge, keeping the cause.

Every error answer of a Tidings server carries ``{"error": {"code", "message"}}``;
:func:`error_body` reads it so that the client's exception carries the
server's code. :func:`http_errors` is the one translation of httpx's
exceptions: a connection that cannot be made is
:class:`~tidings.errors.ServerUnavailable` (``unreachable``), an answer that
does not come in time :class:`~tidings.errors.RequestTimeout` (``timeout``),
a URL httpx cannot use :class:`~tidings.errors.InvalidURL`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from tidings.errors import InvalidURL, RequestTimeout, ServerUnavailable, StreamRejected

__all__ = ["check_url", "error_body", "http_errors", "stream_rejected"]


def check_url(url: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """Return ``url`` if it has one of ``schemes`` and a host.

    Raises:
        InvalidURL: it has not (``localhost:8000`` lacks ``http://``).
    """
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        names = [f"{scheme}://" for scheme in schemes]
        expected = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        raise InvalidURL(url, f"it must start with {expected}")
    if not parts.hostname:
        raise InvalidURL(url, "it names no host")
    return url


def error_body(body: bytes | str) -> tuple[str, str] | None:
    """The ``(code, message)`` of a Tidings error body, or None when ``body`` is not one."""
    try:
        document: Any = orjson.loads(body)
        error = document["error"]
        code, message = error["code"], error["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    return code, message


def stream_rejected(status: int, body: bytes) -> StreamRejected:
    """The error for a final answer to a stream or handshake request, with the server's code."""
    text = body.decode("utf-8", "replace")
    parsed = error_body(body)
    if parsed is None:
        return StreamRejected(status, text)
    return StreamRejected(status, text, code=parsed[0], message=parsed[1])


@contextmanager
def http_errors(url: str, op: str, timeout: float) -> Iterator[None]:
    """Turn httpx's exceptions raised inside into Tidings errors (``from`` the original).

    Raises:
        ServerUnavailable: no connection (refused, reset, DNS, connect timeout).
        RequestTimeout: connected, but no answer within ``timeout`` seconds.
        InvalidURL: httpx cannot send to ``url``.
    """
    try:
        yield
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise InvalidURL(url, str(exc)) from exc
    except httpx.ConnectTimeout as exc:
        raise ServerUnavailable(url, f"no connection within {timeout:g} s") from exc
    except httpx.TimeoutException as exc:
        raise RequestTimeout(op, timeout) from exc
    except httpx.HTTPError as exc:
        raise ServerUnavailable(url, repr(exc)) from exc
