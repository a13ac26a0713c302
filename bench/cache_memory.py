"""Worst-case memory of the collector's caches keyed by client input (not a pytest test).

    .venv/bin/python -m bench.cache_memory

Each cache is filled to its entry limit with the longest keys it keeps, built from the largest
input a client can send (64 KiB X-Forwarded-For headers, 32 KiB events), and the memory it then
holds is measured with tracemalloc: inputs are made and dropped inside the measured window, so
what is counted is what the cache keeps. tests/security/test_bounded_caches.py checks the same
bounds, from a sample of entries.
"""

from __future__ import annotations

import gc
import tracemalloc
import zlib
from collections.abc import Callable
from unittest import mock

from krenalis.events import ip, locales, useragent
from krenalis.events.users import MAX_ID_LENGTH
from krenalis.pipelines import routing

__all__ = ["CACHES", "held_bytes", "main"]

HEADER_PADDING = "," + "9" * (64 * 1024 - 64)  # the rest of a 64 KiB X-Forwarded-For header


def longest_address(i: int) -> str:
    """An X-Forwarded-For item as long as an address gets: bracketed IPv6 in full, a port."""
    return f"[2001:0db8:0000:0000:0000:0000:{i >> 16:04x}:{i & 0xFFFF:04x}]:65535"


def longest_id(i: int) -> str:
    """An id of MAX_ID_LENGTH characters that Python stores at 4 bytes a character."""
    return f"\U0001f600{i:08d}".ljust(MAX_ID_LENGTH, "\U0001f600")


def longest_user_agent(i: int) -> str:
    return f"Mozilla/5.0 ({i}) " + "x" * (useragent._MAX_CACHED_LENGTH - 24)


def _address(i: int) -> None:
    ip.client_address("10.0.0.1", longest_address(i) + HEADER_PADDING)


def longest_context_ip(i: int) -> str:
    """A context.ip as long as an address gets: IPv4-mapped IPv6 in full (45 characters)."""
    return f"0000:0000:0000:0000:0000:ffff:100.{100 + i // 100}.{100 + i % 100}.100"


_CLIENT = ip.client_address("10.0.0.1", None)


def _context_ip(i: int) -> None:
    _CLIENT.resolve(longest_context_ip(i))


def _shard(i: int) -> None:
    # The pure-Python FNV allocates an int per byte, which tracemalloc makes very slow; crc32
    # gives the cache the same entry (the id -> a 32-bit int) in a fraction of the time.
    with mock.patch.object(routing, "fnv1a_32", zlib.crc32):
        routing.shard_of(longest_id(i), 16)


def _user_agent(i: int) -> None:
    useragent.parse_user_agent(longest_user_agent(i))


def _locale(i: int) -> None:
    locales.normalize_locale(f"{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}-{i % 100:02d}")


def _clear_all() -> None:
    ip._addresses.clear()
    ip._context_ips.clear()
    routing._cached_hash_of.cache_clear()
    useragent._cache.clear()
    locales._cache.clear()


#: name -> (fill one entry i, entry limit, what is kept per entry)
CACHES: dict[str, tuple[Callable[[int], None], int, str]] = {
    "client address (events/ip.py)": (_address, ip._CACHE_SIZE, "address text -> 3 forms"),
    "context.ip (events/ip.py)": (_context_ip, ip._CACHE_SIZE, "address text -> address"),
    "shard hash (pipelines/routing.py)": (_shard, 16_384, "255-character id -> hash"),
    "user agent (events/useragent.py)": (_user_agent, useragent._CACHE_SIZE, "UA -> 2 dicts"),
    "locale (events/locales.py)": (_locale, 1024, "code -> code"),
}


def held_bytes(fill: Callable[[int], None], entries: int) -> int:
    """Bytes still allocated after `entries` calls of fill into emptied caches."""
    _clear_all()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(entries):
            fill(i)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        _clear_all()


def main() -> None:
    print(f"{'cache':36} {'entries':>8} {'held':>10}  entry")
    for name, (fill, limit, entry) in CACHES.items():
        held = held_bytes(fill, limit)
        print(f"{name:36} {limit:>8,} {held / 2**20:>7.2f} MiB  {entry}")
        # One more round past the limit: the cache is emptied and refilled, never larger.
        again = held_bytes(lambda i, fill=fill, limit=limit: fill(i + limit), limit + limit // 2)
        assert again <= held * 1.1, (name, again, held)


if __name__ == "__main__":
    main()
