"""LLM token streaming: providers and the relay that publishes generations to the hub.

No ASGI here: ``tidings.server.llm`` serves ``/v1/chat/completions`` and
``/v1/streams/{id}`` on top of :class:`Relay`.
"""

from tidings.llm.chunks import Completion, Delta, build_chunk, error_object
from tidings.llm.config import LLMConfig, ProviderConfig, ProviderRouter
from tidings.llm.providers.base import Provider
from tidings.llm.providers.demo import DemoProvider
from tidings.llm.record import GenerationRecord
from tidings.llm.relay import CHANNEL_PREFIX, Generation, LLMStats, OnComplete, Relay, Status
from tidings.llm.request import ChatRequest, RequestLimits, validate_request
from tidings.llm.snapshot import ChunkMerger, Snapshot, merge_chunks, take_snapshot

__all__ = [
    "CHANNEL_PREFIX",
    "ChatRequest",
    "ChunkMerger",
    "Completion",
    "Delta",
    "DemoProvider",
    "Generation",
    "GenerationRecord",
    "LLMConfig",
    "LLMStats",
    "OnComplete",
    "Provider",
    "ProviderConfig",
    "ProviderRouter",
    "Relay",
    "RequestLimits",
    "Snapshot",
    "Status",
    "build_chunk",
    "error_object",
    "merge_chunks",
    "take_snapshot",
    "validate_request",
]
