"""server/recent_errors.py: a bounded ring of the newest warnings and errors."""

from __future__ import annotations

import logging

import pytest

from tidings.server.recent_errors import MAX_MESSAGE_CHARS, RECENT_ERRORS, RecentErrors


def test_keeps_the_newest_warnings_and_errors_of_tidings_and_uvicorn() -> None:
    ring = RecentErrors(size=3)
    ring.attach()
    try:
        logging.getLogger("tidings.test").info("not kept")
        for n in range(4):
            logging.getLogger("tidings.test").warning("warning %d", n)
        logging.getLogger("uvicorn.error").error("from uvicorn")
        logging.getLogger("elsewhere").error("not ours")
    finally:
        ring.detach()
    logging.getLogger("tidings.test").warning("after detach")
    assert [entry["message"] for entry in ring.entries()] == [
        "from uvicorn",
        "warning 3",
        "warning 2",
    ]
    assert ring.total == 5
    assert ring.size == 3
    assert ring.entries(1)[0] | {"time": 0} == {
        "time": 0,
        "level": "error",
        "logger": "uvicorn.error",
        "message": "from uvicorn",
    }


def test_an_exception_is_kept_as_its_type_and_message_and_long_text_is_cut() -> None:
    ring = RecentErrors()
    assert ring.size == RECENT_ERRORS
    logger = logging.getLogger("tidings.test.ring")
    logger.addHandler(ring)
    try:
        try:
            raise ValueError("x" * 5000)
        except ValueError:
            logger.exception("failed %s", "y" * 5000)
    finally:
        logger.removeHandler(ring)
    # A record whose arguments do not fit its format is kept, unformatted.
    ring.emit(logging.LogRecord("tidings.x", logging.WARNING, "", 0, "bad format %d", ("x",), None))
    bad_format, failed = ring.entries()
    assert len(failed["message"]) == MAX_MESSAGE_CHARS
    assert failed["exception"].startswith("ValueError: xxx")
    assert len(failed["exception"]) == MAX_MESSAGE_CHARS
    assert "Traceback" not in failed["exception"]
    assert bad_format["message"] == "bad format %d"


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="size must be > 0"):
        RecentErrors(size=0)
