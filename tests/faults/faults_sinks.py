"""The destinations of the fault tests, as seen from outside: which messageIds each holds.

A `Probe` reads the warehouse table, the file destination's NDJSON files, or what the webhook
receiver answered 200 to (`HookScript` also lets a test make the receiver fail or hang).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import psycopg

from krenalis.stream.archive import stream_counts as pipeline_and_archive
from krenalis.stream.deadletters import list_dead_letters
from krenalis.stream.layout import DLQ_STREAM
from sinks.webhook_receiver import ReceivedRequest, Response, WebhookReceiver

__all__ = [
    "HookScript",
    "Probe",
    "Receiver",
    "dead_letter_reasons",
    "file_probe",
    "hook_probe",
    "stream_counts",
    "warehouse_probe",
]


@dataclass
class Probe:
    """One destination: `delivered()` gives the messageIds it holds (a list: repeats count);
    `exactly_once` for the warehouse, at least once for the others."""

    name: str
    delivered: Callable[[], Awaitable[list[str] | None]]
    exactly_once: bool = False


def warehouse_probe(dsn: str | Callable[[], str]) -> Probe:
    async def delivered() -> list[str] | None:
        target = dsn() if callable(dsn) else dsn
        try:
            async with await psycopg.AsyncConnection.connect(target, connect_timeout=3) as conn:
                cursor = await conn.execute("SELECT message_id FROM krenalis_events")
                return [row[0] for row in await cursor.fetchall()]
        except (psycopg.Error, OSError):
            return None  # down, or the table is not there yet

    return Probe("warehouse", delivered, exactly_once=True)


def file_probe(directory: Path) -> Probe:
    async def delivered() -> list[str] | None:
        return await asyncio.to_thread(_file_ids, directory)

    return Probe("file", delivered)


def _file_ids(directory: Path) -> list[str] | None:
    found: list[str] = []
    try:
        paths = sorted(directory.glob("*.ndjson")) if directory.is_dir() else []
        for path in paths:
            for line in path.read_text().splitlines():
                if line.strip():
                    found.append(json.loads(line)["messageId"])
    except (OSError, ValueError):
        return None
    return found


class HookScript:
    """The webhook receiver's behaviour, switched by the test: "ok" (200), "fail" (500),
    "slow" (200 after `slow_delay` s: past the destination's timeout). Records the messageIds
    of every request answered 200 at once."""

    def __init__(self, slow_delay: float = 5.0) -> None:
        self.mode = "ok"
        self.slow_delay = slow_delay
        self.delivered: list[str] = []
        self.answers: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: ReceivedRequest) -> Response:
        mode = self.mode
        with self._lock:
            self.answers[mode] += 1
        if mode == "fail":
            return Response(500, body="failing on purpose")
        if mode == "slow":
            return Response(200, delay=self.slow_delay)
        body = request.json
        ids = [e["messageId"] for e in body["batch"]] if "batch" in body else [body["messageId"]]
        with self._lock:
            self.delivered.extend(ids)
        return Response(200)

    def delivered_ids(self) -> list[str]:
        with self._lock:
            return list(self.delivered)


def hook_probe(script: HookScript) -> Probe:
    async def delivered() -> list[str]:
        return script.delivered_ids()

    return Probe("webhook", delivered)


#: tests/sinks' receiver (its socket sets TCP_NODELAY, so a request takes ~1 ms, not ~45 ms).
Receiver = WebhookReceiver


# -- NATS ------------------------------------------------------------------------------------------


async def stream_counts(nats_url: str, **options: Any) -> tuple[int, int]:
    """(pipeline copies in EVENTS, messages in EVENTS_DLQ); `nats_url` may list several
    servers; `options` go to nats.connect (the embedded server's key: nkeys_seed=<its file>).
    The archive's copies are in EVENTS_ARCHIVE: they are not counted."""
    nc = await nats.connect(nats_url.split(","), max_reconnect_attempts=3, **options)
    try:
        js = nc.jetstream(timeout=10)
        copies, _ = await pipeline_and_archive(js)
        dead = await js.stream_info(DLQ_STREAM)
        return copies, dead.state.messages
    finally:
        await nc.close()


async def dead_letter_reasons(nats_url: str, **options: Any) -> list[tuple[str, str]]:
    """(messageId, reason) of every dead letter."""
    nc = await nats.connect(nats_url.split(","), max_reconnect_attempts=3, **options)
    try:
        letters = await list_dead_letters(nc.jetstream(timeout=10), limit=100)
        return [(letter.message_id, letter.reason) for letter in letters]
    finally:
        await nc.close()
