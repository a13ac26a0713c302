"""Realistic Segment-style track events (~400 bytes of JSON each), assembled cheaply.

A pool of pre-encoded templates (varied event names, properties, pages, user agents and users)
is split around the two parts that change per event, the `messageId` and the `timestamp`, so
building a request of 100 events is a few byte joins, not 100 JSON encodings: the load
generator must never be the bottleneck.

Every messageId is a UUID-shaped string, unique per (run prefix, counter), so the stream's
Nats-Msg-Id duplicate window never drops a copy.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import time
from datetime import UTC, datetime

__all__ = ["EventFactory", "basic_auth", "iso_now"]

_MID = "@@MID@@"
_TS = "@@TS@@"

_EVENTS = [
    "Product Viewed", "Product Added", "Checkout Started", "Order Completed", "Products Searched",
    "Signed In",
]  # fmt: skip
_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:133.0) Gecko/20100101 Firefox/133.0",
]
_CURRENCIES = ["EUR", "USD"]


def iso_now(now: float | None = None) -> str:
    """Like analytics.js: 2026-11-26T05:29:01.800Z."""
    dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def basic_auth(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def _template(rng: random.Random, i: int, users: int) -> dict:
    name = rng.choice(_EVENTS)
    sku = f"SKU-{rng.randrange(10_000):05d}"
    user = rng.randrange(users)
    return {
        "type": "track",
        "event": name,
        "messageId": _MID,
        "anonymousId": f"{user:08x}-5e1d-4c2a-9b7f-{user * 7919 % 16**12:012x}",
        "userId": f"user-{user}" if user % 3 else None,
        "timestamp": _TS,
        "properties": {
            "product_id": sku,
            "price": round(rng.uniform(5, 300), 2),
            "currency": rng.choice(_CURRENCIES),
        },
        "context": {
            "library": {"name": "analytics.js", "version": "5.2.0"},
            "userAgent": rng.choice(_AGENTS),
        },
    }


class EventFactory:
    """Builds request bodies of `batch` events; every event gets a fresh messageId."""

    def __init__(
        self, *, templates: int = 512, users: int = 5000, seed: int = 7, target_size: int = 400
    ) -> None:
        rng = random.Random(seed)
        self.prefix = secrets.token_hex(4)  # 8 hex: the first group of the UUID-shaped ids
        self.counter = 0
        self._parts: list[tuple[bytes, bytes, bytes]] = []
        sizes = []
        for i in range(templates):
            event = _template(rng, i, users)
            if event["userId"] is None:
                del event["userId"]
            text = json.dumps(event, separators=(",", ":"))
            pad = target_size - (len(text) - len(_MID) - len(_TS) + 36 + 24)
            if pad > 30:  # top up to the target with a (long) product name
                event["properties"]["name"] = "Leather Boots " + "x" * (pad - 24)
                text = json.dumps(event, separators=(",", ":"))
            a, rest = text.split(_MID)
            b, c = rest.split(_TS)
            self._parts.append((a.encode(), b.encode(), c.encode()))
            sizes.append(len(text) - len(_MID) - len(_TS) + 36 + 24)
        self.event_size = sum(sizes) / len(sizes)
        self._next = 0

    def next_id(self) -> bytes:
        self.counter += 1
        return f"{self.prefix}-0000-4000-8000-{self.counter:012x}".encode()

    def body(self, batch: int) -> bytes:
        """A /v1/batch body: {"batch":[...],"sentAt":"..."}."""
        now = iso_now().encode()
        parts = self._parts
        n = len(parts)
        events = []
        for _ in range(batch):
            a, b, c = parts[self._next]
            self._next = (self._next + 1) % n
            events.append(a + self.next_id() + b + now + c)
        return b'{"batch":[' + b",".join(events) + b'],"sentAt":"' + now + b'"}'

    def one_event(self) -> bytes:
        """One event as stored by a raw publisher (no enrichment): for sizing only."""
        a, b, c = self._parts[0]
        return a + self.next_id() + b + iso_now().encode() + c
