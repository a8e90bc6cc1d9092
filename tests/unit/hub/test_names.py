"""hub/names.py: channel names, event types, namespaces and their options."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import InvalidChannel, InvalidPublication
from tidings.hub.names import (
    MAX_CHANNEL_LENGTH,
    NamespaceOptions,
    Namespaces,
    namespace_of,
    validate_channel,
    validate_event_type,
)

ALLOWED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:.@/-"
NAME = re.compile(r"[A-Za-z0-9_:.@/-]{1,255}")


@given(st.text(alphabet=ALLOWED, min_size=1, max_size=MAX_CHANNEL_LENGTH))
def test_every_name_of_the_allowed_characters_is_valid(name: str) -> None:
    assert validate_channel(name) is name


@given(st.text(max_size=300))
def test_a_name_is_valid_exactly_when_it_matches_the_documented_pattern(name: str) -> None:
    if NAME.fullmatch(name):
        assert validate_channel(name) == name
    else:
        with pytest.raises(InvalidChannel) as caught:
            validate_channel(name)
        assert caught.value.channel == name


@given(
    st.text(alphabet=ALLOWED, max_size=10),
    st.characters(exclude_characters=ALLOWED),
    st.text(alphabet=ALLOWED, max_size=10),
)
def test_the_reason_names_the_first_bad_character(before: str, bad: str, after: str) -> None:
    with pytest.raises(InvalidChannel) as caught:
        validate_channel(before + bad + after)
    assert caught.value.reason.startswith(f"contains {bad!r}")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "is empty"),
        ("x" * (MAX_CHANNEL_LENGTH + 1), "is longer than 255 characters"),
        (5, "must be a string, not int"),
        (None, "must be a string, not NoneType"),
    ],
)
def test_each_kind_of_bad_name_gets_its_reason(name: object, reason: str) -> None:
    with pytest.raises(InvalidChannel) as caught:
        validate_channel(name)
    assert isinstance(caught.value, ValueError)
    assert (caught.value.channel, caught.value.reason) == (name, reason)


def test_event_types_are_checked_and_the_hubs_own_are_reserved() -> None:
    for good in ("message", "update", "a.b:c@d/e-f_g", "x" * 64):
        assert validate_event_type(good) == good
    for bad in ("", "x" * 65, "has space", "é", 7):
        with pytest.raises(InvalidPublication, match="must be 1-64"):
            validate_event_type(bad)
    for reserved in ("reset", "error", "join", "leave", "expired"):
        with pytest.raises(InvalidPublication, match="reserved"):
            validate_event_type(reserved)


@pytest.mark.parametrize(
    ("channel", "namespace"),
    [("chat:room1", "chat"), ("a:b:c", "a"), ("plain", ""), (":x", ""), ("chat:", "chat")],
)
def test_the_namespace_is_the_part_before_the_first_colon(channel: str, namespace: str) -> None:
    assert namespace_of(channel) == namespace


def test_options_are_looked_up_by_namespace_with_a_default() -> None:
    chat = NamespaceOptions(history_size=10, publish=False)
    plain = NamespaceOptions(history_ttl=5)
    namespaces = Namespaces(by_name={"chat": chat, "": plain})
    assert namespaces.options("chat:room1") is chat
    assert namespaces.options("chat") is plain  # no colon: the default namespace ""
    assert namespaces.options("news:1") == NamespaceOptions()
    assert Namespaces(chat).options("anything:at:all") is chat


def test_namespace_options_refuse_impossible_values() -> None:
    with pytest.raises(ValueError, match="history_size must be >= 0"):
        NamespaceOptions(history_size=-1)
    with pytest.raises(ValueError, match="history_ttl must be > 0 seconds"):
        NamespaceOptions(history_ttl=0)
    assert NamespaceOptions(history_size=0).history_size == 0
    for bad in ("a:b", "has space", "é"):
        with pytest.raises(ValueError, match="invalid namespace name"):
            Namespaces(by_name={bad: NamespaceOptions()})
