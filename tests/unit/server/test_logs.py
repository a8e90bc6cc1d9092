"""JSON log lines, the access-log rule for streaming routes, connection-end lines."""

from __future__ import annotations

import io
import logging
import logging.config
import sys
import time

import orjson
import pytest

from tidings.server.logs import (
    JSONFormatter,
    StreamAccessFilter,
    is_stream_path,
    log_closed,
    logging_config,
)
from tidings.settings import Settings, SettingsError


def record(name: str, msg: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    made.__dict__.update(extra)
    return made


def test_a_record_is_one_json_object_with_its_extra_fields() -> None:
    line = JSONFormatter().format(
        record("tidings.connections", "closed %s", "ws-1", connection="ws-1", channels=3)
    )
    assert "\n" not in line
    document = orjson.loads(line)
    assert document["level"] == "info"
    assert document["logger"] == "tidings.connections"
    assert document["message"] == "closed ws-1"
    assert document["connection"] == "ws-1"
    assert document["channels"] == 3
    assert time.strptime(document["time"], "%Y-%m-%dT%H:%M:%S.%fZ")


def test_an_exception_stays_on_the_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        made = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
        made.exc_info = sys.exc_info()
    line = JSONFormatter().format(made)
    assert line.count("\n") == 0
    assert "ValueError: boom" in orjson.loads(line)["exception"]


def test_uvicorn_access_arguments_become_fields() -> None:
    access = record(
        "uvicorn.access", '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/api/stats", "1.1", 200
    )
    document = orjson.loads(JSONFormatter().format(access))
    assert document["method"] == "GET"
    assert document["path"] == "/api/stats"
    assert document["status"] == 200
    assert document["client"] == "127.0.0.1:5"


@pytest.mark.parametrize(
    ("path", "stream"),
    [
        ("/sse", True),
        ("/sse?channel=a", True),
        ("/sse/chat:a", True),
        ("/ws", True),
        ("/v1/streams/chatcmpl-1", True),
        ("/api/stream/orders", True),
        ("/v1/chat/completions", True),
        ("/v1/ai-sdk/chat", True),
        ("/v1/ai-sdk/chat/chat-1/stream", True),
        ("/v1/ai-sdkx", False),
        ("/api/stats", False),
        ("/api/publish", False),
        ("/metrics", False),
        ("/ssex", False),
        ("/wsx", False),
    ],
)
def test_stream_paths(path: str, stream: bool) -> None:
    assert is_stream_path(path) is stream


def test_the_filter_drops_stream_access_lines_only() -> None:
    keep = StreamAccessFilter().filter
    access = '%s - "%s %s HTTP/%s" %d'
    assert not keep(record("uvicorn.access", access, "c", "GET", "/sse?channel=a", "1.1", 200))
    assert keep(record("uvicorn.access", access, "c", "POST", "/api/publish", "1.1", 200))
    assert not keep(record("uvicorn.error", '%s - "WebSocket %s" [accepted]', "c", "/ws"))
    assert keep(record("uvicorn.error", "Started server process [%d]", 1))


def configure(settings: Settings) -> io.StringIO:
    stream = io.StringIO()
    config = logging_config(settings)
    for handler in config["handlers"].values():
        handler["stream"] = stream
    logging.config.dictConfig(config)
    return stream


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    names = ("uvicorn", "uvicorn.access", "uvicorn.error")
    loggers = {name: logging.getLogger(name) for name in names}
    kept = {name: (lg.level, list(lg.handlers), lg.propagate) for name, lg in loggers.items()}
    yield None
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, (level, handlers, propagate) in kept.items():
        loggers[name].setLevel(level)
        loggers[name].handlers[:] = handlers
        loggers[name].propagate = propagate


@pytest.mark.usefixtures("restore_logging")
def test_json_configuration_formats_ours_and_uvicorns_alike() -> None:
    stream = configure(Settings(log_format="json", log_level="debug"))
    access = '%s - "%s %s HTTP/%s" %d'
    logging.getLogger("uvicorn.access").info(access, "c", "GET", "/sse", "1.1", 200)
    logging.getLogger("uvicorn.access").info(access, "c", "GET", "/api/stats", "1.1", 200)
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 7)
    log_closed("sse", "sse-9", 2, "slow_consumer")
    log_closed("ws", "abc", 1, "disconnect", code=1001)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == [
        "uvicorn.access",
        "uvicorn.error",
        "tidings.connections",
        "tidings.connections",
    ]
    assert lines[0]["path"] == "/api/stats"
    assert lines[2]["level"] == "info"  # the server chose to end it
    assert lines[2] | {"time": None} == lines[2] | {
        "time": None,
        "connection": "sse-9",
        "transport": "sse",
        "channels": 2,
        "reason": "slow_consumer",
    }
    assert lines[3]["level"] == "debug"
    assert lines[3]["code"] == 1001


@pytest.mark.usefixtures("restore_logging")
def test_stream_access_lines_are_kept_when_asked() -> None:
    stream = configure(Settings(log_format="json", access_log_streams=True))
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "c", "GET", "/ws", "1.1", 101
    )
    assert orjson.loads(stream.getvalue())["path"] == "/ws"


@pytest.mark.usefixtures("restore_logging")
def test_connection_ends_cost_nothing_below_their_level() -> None:
    stream = configure(Settings(log_format="text", log_level="info"))
    log_closed("ws", "abc", 1, "disconnect")
    assert stream.getvalue() == ""
    log_closed("ws", "abc", 1, "expired")
    assert "ws connection abc closed: expired" in stream.getvalue()


def test_log_format_is_checked() -> None:
    with pytest.raises(SettingsError, match="log_format must be one of text, json"):
        Settings(log_format="xml")
