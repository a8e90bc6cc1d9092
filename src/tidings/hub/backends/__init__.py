"""Backends: where offsets and history live (memory by default, Redis to scale out)."""

from tidings.hub.backends.base import Backend, ChannelInfo, History, Listener
from tidings.hub.backends.memory import MemoryBackend

__all__ = ["Backend", "ChannelInfo", "History", "Listener", "MemoryBackend"]
