"""What a worker holds: which held events are due, and forgetting the settled ones
(worker/held.py)."""

from __future__ import annotations

import time
from typing import Any, cast

from krenalis.worker.held import Held, due_batch, forget_settled


def held(user: str, waiting: bool = False) -> Held:
    entry = Held(cast(Any, None), [], user)
    entry.not_before = time.monotonic() + 60 if waiting else 0.0
    return entry


def test_a_waiting_user_holds_back_only_their_later_events() -> None:
    a1, b1, a2, c1, b2 = held("a", waiting=True), held("b"), held("a"), held("c"), held("b")
    assert due_batch([a1, b1, a2, c1, b2], limit=10) == [b1, c1, b2]
    assert due_batch([a1, b1, a2, c1, b2], limit=2) == [b1, c1]


def test_a_settled_start_is_cut_off_and_anything_else_filtered() -> None:
    entries = [held(u) for u in "abcde"]
    kept = list(entries)
    forget_settled(kept, entries[:2], {id(entries[0]), id(entries[1])})
    assert kept == entries[2:]
    # Not all of the batch settled (one waits for a retry): only the settled ones go.
    kept = list(entries)
    forget_settled(kept, entries[:3], {id(entries[0]), id(entries[2])})
    assert kept == [entries[1], entries[3], entries[4]]
    # A batch that was not the start (an earlier user waits): its entries go, in place.
    kept = list(entries)
    same = kept
    forget_settled(kept, [entries[1], entries[3]], {id(entries[1]), id(entries[3])})
    assert kept is same and kept == [entries[0], entries[2], entries[4]]
