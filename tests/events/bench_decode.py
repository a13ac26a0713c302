"""Decode + validate + encode throughput on one core (not a test: pytest does not collect it).

    .venv/bin/python tests/events/bench_decode.py [seconds]

Decodes a 100-event batch of realistic ~400-byte analytics.js track events (the shape the
JavaScript SDK sends: messageId, anonymousId, timestamp, library, page, userAgent, locale, with
the batch-level sentAt), encodes every event for the stream, and prints events per second.
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime

import msgspec

from krenalis.events import decode_request, encode_event

USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)


def make_event(i: int) -> dict:
    return {
        "type": "track",
        "event": "Product Added",
        "messageId": f"ajs-{uuid.uuid4().hex}",
        "anonymousId": str(uuid.uuid4()),
        "timestamp": f"2026-11-26T05:29:{i % 60:02d}.{i % 1000:03d}Z",
        "properties": {"product_id": f"p-{i}", "price": 19.99},
        "context": {
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
            "page": {"path": "/cart"},
            "userAgent": USER_AGENT,
            "locale": "en-US",
        },
    }


def make_body(count: int = 100) -> bytes:
    batch = [make_event(i) for i in range(count)]
    return msgspec.json.encode({"batch": batch, "sentAt": "2026-11-26T05:30:00.000Z"})


def run(seconds: float) -> float:
    body = make_body()
    received_at = datetime(2026, 11, 26, 5, 30, 0, 250_000, tzinfo=UTC)
    events = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            decoded = decode_request(
                body, event_type=None, received_at=received_at, remote_ip="203.0.113.7"
            )
            for event in decoded.events:
                encode_event(event)
            events += len(decoded.events)
    return events / (time.perf_counter() - start)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    body = make_body()
    print(f"batch: 100 events, {len(body)} bytes ({len(body) // 100} bytes/event)")
    print(f"{run(seconds):,.0f} events/s (decode + validate + encode, one core)")


if __name__ == "__main__":
    main()
