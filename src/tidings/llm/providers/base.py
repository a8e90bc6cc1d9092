"""The Provider interface: a chat request in, an async iterator of deltas out."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable

from tidings.llm.chunks import Delta
from tidings.llm.request import ChatRequest

__all__ = ["Provider"]


@runtime_checkable
class Provider(Protocol):
    """Where generations come from.

    ``stream()`` returns an async generator of :class:`Delta` values. The
    relay consumes it under ``contextlib.aclosing``: when a generation is
    cancelled, the generator is closed at once and must release what it
    holds (an OpenAI-compatible provider closes its upstream HTTP request).
    The first delta should come once the upstream has accepted the request,
    so that a refusal can still be answered with an HTTP error status.

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
