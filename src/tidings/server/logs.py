"""Logs: one JSON object per line (``log_format = "json"``), the access-log rule for
streaming routes, and the line each streaming connection leaves when it ends.

:func:`logging_config` is the one ``logging.config.dictConfig`` document
``tidings serve`` applies, and hands to uvicorn as its ``log_config``: Tidings'
loggers and uvicorn's are formatted the same way. Access lines of streaming
routes (``/sse``, ``/ws``, ``/api/stream/…``, ``/v1/streams/…``,
``/v1/chat/completions``, ``/v1/ai-sdk/chat…``) are left out unless ``access_log_streams`` is set:
a stream's access line says only that it opened, and :func:`log_closed` says
more when it ends.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import orjson

from tidings.settings import Settings

__all__ = ["STREAM_PATHS", "JSONFormatter", "StreamAccessFilter", "log_closed", "logging_config"]

#: Paths (exact, or a prefix when they end with ``/``) of the streaming routes.
STREAM_PATHS: Final = (
    "/sse",
    "/sse/",
    "/ws",
    "/api/stream/",
    "/v1/streams/",
    "/v1/chat/completions",
    "/v1/ai-sdk/chat",
    "/v1/ai-sdk/chat/",
)
#: Where connection ends are logged.
CONNECTIONS: Final = logging.getLogger("tidings.connections")
#: Reasons for which a connection end is logged at INFO (the server chose to end
#: it); a peer leaving, an owner closing and a shutdown are logged at DEBUG.
NOTABLE_REASONS: Final = frozenset({"slow_consumer", "expired", "error"})

#: The attributes every LogRecord has; anything else was passed as ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}
#: The fields of uvicorn's access-log arguments.
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JSONFormatter(logging.Formatter):
    """Formats a record as one JSON object: ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, ``message``, the record's ``extra`` fields, and ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            document.update(zip(_ACCESS_FIELDS, record.args, strict=False))
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in document:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(document, default=str).decode()


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def is_stream_path(path: str) -> bool:
    """Whether ``path`` (a query string allowed) is one of the streaming routes."""
    path = path.partition("?")[0]
    return any(
        path.startswith(prefix) if prefix.endswith("/") else path == prefix
        for prefix in STREAM_PATHS
    )


class StreamAccessFilter(logging.Filter):
    """Drops uvicorn's access lines (and WebSocket handshake lines) of streaming routes."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple):
            return True
        if record.name == "uvicorn.access" and len(args) >= 3:
            return not is_stream_path(str(args[2]))
        if isinstance(record.msg, str) and record.msg.startswith('%s - "WebSocket %s"'):
            return len(args) < 2 or not is_stream_path(str(args[1]))
        return True


def logging_config(settings: Settings) -> dict[str, Any]:
    """The ``dictConfig`` document for ``settings``: its level and format, for the
    root logger and uvicorn's loggers alike."""
    level = "TRACE" if settings.log_level == "trace" else settings.log_level.upper()
    json = settings.log_format == "json"
    if json:
        formatters: dict[str, Any] = {
            "default": {"()": JSONFormatter},
            "access": {"()": JSONFormatter},
        }
    else:
        formatters = {
            "default": {"format": "%(levelname)-8s %(name)s: %(message)s"},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
                "use_colors": False,
            },
        }
    filters = [] if settings.access_log_streams else ["streams"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"streams": {"()": StreamAccessFilter}},
        "formatters": formatters,
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
                "filters": filters,
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "access",
                "stream": "ext://sys.stderr" if json else "ext://sys.stdout",
                "filters": filters,
            },
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
        },
    }


def log_closed(
    transport: str, connection: str, channels: int, reason: str, **fields: object
) -> None:
    """Log that a streaming connection ended: at INFO when the server chose to end
    it (:data:`NOTABLE_REASONS`), at DEBUG otherwise. Costs one level test when off."""
    reason = str(reason)
    level = logging.INFO if reason in NOTABLE_REASONS else logging.DEBUG
    if CONNECTIONS.isEnabledFor(level):
        CONNECTIONS.log(
            level,
            "%s connection %s closed: %s",
            transport,
            connection,
            reason,
            extra={
                "connection": connection,
                "transport": transport,
                "channels": channels,
                "reason": reason,
                **fields,
            },
        )
