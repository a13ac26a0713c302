"""Prometheus metrics of the collector and the workers.

Labels are source and pipeline ids from the workspace file and HTTP status codes: never a write
key, a URL with credentials or any other secret.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "observe_times",
    "DEAD_LETTERED",
    "DELIVERED",
    "E2E_LATENCY",
    "FAILED",
    "FILTERED",
    "IN_FLIGHT",
    "PUBLISHED",
    "RECEIVED",
    "REJECTED",
    "REQUESTS",
    "REQUEST_LATENCY",
    "RETRIED",
    "STEP_EVENTS",
    "STEP_SECONDS",
]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600, 14400)

REQUESTS = Counter("krenalis_http_requests", "Ingestion requests by status code.", ["status"])
REQUEST_LATENCY = Histogram(
    "krenalis_ingest_latency_seconds",
    "Time from request start to the answer (PubAcks included).",
    buckets=_LATENCY_BUCKETS,
)
RECEIVED = Counter("krenalis_events_received", "Valid events received.", ["source"])
REJECTED = Counter("krenalis_events_rejected", "Events rejected by validation.", ["source"])
FILTERED = Counter(
    "krenalis_events_filtered_out", "Events a pipeline's filter or consents turned away.",
    ["pipeline"],
)  # fmt: skip
PUBLISHED = Counter("krenalis_events_published", "Event copies stored in EVENTS.", ["pipeline"])
DELIVERED = Counter("krenalis_events_delivered", "Events committed by a sink.", ["pipeline"])
RETRIED = Counter(
    "krenalis_events_retried", "Delivery attempts that will be retried.", ["pipeline"]
)
FAILED = Counter(
    "krenalis_events_failed", "Events that failed for good (then dead-lettered).", ["pipeline"]
)
DEAD_LETTERED = Counter(
    "krenalis_events_dead_lettered", "Events moved to EVENTS_DLQ.", ["pipeline"]
)
IN_FLIGHT = Gauge(
    "krenalis_events_in_flight",
    "Events fetched by a worker and not settled yet.",
    ["pipeline"],
    multiprocess_mode="livesum",
)
E2E_LATENCY = Histogram(
    "krenalis_end_to_end_latency_seconds",
    "From receivedAt to the sink's commit.",
    ["pipeline"],
    buckets=_E2E_BUCKETS,
)
STEP_EVENTS = Counter(
    "krenalis_step_events",
    "Events through a pipeline's transform step: in, out (a fan-out gives several), dropped, "
    "failed.",
    ["pipeline", "step", "outcome"],
)
STEP_SECONDS = Counter(
    "krenalis_step_seconds",
    "Time spent in a transform step (divided by its events in: the time per event).",
    ["pipeline", "step"],
)


def observe_times(histogram: Any, amount: float, times: int) -> None:
    """`times` observations of `amount` by a labelled Histogram, in two updates: what
    ``observe`` does once per call (the sum, and the first bucket whose bound is not below
    `amount`). The events of one request share their receivedAt, and an observe per event
    showed in the worker's profile. A Histogram without those internals is observed one by one."""
    bounds = getattr(histogram, "_upper_bounds", None)
    if bounds is None or times <= 1:
        for _ in range(times):
            histogram.observe(amount)
        return
    histogram._raise_if_not_observable()
    histogram._sum.inc(amount * times)
    histogram._buckets[bisect_left(bounds, amount)].inc(times)
