"""DemoProvider: a deterministic answer with realistic token timing, no network.

It is the default when no upstream is configured, so that ``tidings serve``
shows token streaming, resume and cancellation with no key. The answer
depends only on the prompt; the pauses between tokens vary the way a real
model's do (a slower first token, then a steady rate with some jitter), but
deterministically.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncGenerator

from tidings.llm.chunks import Delta
from tidings.llm.request import ChatRequest

__all__ = ["DemoProvider"]

_TOKEN = re.compile(r"\s*\S+")
_ANSWER = (
    'You asked: "{prompt}". This answer comes from the Tidings demo provider, one token '
    "at a time, the way a language model streams. Every token is also published to the "
    "channel llm:<stream id>, so you can reload this page mid-answer and the stream resumes where "
    "it stopped, with nothing lost and nothing repeated. Close every viewer and, after a "
    "grace period, the generation is cancelled and its upstream request closed. Configure "
    "an OpenAI-compatible upstream (OpenAI, vLLM, Ollama, llama.cpp) to relay a real model "
    "the same way."
)


class DemoProvider:
    """Streams a fixed answer built from the prompt.

    Args:
        first_token_delay: Seconds before the first token.
        token_interval: Mean seconds between tokens (each pause varies by ±50 %).
        answer: The answer template; ``{prompt}`` is replaced by the last user message.
    """

    def __init__(
        self,
        *,
        name: str = "demo",
        first_token_delay: float = 0.3,
        token_interval: float = 0.04,
        answer: str = _ANSWER,
    ) -> None:
        if first_token_delay < 0 or token_interval < 0:
            raise ValueError("demo delays must be >= 0 seconds")
        self.name = name
        self.first_token_delay = first_token_delay
        self.token_interval = token_interval
        self.answer = answer

    def tokens(self, request: ChatRequest) -> list[str]:
        """The answer to ``request``, split into tokens."""
        prompt = " ".join(request.prompt.split())[:200] or "nothing"
        text = self.answer.replace("{prompt}", prompt)
        return _TOKEN.findall(text)

    def _pauses(self, tokens: list[str]) -> list[float]:
        digest = hashlib.sha256("".join(tokens).encode()).digest()
        interval = self.token_interval
        return [interval * (0.5 + digest[i % len(digest)] / 255) for i in range(len(tokens))]

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        tokens = self.tokens(request)
        limit = request.max_tokens
        truncated = limit is not None and len(tokens) > limit
        if truncated:
            tokens = tokens[:limit]
        pauses = self._pauses(tokens)
        yield Delta(role="assistant", content="")
        await asyncio.sleep(self.first_token_delay)
        for index, token in enumerate(tokens):
            if index:
                await asyncio.sleep(pauses[index])
            yield Delta(content=token)
        yield Delta(finish_reason="length" if truncated else "stop")
        prompt_tokens = sum(
            len(_TOKEN.findall(str(message.get("content") or ""))) for message in request.messages
        )
        yield Delta(
            usage={
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(tokens),
                "total_tokens": prompt_tokens + len(tokens),
            }
        )

    async def models(self) -> list[str]:
        return [self.name]

    async def aclose(self) -> None:
        return None
