"""LLM providers: the interface, the built-in demo, and OpenAI-compatible upstreams.

``OpenAIProvider`` lives in ``tidings.llm.providers.openai`` (it needs httpx).
"""

from tidings.llm.providers.base import Provider, display_url
from tidings.llm.providers.demo import DemoProvider

__all__ = ["DemoProvider", "Provider", "display_url"]
