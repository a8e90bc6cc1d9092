"""The client address behind trusted proxies: X-Forwarded-For only as far as it is trusted."""

from __future__ import annotations

import ipaddress

import pytest

from tidings.server.peer import PEER_STATE, Peers
from tidings.settings import Settings, SettingsError


def scope(peer: str | None, *forwarded: str) -> dict[str, object]:
    return {
        "type": "http",
        "client": (peer, 4711) if peer is not None else None,
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
    }


def peers(text: str) -> Peers:
    return Peers(Settings(trusted_proxies=text).trusted_networks())


def test_with_no_trusted_proxy_the_header_is_ignored() -> None:
    assert Peers().address(scope("127.0.0.1", "203.0.113.9")) == "127.0.0.1"


def test_a_trusted_proxy_gives_the_address_it_saw() -> None:
    assert peers("127.0.0.1").address(scope("127.0.0.1", "203.0.113.9")) == "203.0.113.9"


def test_a_client_cannot_choose_its_address_through_a_trusted_proxy() -> None:
    # The client sent "1.2.3.4" itself; the proxy appended the address it saw.
    trusted = peers("10.0.0.0/8")
    assert trusted.address(scope("10.0.0.5", "1.2.3.4, 198.51.100.7")) == "198.51.100.7"
    assert trusted.address(scope("10.0.0.5", "1.2.3.4", "198.51.100.7")) == "198.51.100.7"


def test_chains_of_trusted_proxies_are_walked_right_to_left() -> None:
    trusted = peers("10.0.0.0/8, 127.0.0.1")
    assert trusted.address(scope("127.0.0.1", "198.51.100.7, 10.1.2.3")) == "198.51.100.7"


def test_an_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    assert peers("10.0.0.0/8").address(scope("192.0.2.1", "10.0.0.1")) == "192.0.2.1"


def test_forwarded_ports_and_brackets_are_dropped() -> None:
    trusted = peers("::1")
    assert trusted.address(scope("::1", "[2001:db8::1]:443")) == "2001:db8::1"
    assert trusted.address(scope("::1", "198.51.100.7:5000")) == "198.51.100.7"


def test_an_empty_hop_ends_the_walk_at_the_last_trusted_address() -> None:
    assert peers("127.0.0.1").address(scope("127.0.0.1", "")) == "127.0.0.1"


def test_no_peer_is_an_empty_address() -> None:
    assert peers("127.0.0.1").address(scope(None)) == ""


def test_the_address_is_kept_in_the_scope() -> None:
    request = scope("127.0.0.1")
    assert Peers().address(request) == "127.0.0.1"
    assert request["state"] == {PEER_STATE: "127.0.0.1"}


def test_trusted_proxies_accepts_addresses_and_networks() -> None:
    networks = Settings(trusted_proxies=" 127.0.0.1 , 10.0.0.0/8,::1").trusted_networks()
    assert networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


def test_a_bad_trusted_proxy_is_refused_by_place() -> None:
    with pytest.raises(SettingsError, match="trusted_proxies: entry 2 is not an IP"):
        Settings(trusted_proxies="127.0.0.1, proxy.internal")
