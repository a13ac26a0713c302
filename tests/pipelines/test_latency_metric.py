"""The end-to-end latency histogram: one observation per delivered event with a receivedAt."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from fixtures.events import stored
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
