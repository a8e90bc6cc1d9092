"""Python clients: they import ``tidings.wire`` only, never the hub or the server."""

from tidings.client.backoff import Backoff
from tidings.client.socket import Socket
from tidings.client.sse import ConnectionState, Message, Reset, SSEListener, listen
from tidings.client.subscription import HistoryPage, Member, Notice, SocketEvent, SocketSubscription
from tidings.client.sync import SyncListener, apublish, listen_sync, publish

__all__ = [
    "Backoff",
    "ConnectionState",
    "HistoryPage",
    "Member",
    "Message",
    "Notice",
    "Reset",
    "SSEListener",
    "Socket",
    "SocketEvent",
    "SocketSubscription",
    "SyncListener",
    "apublish",
    "listen",
    "listen_sync",
    "publish",
]
