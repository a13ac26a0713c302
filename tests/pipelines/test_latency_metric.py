"""The end-to-end latency histogram: one observation per delivered event with a receivedAt."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from fixtures.events import stored
from krenalis.metrics import observe_times
from krenalis.worker.held import count_delivered

NAME = "krenalis_end_to_end_latency_seconds"


def sample(suffix: str, pipeline: str) -> float:
    return REGISTRY.get_sample_value(f"{NAME}_{suffix}", {"pipeline": pipeline}) or 0.0


def wire(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def test_every_event_is_observed_once_and_shared_times_are_read_once() -> None:
    now = datetime.now(UTC)
    two_s_ago, five_s_ago = wire(now - timedelta(seconds=2)), wire(now - timedelta(seconds=5))
    events = [{"receivedAt": two_s_ago}] * 3 + [{"receivedAt": five_s_ago}]
    events += [{"receivedAt": "not a time"}, {"receivedAt": 7}, {}]
    started = time.time()
    count_delivered("latency-test", stored(events))
    assert sample("count", "latency-test") == 4
    total = sample("sum", "latency-test")
    slack = time.time() - started + 0.01
    assert 3 * 2 + 5 - 0.01 <= total <= 3 * 2 + 5 + 4 * slack
    assert (
        REGISTRY.get_sample_value(f"{NAME}_bucket", {"pipeline": "latency-test", "le": "+Inf"}) == 4
    )


@pytest.mark.parametrize("amount", [0.0, 0.01, 0.010001, 0.3, 1, 59.99, 3600, 14400, 1e9])
@pytest.mark.parametrize("times", [1, 2, 37])
def test_observe_times_counts_as_that_many_observes(amount: float, times: int) -> None:
    registry = CollectorRegistry()
    buckets = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600, 14400)
    one_by_one = Histogram("one", "", ["p"], buckets=buckets, registry=registry)
    together = Histogram("together", "", ["p"], buckets=buckets, registry=registry)
    for _ in range(times):
        one_by_one.labels("x").observe(amount)
    observe_times(together.labels("x"), amount, times)
    samples = {
        family.name: {(s.name[len(family.name) :], s.labels.get("le")): s.value
                      for s in family.samples if not s.name.endswith("_created")}
        for family in registry.collect()
    }  # fmt: skip
    expected, got = samples["one"], samples["together"]
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
