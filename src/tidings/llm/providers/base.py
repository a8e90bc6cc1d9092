"""The Provider interface: a chat request in, an async iterator of deltas out.

Also :func:`display_url`, the one way an upstream URL is written into a
message or a log line: without its credentials.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from tidings.llm.chunks import Delta
from tidings.llm.request import ChatRequest

__all__ = ["Provider", "display_url"]


def display_url(url: str) -> str:
    """``url`` as it may be shown in a message or a log: no user, password or query.

    A base URL may carry credentials (``https://user:password@host/v1``, or
    ``?api-key=…`` as some gateways take it); they are replaced, never shown.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = ("***@" if "@" in parts.netloc else "") + host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


@runtime_checkable
class Provider(Protocol):
    """Where generations come from.

    ``stream()`` returns an async generator of :class:`Delta` values. The
    relay consumes it under ``contextlib.aclosing``: when a generation is
    cancelled, the generator is closed at once and must release what it
    holds (an OpenAI-compatible provider closes its upstream HTTP request).
    A provider may also have a ``check(request)`` method, which the relay
    calls before the generation starts (before the response's headers):
    it raises :class:`~tidings.errors.InvalidChatRequest` for a request
    the provider cannot send, which is then a plain HTTP 400. What the
    upstream refuses comes later, in the stream.

    Raises (from the iterator):
        UpstreamError: the upstream refused the request or failed mid-stream.
        UpstreamTimeout: the upstream did not answer in time.
    """

    name: str

    def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        """Generate the answer to ``request``."""
        ...

    async def models(self) -> list[str]:
        """The model names this provider serves (for ``GET /v1/models``).

        Raises:
            UpstreamError: the upstream could not be asked.
        """
        ...

    async def aclose(self) -> None:
        """Release shared resources (connection pools)."""
        ...
