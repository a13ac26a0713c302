"""Routing an event of a source to its pipelines and shards."""

from __future__ import annotations

from collections import Counter

import pytest

from krenalis.pipelines.routing import Router, fnv1a_32, shard_of
from krenalis.workspace.load import parse_workspace

KEY_A = "a" * 32
KEY_B = "b" * 32

WORKSPACE = f"""\
sources:
  website:
    write_key: "{KEY_A}"
  app:
    write_key: "{KEY_B}"
destinations:
  crm:
    type: webhook
    url: https://example.com/hook
pipelines:
  website-warehouse:
    source: website
    to: warehouse
  website-orders:
    source: website
    to: crm
    shards: 4
    filter:
      all:
        - {{field: type, op: is, value: track}}
        - {{field: event, op: is, value: Order Completed}}
  website-marketing:
    source: website
    to: crm
    consents:
      purposes: [marketing]
  website-off:
    source: website
    to: crm
    enabled: false
  app-warehouse:
    source: app
    to: warehouse
    shards: 16
"""


@pytest.fixture
def router() -> Router:
    return Router(parse_workspace(WORKSPACE, "krenalis.yaml", environ={}))


def event(**fields: object) -> dict[str, object]:
    return {"type": "page", "anonymousId": "anon-1", "messageId": "m1", **fields}


def test_unfiltered_pipelines_take_everything(router: Router) -> None:
    assert router.route("website", event()) == [("website-warehouse", 0)]
    assert router.route("app", event()) == [("app-warehouse", shard_of("anon-1", 16))]


def test_filter_selects_pipelines(router: Router) -> None:
    order = event(type="track", event="Order Completed")
    routes = dict(router.route("website", order))
    assert set(routes) == {"website-warehouse", "website-orders"}
    assert routes["website-orders"] == fnv1a_32(b"anon-1") % 4


def test_consents_select_pipelines(router: Router) -> None:
    granted = event(context={"consents": {"marketing": True}})
    refused = event(context={"consents": {"marketing": False}})
    assert ("website-marketing", 0) in router.route("website", granted)
    assert [p for p, _ in router.route("website", refused)] == ["website-warehouse"]


def test_disabled_pipelines_and_unknown_sources_get_nothing(router: Router) -> None:
    everything = event(
        type="track", event="Order Completed", context={"consents": {"marketing": True}}
    )
    pipelines = [p for p, _ in router.route("website", everything)]
    assert pipelines == ["website-warehouse", "website-orders", "website-marketing"]
    assert router.route("nope", everything) == []
    assert "website-off" not in router.filtered


def test_filtered_counts_per_pipeline(router: Router) -> None:
    for _ in range(3):
        router.route("website", event())
    router.route("website", event(type="track", event="Order Completed"))
    assert router.filtered == {
        "website-warehouse": 0,
        "website-orders": 3,
        "website-marketing": 4,
        "app-warehouse": 0,
    }


def test_same_anonymous_id_same_shard(router: Router) -> None:
    shards = {dict(router.route("app", event(anonymousId="user-42")))["app-warehouse"]
              for _ in range(20)}  # fmt: skip
    assert shards == {shard_of("user-42", 16)}


def test_shards_spread_over_many_ids(router: Router) -> None:
    counts = Counter(
        dict(router.route("app", event(anonymousId=f"anon-{i}")))["app-warehouse"]
        for i in range(16_000)
    )
    assert set(counts) == set(range(16))
    assert min(counts.values()) > 700  # 1000 expected per shard


def test_missing_anonymous_id_does_not_raise(router: Router) -> None:
    assert router.route("app", {"type": "track"}) == [("app-warehouse", fnv1a_32(b"") % 16)]
    for odd in (7, None, ["a"], {"a": 1}):
        assert router.route("app", {"anonymousId": odd}) == [("app-warehouse", fnv1a_32(b"") % 16)]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0x811C9DC5),
        (b"a", 0xE40C292C),
        (b"foobar", 0xBF9CF968),
        (b"foo", 0xA9F37ED7),
        (b"fo", 0x6222E842),
    ],
)
def test_fnv1a_32_known_vectors(data: bytes, expected: int) -> None:
    assert fnv1a_32(data) == expected


def test_shard_of() -> None:
    assert shard_of("anything", 1) == 0
    assert shard_of("anon-1", 4) == fnv1a_32(b"anon-1") % 4
    assert shard_of("ünï", 5) == fnv1a_32("ünï".encode()) % 5


def test_shard_of_a_key_longer_than_an_id_is_the_same_hash_uncached() -> None:
    long_key = "k" * 1_000  # longer than any id the collector accepts: not kept in the cache
    assert shard_of(long_key, 7) == fnv1a_32(long_key.encode()) % 7
