"""Python clients: they import ``tidings.wire`` only, never the hub or the server."""

from tidings.client.backoff import Backoff
from tidings.client.sse import ConnectionState, Message, Reset, SSEListener, listen
from tidings.client.sync import SyncListener, apublish, listen_sync, publish

__all__ = [
    "Backoff",
    "ConnectionState",
    "Message",
    "Reset",
    "SSEListener",
    "SyncListener",
    "apublish",
    "listen",
    "listen_sync",
    "publish",
]
