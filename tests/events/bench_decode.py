"""Decode + validate + encode throughput on one core (not a test: pytest does not collect it).

    .venv/bin/python tests/events/bench_decode.py [seconds]

Decodes a 100-event batch of realistic ~400-byte analytics.js track events (the shape the
JavaScript SDK sends: messageId, anonymousId, timestamp, library, page, userAgent, locale, with
the batch-level sentAt), encodes every event for the stream, and prints events per second.

Then the slow path (events/decode.py): the CPU time of `decode_request` on 500 KiB bodies built
to make it as slow as it gets (`hostile_bodies`, also used by tests/security/test_bad_input.py),
next to a 500 KiB body of good events.
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime

import msgspec

from krenalis.events import MAX_BODY_BYTES, decode_request, encode_event

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


def hostile_bodies() -> dict[str, bytes]:
    """Bodies of almost MAX_BODY_BYTES that take the slow path at its most expensive, and one
    of good events to compare with."""
    size = MAX_BODY_BYTES - 1024
    events: list[bytes] = []
    while sum(map(len, events)) < size - 2000:
        events.append(msgspec.json.encode(make_event(len(events))))
    deep = b"[" * 3000 + b"]" * 3000
    brackets = b"[" + b",".join([b"[]"] * 8) + b"]"  # the depth changes at most bytes
    return {
        "good events (fast path)": _array(events),
        # nesting to cut (one loop over every byte), then 19,000 elements (the limit is 20,000)
        "deep, then brackets": _array([deep] + [brackets] * ((size - 6000) // 26)),
        # a lone surrogate in every 6 bytes: one regular-expression replacement each
        "lone surrogates": b'[{"s":"' + b"\\ud83d" * ((size - 10) // 6) + b'"}]',
        # the whole body decoded again, then event by event, because the last one cannot be
        "1e400 at the end": _array(events[:-1] + [b'{"n":1e400}']),
    }


def _array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def slow_path(repeat: int = 5) -> None:
    received_at = datetime(2026, 11, 26, 5, 30, 0, 250_000, tzinfo=UTC)
    for name, body in hostile_bodies().items():
        best = float("inf")
        for _ in range(repeat):
            started = time.process_time()
            decode_request(body, event_type=None, received_at=received_at, remote_ip="203.0.113.7")
            best = min(best, time.process_time() - started)
        print(f"{name:26} {len(body):>7,} bytes  {best * 1000:6.1f} ms CPU (best of {repeat})")


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    body = make_body()
    print(f"batch: 100 events, {len(body)} bytes ({len(body) // 100} bytes/event)")
    print(f"{run(seconds):,.0f} events/s (decode + validate + encode, one core)")
    slow_path()


if __name__ == "__main__":
    main()
