"""client/_reconnect.py: the listeners' state machine, driven by hand with no sockets."""

from __future__ import annotations

import random

import pytest

from tests.support.socket_client import RecordingBackoff
from tidings.client._reconnect import (
    ConnectionState,
    Message,
    ReconnectingStream,
    Verdict,
    convert,
    stream_url,
)
from tidings.client.backoff import Backoff
from tidings.errors import ReconnectExhausted, StreamRejected
from tidings.types import Position
from tidings.wire.reset import Reset
from tidings.wire.sse import SSEEvent

SSE = "text/event-stream; charset=utf-8"


def stream(
    *, last_event_id: str = "", backoff: Backoff | None = None
) -> tuple[ReconnectingStream, list[ConnectionState]]:
    states: list[ConnectionState] = []
    core = ReconnectingStream(
        "http://h/sse?channel=a",
        last_event_id=last_event_id,
        backoff=backoff or Backoff(rng=random.Random(1)),
        headers={"authorization": "Bearer t"},
        on_state=states.append,
    )
    return core, states


def drain(core: ReconnectingStream) -> list[Message | Reset]:
    items: list[Message | Reset] = []
    while (item := core.next_event()) is not None:
        items.append(item)
    return items


def test_stream_url() -> None:
    assert stream_url("http://h:1", ["a", "b c"]) == "http://h:1/sse?channel=a&channel=b+c"
    assert stream_url("http://h/", []) == "http://h/sse"
    assert stream_url("http://h/sse/a?x=1", ["b"]) == "http://h/sse/a?x=1&channel=b"


def test_request_headers_resume_from_the_last_event_id() -> None:
    core, _ = stream()
    assert core.request_headers() == {
        "accept": "text/event-stream",
        "cache-control": "no-cache",
        "authorization": "Bearer t",
    }
    core, _ = stream(last_event_id="a:e:3")
    assert core.request_headers()["last-event-id"] == "a:e:3"


@pytest.mark.parametrize(
    ("status", "content_type", "verdict"),
    [
        (200, SSE, Verdict.OPEN),
        (200, "text/html", Verdict.RETRY),
        (204, SSE, Verdict.RETRY),
        (500, SSE, Verdict.RETRY),
        (503, "text/plain", Verdict.RETRY),
        (400, "application/json", Verdict.REJECT),
        (401, "application/json", Verdict.REJECT),
        (403, "application/json", Verdict.REJECT),
        (404, "text/plain", Verdict.REJECT),
    ],
)
def test_responses_are_classified(status: int, content_type: str, verdict: Verdict) -> None:
    core, _ = stream()
    assert core.response_received(status, content_type) is verdict


def test_a_rejection_closes_for_good() -> None:
    core, states = stream()
    core.connect()
    assert core.response_received(403, "application/json") is Verdict.REJECT
    error = core.rejected(403, b'{"error": "no"}')
    assert isinstance(error, StreamRejected)
    assert (error.status, error.body) == (403, '{"error": "no"}')
    assert states == [ConnectionState.CONNECTING, ConnectionState.CLOSED]


def test_bytes_in_items_out_and_the_cursor_moves_item_by_item() -> None:
    core, states = stream()
    core.connect()
    assert core.response_received(200, SSE) is Verdict.OPEN
    core.receive_data(b"retry: 250\n\nid: a:e:1\ndata: 1\n\nid: a:e:2\nda")
    assert core.next_event() == Message("message", "1", "a:e:1", "a", Position("e", 1))
    assert core.last_event_id == "a:e:1"
    assert core.next_event() is None
    core.receive_data(b"ta: 2\n\nid: a:e:3\nevent: reset\n")
    core.receive_data(b'data: {"channel": "a", "epoch": "f", "offset": 0, "reason": "epoch"}\n\n')
    first, reset = drain(core)
    assert isinstance(first, Message)
    assert (first.offset, first.json()) == (2, 2)
    assert reset == Reset("a", Position("f", 0), "epoch")
    assert core.last_event_id == "a:e:3"
    assert core.backoff.upper(0) == 0.25  # retry: is honoured
    assert states == [ConnectionState.CONNECTING, ConnectionState.OPEN]


