"""Client IP addresses: the request's address, its anonymized forms, and context.ip values.

Both caches here are keyed by text the client chooses (an X-Forwarded-For item, a context.ip
value), so each is bounded twice: in entries (emptied when full, the hot entries come back at
once) and in key length (text longer than any IP address is refused before it is looked up).
bench/cache_memory.py measures what they take when full of the longest keys.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from operator import attrgetter

from krenalis.errors import EventError, RequestError

__all__ = ["MAX_ADDRESS_TEXT", "ClientAddress", "client_address", "parse_address"]

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CACHE_SIZE = 4096
#: The longest text an IP address takes here: an IPv4-mapped IPv6 address written in full
#: ("0000:0000:0000:0000:0000:ffff:255.255.255.255", 45 characters), in brackets, with a port.
MAX_ADDRESS_TEXT = 64

# Special context.ip values ask for a form of the request's own address.
_FORMS: dict[_IPAddress, Callable[[ClientAddress], str | None]] = {
    ipaddress.IPv4Address("0.0.0.0"): lambda _: None,  # no address applies: drop context.ip
    ipaddress.IPv4Address("255.255.255.255"): attrgetter("full"),
    ipaddress.IPv4Address("255.255.255.0"): attrgetter("partial"),  # IPv6: the /48
    ipaddress.IPv4Address("255.255.0.0"): attrgetter("strong"),  # IPv6: the /32
}

_addresses: dict[str, ClientAddress] = {}  # address text -> the request's address
_context_ips: dict[str, str | Callable] = {}  # context.ip text -> what to store, or its form


def _parse(value: str) -> _IPAddress | None:
    """Parse an address; zoned IPv6 is refused and IPv4-mapped IPv6 is unmapped."""
    if "%" in value:  # a scope id names an interface of the client's own host: meaningless here
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _masked(address: _IPAddress, v4_bits: int, v6_bits: int) -> str:
    bits = v4_bits if address.version == 4 else v6_bits
    return str(ipaddress.ip_network((address, bits), strict=False).network_address)


class ClientAddress:
    """The request's address in its three forms, and the resolver for context.ip values."""

    __slots__ = ("full", "partial", "strong")

    def __init__(self, address: _IPAddress) -> None:
        self.full = str(address)  # identifiable
        self.partial = _masked(address, 24, 48)  # partially anonymous
        self.strong = _masked(address, 16, 32)  # strongly anonymous

    def resolve(self, value: str) -> str | None:
        """Return the address to store for a context.ip value, or None to drop it."""
        # A batch usually repeats one context.ip, and parsing costs more than a small event.
        stored = _context_ips.get(value)
        if stored is None:
            stored = _remember(_context_ips, value, _context_ip(value))
        return stored if type(stored) is str else stored(self)


def _context_ip(value: str) -> str | Callable:
    address = _parse(value) if len(value) <= MAX_ADDRESS_TEXT else None
    if address is None:
        raise EventError("property 'ip' is not a valid IP address")
    form = _FORMS.get(address)
    if form is not None:
        return form
    if address.is_multicast:
        raise EventError("property 'ip' cannot be a multicast IP address")
    return str(address)


def client_address(remote_ip: str, forwarded_for: str | None) -> ClientAddress:
    """The request's client address: the first X-Forwarded-For item if it is an IP address,
    else remote_ip. A header that is not one does not fail the request: the peer is the best
    address there is."""
    if forwarded_for:
        address = _address(forwarded_for.partition(",")[0].strip())
        if address is not None:
            return address
    address = _address(remote_ip.strip())
    if address is None:
        # The server handed us a bad peer address: our fault, not the client's.
        raise RequestError(
            "unexpected IP address from RemoteAddr", status=500, code="InternalServerError"
        )
    return address


def parse_address(text: str) -> _IPAddress | None:
    """An address as a peer or a proxy writes it ("1.2.3.4", "1.2.3.4:5", "[::1]:5"), with
    IPv4-mapped IPv6 (a dual-stack socket's) unmapped; None when it is not one (a zoned IPv6
    address, a text longer than any address, a port that is not a number)."""
    return _parse(_strip_port(text)) if len(text) <= MAX_ADDRESS_TEXT else None


def _address(text: str) -> ClientAddress | None:
    """The ClientAddress of an address text ("[...]" and a port allowed), None if not one."""
    # Parsing and masking cost 15-60 µs, more than decoding a small event: clients send many
    # requests, so the answers are kept, by the text of the address alone.
    address = _addresses.get(text)
    if address is None:
        parsed = parse_address(text)
        if parsed is None:
            return None  # not kept: garbage gets no entry
        address = _remember(_addresses, text, ClientAddress(parsed))
    return address


def _remember(cache: dict, key: str, value: object) -> object:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value


def _strip_port(value: str) -> str:
    """Strip "[...]" brackets and an optional ":port" (for IPv4 only with exactly one colon)."""
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdecimal())):
            return ""  # invalid
        return value[1:end]
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host if port.isdecimal() else ""
    return value
