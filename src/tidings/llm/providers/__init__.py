"""LLM providers: the interface, the built-in demo, OpenAI-compatible and Anthropic upstreams.

``OpenAIProvider`` lives in ``tidings.llm.providers.openai`` and
``AnthropicProvider`` in ``tidings.llm.providers.anthropic`` (they need httpx).
"""

from tidings.llm.providers.base import Provider, display_url
from tidings.llm.providers.demo import DemoProvider

__all__ = ["DemoProvider", "Provider", "display_url"]
