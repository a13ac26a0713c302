"""The collector's caches keyed by client input stay bounded, in entries and in bytes.

A cache keyed by what a client sends grows with what the client chooses to send. Each cache here
is bounded in entries (emptied when full) and keyed by a parsed value of bounded length: an
address's text, not the X-Forwarded-For header it came in; an id the collector accepts (at most
255 characters); a user agent or locale only when it can be a real one. Memory is measured with
tracemalloc on a sample and scaled to the cache's entry limit; `python -m bench.cache_memory`
fills each cache to the limit (figures in bench/RESULTS.md). Each test fails without the bound
it names.
"""

from __future__ import annotations

import gc
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from unittest import mock

import pytest

from krenalis.errors import EventError
from krenalis.events import ip, locales, useragent
from krenalis.events.ip import client_address
from krenalis.events.users import MAX_ID_LENGTH
from krenalis.pipelines import routing

MiB = 2**20
HEADER_PADDING = "," + "9" * (64 * 1024 - 64)  # the rest of a 64 KiB X-Forwarded-For header


@pytest.fixture(autouse=True)
def empty_caches() -> Iterator[None]:
    def clear() -> None:
        ip._addresses.clear()
        ip._context_ips.clear()
        routing._cached_hash_of.cache_clear()
        useragent._cache.clear()
        locales._cache.clear()

    clear()
    yield
    clear()


def held_bytes(fill: Callable[[int], object], calls: int) -> int:
    """Bytes still allocated after fill(0) ... fill(calls - 1): what the caches kept. Inputs are
    made inside fill, so they are counted only if a cache keeps them."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(calls):
            fill(i)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def longest_address(i: int) -> str:
    """An X-Forwarded-For item as long as a valid one gets: bracketed IPv6 in full, a port."""
    return f"[2001:0db8:0000:0000:0000:0000:{i >> 16:04x}:{i & 0xFFFF:04x}]:65535"


def test_the_client_address_cache_keeps_the_address_not_the_header() -> None:
    def request(i: int) -> None:
        client_address("10.0.0.1", longest_address(i) + HEADER_PADDING)

    sample = 256
    per_entry = held_bytes(request, sample) / sample
    assert per_entry * ip._CACHE_SIZE < 4 * MiB  # 1.4 MiB measured (bench/cache_memory.py)
    assert all(len(key) <= ip.MAX_ADDRESS_TEXT for key in ip._addresses)


def test_a_header_that_is_not_an_address_gets_no_entry_and_fails_nothing() -> None:
    def request(i: int) -> None:
        address = client_address("10.0.0.1", f"{i}" + "x" * (64 * 1024))
        assert address.full == "10.0.0.1"

    assert held_bytes(request, 64) < 64 * 1024
    assert set(ip._addresses) == {"10.0.0.1"}


def test_context_ip_answers_are_bounded_across_every_client() -> None:
    # They used to be kept per client address (4,096 of them), each with up to 4,096 answers.
    clients = [client_address(f"10.0.{i}.1", None) for i in range(32)]

    def resolve(i: int) -> None:
        clients[i % 32].resolve(f"0000:0000:0000:0000:0000:ffff:100.{i // 256}.{i % 256}.1")

    assert held_bytes(resolve, 4 * ip._CACHE_SIZE) < 1.2 * MiB  # 0.72 MiB when full
    assert len(ip._context_ips) <= ip._CACHE_SIZE

    def refuse(i: int) -> None:  # what cannot be an address is refused, and not kept
        with pytest.raises(EventError):
            clients[0].resolve(f"{i}." + "1" * 20_000)

    assert held_bytes(refuse, 64) < 64 * 1024


def test_the_shard_hash_cache_keeps_only_ids_the_collector_accepts() -> None:
    def route(i: int) -> None:
        routing.shard_of(f"{i}-" + "a" * 3_000, 16)

    assert held_bytes(route, 64) < 32 * 1024  # 64 ids of 3,000 characters: none kept
    assert routing._cached_hash_of.cache_info().currsize == 0

    def longest(i: int) -> None:  # 255 characters stored at 4 bytes each: the worst kept
        routing.shard_of(f"\U0001f600{i:08d}".ljust(MAX_ID_LENGTH, "\U0001f600"), 16)

    sample = 512
    with mock.patch.object(routing, "fnv1a_32", zlib.crc32):  # the same entry, made faster
        per_entry = held_bytes(longest, sample) / sample
    assert per_entry * routing._cached_hash_of.cache_info().maxsize < 24 * MiB  # 18.9 measured


def test_long_user_agents_and_locales_are_not_kept() -> None:
    def parse(i: int) -> None:
        useragent.parse_user_agent(f"Mozilla/5.0 ({i}) " + "x" * 20_000)
        assert locales.normalize_locale(f"{i}" + "x" * 20_000) == ""

    assert held_bytes(parse, 64) < 64 * 1024
    assert useragent._cache == {} and locales._cache == {}
