"""Python clients: they import ``tidings.wire`` only, never the hub or the server."""

from tidings.client.backoff import Backoff
from tidings.client.sse import ConnectionState, Message, Reset, SSEListener, listen

__all__ = ["Backoff", "ConnectionState", "Message", "Reset", "SSEListener", "listen"]
