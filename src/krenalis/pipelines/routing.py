"""Routing: which pipelines (and which shard of each) take an event of a source.

The collector calls :meth:`Router.route` once per event on the hot path, so the router resolves
everything it can when it is built: per source, a tuple of (pipeline id, shards, admission
test), where the admission test combines the pipeline's compiled filter and consent rule.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from krenalis.events.users import MAX_ID_LENGTH, user_key
from krenalis.pipelines.filters import ConsentRule, Filter, consents_satisfied

if TYPE_CHECKING:  # routing only reads a workspace: no import cycle at run time
    from krenalis.workspace.model import Pipeline, Workspace

__all__ = ["Router", "admission", "fnv1a_32", "shard_of"]

Event = dict[str, Any]
_Admit = Callable[[Event], bool]

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    """FNV-1a, 32 bits: the shard hash of Krenalis's Go implementation, so a user's events go
    to the same shard whichever implementation routes them."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def shard_of(user: str, shards: int) -> int:
    """The shard of a user: FNV-1a of its user key (UTF-8) modulo the shard count."""
    return 0 if shards == 1 else _hash_of(user) % shards


def admission(flt: Filter | None, rule: ConsentRule | None) -> _Admit | None:
    """One test for a pipeline's filter and consent rule; None when it takes everything."""
    filter_test = flt.test if flt is not None else None
    if rule is None or not rule.purposes:
        return filter_test
    if filter_test is None:
        return lambda event: consents_satisfied(rule, event)
    return lambda event: filter_test(event) and consents_satisfied(rule, event)


class Router:
    """Routes events of a source to its enabled pipelines.

    ``filtered`` counts, per enabled pipeline, the events its filter or consent rule turned
    away (a plain dict the collector exposes as a metric).
    """

    __slots__ = ("_routes", "filtered")

    def __init__(self, workspace: Workspace) -> None:
        routes: dict[str, list[tuple[str, int, _Admit | None]]] = {}
        for pipeline in workspace.enabled_pipelines():
            routes.setdefault(pipeline.source, []).append(_route(pipeline))
        self._routes = {source: tuple(r) for source, r in routes.items()}
        self.filtered: dict[str, int] = {p.id: 0 for p in workspace.enabled_pipelines()}

    def pipelines_of(self, source_id: str) -> list[str]:
        """The enabled pipelines of a source, in the workspace's order."""
        return [pipeline_id for pipeline_id, _, _ in self._routes.get(source_id, ())]

    def route(self, source_id: str, event: Event) -> list[tuple[str, int]]:
        """(pipeline id, shard) for each enabled pipeline of the source that takes ``event``."""
        routes = self._routes.get(source_id)
        if not routes:
            return []
        targets: list[tuple[str, int]] = []
        hashed = -1  # the user key's hash, computed at most once, only if a pipeline shards
        for pipeline_id, shards, admit in routes:
            if admit is not None and not admit(event):
                self.filtered[pipeline_id] += 1
                continue
            if shards == 1:
                targets.append((pipeline_id, 0))
                continue
            if hashed < 0:
                hashed = _hash_of_event(event)
            targets.append((pipeline_id, hashed % shards))
        return targets


def _route(pipeline: Pipeline) -> tuple[str, int, _Admit | None]:
    return (pipeline.id, pipeline.shards, admission(pipeline.filter, pipeline.consents))


def _hash_of(user: str) -> int:
    # Pure-Python FNV costs ~4 us for a UUID; one user's events tend to come together (batches,
    # sessions), so a small cache saves most of it. The cache is keyed by client input: only
    # keys as long as an id may be (the collector rejects longer ones) are kept, which bounds
    # it (bench/cache_memory.py).
    if len(user) > MAX_ID_LENGTH:
        return _fnv_of(user)
    return _cached_hash_of(user)


def _fnv_of(user: str) -> int:
    return fnv1a_32(user.encode("utf-8", "surrogatepass"))


_cached_hash_of = lru_cache(maxsize=16_384)(_fnv_of)


def _hash_of_event(event: Event) -> int:
    return _hash_of(user_key(event))
