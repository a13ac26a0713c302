"""Throughput of the warehouse sink: 50,000 realistic events in batches of 1,000.

Run: ``.venv/bin/python tests/sinks/bench_warehouse.py [--events N] [--batch B] [--dsn DSN]``.
Without ``--dsn`` it starts an embedded PostgreSQL (fsync on) in a temporary directory.
It prints rows/s for three passes: new rows (insert), the same rows again (upsert of existing
rows), and the event -> row conversion alone (the Python share of the cost).
Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from fixtures.events import stored
from krenalis.sinks.base import DELIVERED
from krenalis.sinks.warehouse import EmbeddedPostgres, WarehouseSink, event_to_row, init_db


def make_event(i: int) -> dict[str, Any]:
    return {
        "connectionId": "1700123",
        "anonymousId": f"anon-{i % 5000}",
        "channel": "web",
        "context": {
            "browser": {"name": "Chrome", "version": "131.0.6778.86"},
            "consents": {"analytics": True, "marketing": i % 2 == 0},
            "ip": f"10.{i % 256}.{(i // 256) % 256}.7",
            "library": {"name": "analytics.js", "version": "5.2.0"},
            "locale": "it-IT",
            "os": {"name": "macOS", "version": "15.1"},
            "page": {
                "path": "/products/boots",
                "referrer": "https://www.example.com/",
                "title": "Boots",
                "url": "https://shop.example/products/boots?ref=home",
            },
            "screen": {"width": 1512, "height": 982, "density": 2},
            "session": {"id": str(1732598942123 + i // 20), "start": i % 20 == 0},
            "timezone": "Europe/Rome",
            "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36",
        },
        "event": "Product Viewed",
        "messageId": str(uuid.uuid5(uuid.NAMESPACE_OID, str(i))),
        "properties": {"sku": f"SKU-{i % 997}", "price": 99.5, "currency": "EUR", "qty": 1},
        "receivedAt": "2026-11-26T05:29:02.123Z",
        "sentAt": "2026-11-26T05:29:01.900Z",
        "originalTimestamp": "2026-11-26T05:29:01.800Z",
        "timestamp": "2026-11-26T05:29:02.023Z",
        "traits": {},
        "type": "track",
        "userId": f"user-{i % 3000}",
    }


async def write_all(dsn: str, batches: list[list[dict[str, Any]]]) -> float:
    async with WarehouseSink(dsn) as sink:
        await sink.healthcheck()
        began = time.perf_counter()
        for batch in batches:
            outcomes = await sink.write(stored(batch))
            assert outcomes == [DELIVERED] * len(batch), set(map(type, outcomes))
        return time.perf_counter() - began


async def bench(dsn: str, events: int, batch_size: int) -> None:
    await init_db(dsn)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("TRUNCATE krenalis_events")
    all_events = [make_event(i) for i in range(events)]
    batches = [all_events[i : i + batch_size] for i in range(0, events, batch_size)]

    began = time.perf_counter()
    for event in all_events:
        event_to_row(event)
    convert = time.perf_counter() - began

    insert = await write_all(dsn, batches)
    upsert = await write_all(dsn, batches)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM krenalis_events")
        rows = (await cur.fetchone() or [0])[0]
    assert rows == events, rows

    print(f"events={events} batch={batch_size} rows_in_table={rows}")
    print(f"insert (new rows):       {events / insert:10,.0f} rows/s  ({insert:.2f} s)")
    print(f"upsert (existing rows):  {events / upsert:10,.0f} rows/s  ({upsert:.2f} s)")
    print(f"event_to_row only:       {events / convert:10,.0f} rows/s  ({convert:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--dsn", help="an existing database (default: an embedded server)")
    args = parser.parse_args()
    if args.dsn:
        asyncio.run(bench(args.dsn, args.events, args.batch))
        return
    root = Path(tempfile.mkdtemp(prefix="krenalis-pg-bench-"))
    try:
        with EmbeddedPostgres(root / "postgres") as server:
            asyncio.run(bench(server.dsn, args.events, args.batch))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
