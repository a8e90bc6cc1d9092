"""wire/codes.py: the one table of error codes and close codes, and its ranges."""

from __future__ import annotations

import pytest

from tidings.wire.codes import CloseCode, ErrorCode, should_reconnect


def test_every_error_code_is_its_wire_string() -> None:
    for code in ErrorCode:
        assert code.value == code.name.lower()
        assert str(code) == code.value
        assert ErrorCode(code.value) is code


def test_error_codes_are_unique() -> None:
    assert len({code.value for code in ErrorCode}) == len(ErrorCode)


def test_close_codes_are_unique_and_in_the_ranges_a_server_may_send() -> None:
    values = [int(code) for code in CloseCode]
    assert len(values) == len(set(values))
    for code in CloseCode:
        assert 1000 <= code < 1016 or 4000 <= code < 5000, code


@pytest.mark.parametrize("code", [code for code in CloseCode if 4000 <= code < 4500])
def test_4000_to_4499_reconnects(code: CloseCode) -> None:
    assert should_reconnect(code)


@pytest.mark.parametrize("code", [code for code in CloseCode if 4500 <= code < 5000])
def test_4500_to_4999_is_terminal(code: CloseCode) -> None:
    assert not should_reconnect(code)


@pytest.mark.parametrize("code", [4000, 4499, 4500, 4999])
def test_range_bounds_hold_for_codes_without_a_name(code: int) -> None:
    assert should_reconnect(code) is (code < 4500)


def test_protocol_failures_are_terminal_and_restarts_are_not() -> None:
    for code in (CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_DATA, CloseCode.MESSAGE_TOO_BIG):
        assert not should_reconnect(code)
    for code in (
        CloseCode.NORMAL,
        CloseCode.GOING_AWAY,
        CloseCode.ABNORMAL_CLOSURE,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
    ):
        assert should_reconnect(code)


def test_the_close_code_ranges_as_before() -> None:
    # Moved from test_errors.py with its assertions.
    for code in CloseCode:
        if 4000 <= code < 4500:
            assert should_reconnect(code), code
        elif 4500 <= code < 5000:
            assert not should_reconnect(code), code
    assert should_reconnect(CloseCode.SERVICE_RESTART)
    assert not should_reconnect(CloseCode.MESSAGE_TOO_BIG)
