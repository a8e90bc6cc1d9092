"""Server-Sent Events, sans I/O: the encoders and an incremental ``SSEDecoder``.

The decoder follows the WHATWG HTML standard, section "Interpreting an event
stream" (https://html.spec.whatwg.org/multipage/server-sent-events.html), rule
by rule; the comments quote it. It takes bytes in any split and returns the
events that became complete, so the same code serves a socket, a test and a
fuzzer. Every ``data:``, ``event:`` and ``id:`` line and the ``: ping``
comment Tidings writes comes from here: ``encode_event()`` for values it
checks, and the bytes-level ``encode_data()``, ``encode_id()`` and ``PING``
for the frames the server builds once per event.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from tidings.errors import FrameTooLarge
from tidings.types import deprecated_name

__all__ = [
    "PING",
    "SSEDecoder",
    "SSEEvent",
    "encode_comment",
    "encode_data",
    "encode_event",
    "encode_id",
]

_FORBIDDEN = ("\r", "\n", "\0")


def _check_field(name: str, value: str) -> None:
    for char in _FORBIDDEN:
        if char in value:
            raise ValueError(f"SSE {name} must not contain {char!r}: {value[:80]!r}")


def _lines(text: str) -> list[str]:
    # CRLF, CR and LF all end a line in an event stream; split on each so that
    # the decoder sees exactly the lines that were given.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def encode_event(
    data: str | bytes | None = None,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """Encode one event-stream block, ending with the blank line that dispatches it.

    Args:
        data: The event data. Every line of it becomes one ``data:`` line, so
            the decoder rebuilds it exactly (line endings become ``\\n``).
            ``None`` writes no ``data:`` line: the block then only sets
            fields (``id``, ``retry``) and dispatches nothing.
        event: The event type; ``None`` or ``"message"`` writes no ``event:`` line.
        id: The event id, which becomes the client's ``Last-Event-ID``.
        retry: The reconnection delay in milliseconds.
        comment: A comment, one ``:`` line per line of it.

    Raises:
        ValueError: ``id`` or ``event`` contains CR, LF or NUL (they would end
            the field early or, for ``id``, make the client ignore it), or
            ``retry`` is negative.
        UnicodeDecodeError: ``data`` is bytes that are not UTF-8.
    """
    head = b""
    if comment is not None:
        head += "".join(f": {line}\n" if line else ":\n" for line in _lines(comment)).encode()
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise ValueError(f"SSE retry must be a non-negative int of milliseconds: {retry!r}")
        head += b"retry: %d\n" % retry
    if id is not None:
        _check_field("id", id)
        head += encode_id(id.encode("utf-8"))
    if event is None:
        event = "message"
    elif event != "message":
        _check_field("event", event)
    if data is None:
        # Fields only: the blank line dispatches nothing (the data buffer is empty).
        if event != "message":
            head += b"event: %b\n" % event.encode("utf-8")
        return head + b"\n"
    if isinstance(data, str):
        raw = data.encode("utf-8")
    else:
        data.decode("utf-8")  # refuse bytes that are not UTF-8, as a str would be
        raw = data
    return head + encode_data(raw, event=event)


def encode_comment(text: str = "") -> bytes:
    """Encode a comment block such as ``: ping``, which clients ignore."""
    return encode_event(comment=text)


# The bytes-level helpers below are what the server's hot path uses: each is
# one or two bytes operations, no str round trip. Their inputs are already
# valid (UTF-8 data as published, an event type and a cursor the hub and
# wire/cursor.py made), so they do not check them again; encode_event() does.

#: The keepalive comment, ``: ping``: it keeps proxies from timing out an idle
#: stream and is ignored by every client.
PING = b": ping\n\n"


def encode_id(cursor: bytes) -> bytes:
    """The ``id:`` line of ``cursor``, to put in front of a block without one.

    ``cursor`` must not contain CR, LF or NUL (wire/cursor.py never writes them).
    """
    return b"id: %b\n" % cursor


def encode_data(data: bytes, *, event: str = "message", id: bytes | None = None) -> bytes:
    """An event block: ``id:``, ``event:``, one ``data:`` line per line of ``data``, a blank line.

    The bytes twin of ``encode_event(data, event=event, id=id)`` (same output)
    for data that is UTF-8 already, such as an event's JSON or text as
    published. The block is built in one formatting step.

    Args:
        data: The event data; CRLF, CR and LF each end a line of it.
        event: The event type, ``"message"`` for none (no ``event:`` line).
            It must not contain CR, LF or NUL (the hub's event types never do).
        id: The event id, such as a cursor from wire/cursor.py; ``None``
            writes no ``id:`` line. It must not contain CR, LF or NUL.
    """
    if 10 in data or 13 in data:  # LF or CR; orjson never writes either raw
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\ndata: ")
    if event == "message":
        if id is None:
            return b"data: %b\n\n" % data
        return b"id: %b\ndata: %b\n\n" % (id, data)
    if id is None:
        return b"event: %b\ndata: %b\n\n" % (event.encode("utf-8"), data)
    return b"id: %b\nevent: %b\ndata: %b\n\n" % (id, event.encode("utf-8"), data)


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event.

    ``event`` is the event type (the ``event:`` field, ``"message"`` when
    the block has none). ``id`` is the stream's last event id when the event
    was dispatched, which is what a browser shows as ``MessageEvent.lastEventId``.
    """

    data: str
    event: str = "message"
    id: str = ""

    @property
    def type(self) -> str:
        """Deprecated name of :attr:`event`."""
        deprecated_name("SSEEvent.type", "SSEEvent.event")
        return self.event


class SSEDecoder:
    """Incremental event-stream parser.

    ``feed(chunk)`` returns the events completed by ``chunk``; ``feed_eof()``
    ends the stream. ``last_event_id`` and ``retry`` (milliseconds, or
    ``None``) hold the stream state a reconnecting client needs.

    Args:
        last_event_id: Where the stream starts: a reconnecting client passes
            the id it resumes from, which stays the last event id until the
            stream sends one ("the last event ID string of the event source
            remains set" across reconnections, WHATWG 9.2.3).
        max_event_bytes: Refuse (with :class:`~tidings.errors.FrameTooLarge`)
            a line or an event larger than this many characters, so that a
            stream without line breaks cannot grow memory without bound.
            ``None`` means no limit.
    """

    def __init__(self, *, last_event_id: str = "", max_event_bytes: int | None = None) -> None:
        # "UTF-8 decode": invalid sequences become U+FFFD, a leading BOM is
        # removed (handled in _strip_bom so that it also works byte by byte).
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._limit = max_event_bytes
        self._bom_checked = False
        self._line = ""
        self._pending_cr = False
        self._data: list[str] = []
        self._data_size = 0
        self._type = ""
        self._id_buffer = last_event_id
        self.last_event_id = last_event_id
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse ``chunk`` and return the events it completed."""
        text = self._decoder.decode(chunk)
        if text and not self._bom_checked:
            text = self._strip_bom(text)
        if not text:
            return []
        # The usual chunk of a token stream is one whole "data: …" line and
        # the blank line after it, with nothing pending: one event, no line loop.
        if (
            text.endswith("\n\n")
            and text.startswith("data: ")
            and text.find("\n") == len(text) - 2
            and "\r" not in text
            and not (self._line or self._data or self._type or self._pending_cr)
        ):
            self._check_size(len(text) - 2)  # the line; its data is shorter
            self.last_event_id = self._id_buffer
            return [SSEEvent(data=text[6:-2], id=self.last_event_id)]
        return self._feed_text(text)

    def feed_eof(self) -> list[SSEEvent]:
        """End the stream.

        "Once the end of the file is reached, any pending data must be
        discarded. (If the file ends in the middle of an event, before the
        final empty line, the incomplete event is not dispatched.)"
        """
        tail = self._decoder.decode(b"", final=True)
        if tail and not self._bom_checked:
            tail = self._strip_bom(tail)
        events = self._feed_text(tail) if tail else []
        self._line = ""
        self._data = []
        self._data_size = 0
        self._type = ""
        self._pending_cr = False
        return events

    def _strip_bom(self, text: str) -> str:
        # A BOM split across chunks reaches here only once complete, because
        # the incremental UTF-8 decoder holds back partial sequences.
        self._bom_checked = True
        return text[1:] if text.startswith("\ufeff") else text

    def _feed_text(self, text: str) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if self._pending_cr:
            # A CR ended the previous chunk; a LF starting this one belongs
            # to the same CRLF line ending.
            self._pending_cr = False
            if text.startswith("\n"):
                text = text[1:]
        start = 0
        length = len(text)
        while start < length:
            cr = text.find("\r", start)
            lf = text.find("\n", start)
            if cr < 0 and lf < 0:
                self._line += text[start:]
                self._check_size(len(self._line))
                break
            if cr < 0 or (0 <= lf < cr):
                end, next_start = lf, lf + 1
            else:
                end, next_start = cr, cr + 1
                if cr + 1 < length:
                    if text[cr + 1] == "\n":
                        next_start = cr + 2
                else:
                    self._pending_cr = True
            line = self._line + text[start:end] if self._line else text[start:end]
            self._line = ""
            self._check_size(len(line))
            event = self._process_line(line)
            if event is not None:
                events.append(event)
            start = next_start
        return events

    def _check_size(self, size: int) -> None:
        if self._limit is not None and size > self._limit:
            raise FrameTooLarge(size, self._limit)

    def _process_line(self, line: str) -> SSEEvent | None:
        # "If the line is empty (a blank line): Dispatch the event."
        if not line:
            return self._dispatch()
        # "If the line starts with a U+003A COLON character (:): Ignore the line."
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        # "If value starts with a U+0020 SPACE character, remove it from value."
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_size += len(value) + 1
            self._check_size(self._data_size)
        elif name == "event":
            self._type = value
        elif name == "id":
            # "If the field value does not contain U+0000 NULL, then set the
            # last event ID buffer to the field value. Otherwise, ignore the field."
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            # "If the field value consists of only ASCII digits, then interpret
            # the field value as an integer in base ten [...]. Otherwise, ignore the field."
            self.retry = int(value)
        # "Otherwise: The field is ignored."
        return None

    def _dispatch(self) -> SSEEvent | None:
        # "1. Set the last event ID string of the event source to the value of
        # the last event ID buffer." This happens even when nothing is
        # dispatched, so an id-only block moves the resume point.
        self.last_event_id = self._id_buffer
        data, event_type = self._data, self._type
        self._data = []
        self._data_size = 0
        self._type = ""
        # "2. If the data buffer is an empty string, set the data buffer and
        # the event type buffer to the empty string and return."
        if not data:
            return None
        # "3. If the data buffer's last character is a U+000A LINE FEED (LF)
        # character, then remove the last character from the data buffer."
        # (Joining with LF is the same as appending LF per line then removing one.)
        return SSEEvent(data="\n".join(data), event=event_type or "message", id=self.last_event_id)