def test_an_id_only_block_moves_the_cursor_once_drained() -> None:
    core, _ = stream(last_event_id="a:e:1")
    core.response_received(200, SSE)
    core.receive_data(b"id: a:e:9\n\n")  # no data: no event, but the id counts (WHATWG)
    assert drain(core) == []
    assert core.last_event_id == "a:e:9"


def test_a_stream_that_drops_before_its_first_id_keeps_the_cursor() -> None:
    # WHATWG keeps the last event ID across reconnections: a stream that ends
    # after ``retry:`` but before any ``id:`` must not clear the resume cursor.
    core, _ = stream(last_event_id="a:e:5")
    core.response_received(200, SSE)
    core.receive_data(b"retry: 100\n\n")
    assert drain(core) == []
    assert core.last_event_id == "a:e:5"


def test_a_new_stream_starts_a_new_decoder() -> None:
    core, _ = stream()
    core.response_received(200, SSE)
    core.receive_data(b"id: a:e:1\ndata: half")  # the connection drops mid-event
    core.stream_ended(ConnectionError("cut"))
    core.response_received(200, SSE)
    core.receive_data(b"\n\n")
    assert drain(core) == []


def test_failed_connects_wait_then_give_up_with_the_last_error() -> None:
    backoff = RecordingBackoff(base=0.1, cap=1.0, max_attempts=2)
    core, states = stream(backoff=backoff)
    core.connect()
    first = OSError("refused")
    assert 0 <= core.connect_failed(first) <= 0.1
    assert 0 <= core.connect_failed(first) <= 0.2
    last = OSError("still refused")
    with pytest.raises(ReconnectExhausted) as caught:
        core.connect_failed(last)
    assert (caught.value.attempts, caught.value.last_error) == (2, last)
    assert states == [ConnectionState.CONNECTING, ConnectionState.CLOSED]
    assert [upper for _, upper in backoff.delays] == [0.1, 0.2]


def test_a_drop_reconnects_and_an_open_stream_resets_the_backoff() -> None:
    backoff = RecordingBackoff(base=0.1, cap=1.0, max_attempts=1)
    core, states = stream(backoff=backoff)
    core.connect()
    core.response_received(200, SSE)
    assert 0 <= core.stream_ended() <= 0.1
    core.connect()  # a reconnection stays RECONNECTING until it opens
    assert core.state is ConnectionState.RECONNECTING
    core.response_received(200, SSE)
    assert core.backoff.attempt == 0
    core.stream_ended(ConnectionError("cut"))
    with pytest.raises(ReconnectExhausted) as caught:
        core.stream_ended()
    assert caught.value.last_error is None
    assert states == [
        ConnectionState.CONNECTING,
        ConnectionState.OPEN,
        ConnectionState.RECONNECTING,
        ConnectionState.OPEN,
        ConnectionState.RECONNECTING,
        ConnectionState.CLOSED,
    ]


def test_close_reports_once() -> None:
    core, states = stream()
    core.close()
    core.connect()
    core.close()
    core.close()
    assert states == [ConnectionState.CONNECTING, ConnectionState.CLOSED]


def test_convert() -> None:
    message = convert(SSEEvent("x", "note", "b:e:4,a:e:1"))
    assert message == Message("note", "x", "b:e:4,a:e:1", "b", Position("e", 4))
    assert convert(SSEEvent("x", "message", "")).channel is None
    assert convert(SSEEvent("x", "message", "not a cursor")).position is None
    # A malformed reset is not a Reset; it is passed on as it came.
    broken = convert(SSEEvent("{}", "reset", ""))
    assert isinstance(broken, Message)
    assert broken.event == "reset"


# -- tokens ------------------------------------------------------------------------------------

