"""The one parser of address texts, shared by the collector (peers, proxies) and context.ip."""

from __future__ import annotations

import ipaddress

import pytest

from krenalis.events.ip import parse_address


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("[::1]:5", "::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:198.51.100.4", "198.51.100.4"),  # a dual-stack socket's IPv4 peer
    ],
)
def test_addresses_as_peers_and_proxies_write_them(text: str, address: str) -> None:
    assert parse_address(text) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "text", ["", "unknown", "1.2.3", "1.2.3.4:x", "[::1", "[::1]x", "fe80::1%eth0", "1" * 65]
)
def test_what_is_not_an_address(text: str) -> None:
    assert parse_address(text) is None