EXPIRED = b'event: expired\ndata: {"reason": "token_expired"}\n\n'


def renewable(token: str | None = None) -> ReconnectingStream:
    return ReconnectingStream(
        "http://h/sse?channel=a", backoff=Backoff(), token=token, renewable=True
    )


def test_a_token_travels_as_a_bearer_header() -> None:
    core = ReconnectingStream("http://h/sse", backoff=Backoff(), token="abc")
    assert core.request_headers()["authorization"] == "Bearer abc"
    assert not core.needs_token  # no get_token: nothing to ask


def test_with_get_token_and_no_token_the_first_request_needs_one() -> None:
    core = renewable()
    assert core.needs_token
    core.set_token("t1")
    assert not core.needs_token
    assert core.request_headers()["authorization"] == "Bearer t1"
    assert not renewable("given").needs_token


def test_an_expired_event_is_not_handed_out_and_the_next_connection_needs_a_token() -> None:
    core = renewable("t1")
    core.connect()
    core.response_received(200, SSE)
    core.receive_data(b"id: a:e:1\ndata: 1\n\n" + EXPIRED)
    assert [item.id for item in drain(core)] == ["a:e:1"]
    assert core.last_event_id == "a:e:1"  # the expired event has no id: the cursor stays
    assert core.needs_token
    backoff_attempt = core.backoff.attempt
    assert core.stream_ended() == 0.0  # replaced at once, not after a backoff delay
    assert core.backoff.attempt == backoff_attempt
    assert core.state is ConnectionState.RECONNECTING
    core.set_token("t2")
    assert core.request_headers()["authorization"] == "Bearer t2"
    assert core.request_headers()["last-event-id"] == "a:e:1"
    assert core.response_received(200, SSE) is Verdict.OPEN
    core.stream_ended()  # a later plain end waits for the backoff as before
    assert core.backoff.attempt == 1


def test_an_expired_event_without_get_token_reconnects_with_the_same_token() -> None:
    core = ReconnectingStream("http://h/sse", backoff=Backoff(), token="t1")
    core.response_received(200, SSE)
    core.receive_data(EXPIRED)
    assert drain(core) == []
    assert not core.needs_token
    assert core.stream_ended() == 0.0
    # The server refuses the expired token: final, as any 401 without get_token.
    assert core.response_received(401, "application/json") is Verdict.REJECT


def test_a_401_asks_for_a_new_token_once_then_is_final() -> None:
    core = renewable("stale")
    core.connect()
    assert core.response_received(401, "application/json") is Verdict.RENEW
    assert core.needs_token
    core.set_token("fresh")
    assert core.response_received(401, "application/json") is Verdict.REJECT
    assert core.rejected(401, b"no").status == 401
    assert core.state is ConnectionState.CLOSED


def test_a_fresh_token_that_opened_a_stream_may_be_renewed_later() -> None:
    core = renewable()
    core.set_token("t1")
    assert core.response_received(200, SSE) is Verdict.OPEN
    core.stream_ended(ConnectionError("cut"))
    assert core.response_received(401, "application/json") is Verdict.RENEW


def test_a_failed_connect_uses_up_the_freshness_of_a_token() -> None:
    # A long outage may outlive a token fetched before it: ask again once.
    core = renewable()
    core.connect()
    core.set_token("t1")
    core.connect_failed(OSError("refused"))
    assert core.response_received(401, "application/json") is Verdict.RENEW


def test_a_403_is_final_even_with_get_token() -> None:
    core = renewable("t1")
    assert core.response_received(403, "application/json") is Verdict.REJECT
    assert not core.needs_token


def test_message_type_is_a_deprecated_name_of_event() -> None:
    message = convert(SSEEvent("1", event="note", id="c:e:1"))
    assert isinstance(message, Message)
    with pytest.warns(DeprecationWarning, match=r"Message\.type is deprecated.*Message\.event"):
        assert message.type == message.event == "note"
