"""Shared by the collector tests: the workspace, request helpers, and the harness the
`collector` fixture (conftest.py) yields. The module name is unique in the repository."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from krenalis.collector.app import Collector
from krenalis.collector.server import HTTPServer
from krenalis.runtime.nats_server import EmbeddedNats
from krenalis.stream.archive import stream_counts
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import STREAM, consumer_name, subject
from krenalis.stream.pruning import Pruner
from krenalis.workspace.model import Workspace

WRITE_KEY = "Kc0l1ect0rTestWr1teKey0123456789"  # 32 characters, as generate_write_key() makes
OTHER_KEY = "Z" * 32  # well formed, belongs to no source
SOURCE_ID = "website"
WAREHOUSE_PIPELINE = "website-warehouse"
CRM_PIPELINE = "website-crm"
PIPELINES = (WAREHOUSE_PIPELINE, CRM_PIPELINE)

WORKSPACE_YAML = f"""\
sources:
  {SOURCE_ID}:
    write_key: "{WRITE_KEY}"
destinations:
  crm:
    type: webhook
    url: http://127.0.0.1:9/hook
pipelines:
  {WAREHOUSE_PIPELINE}:
    source: {SOURCE_ID}
    to: warehouse
  {CRM_PIPELINE}:
    source: {SOURCE_ID}
    to: crm
    filter:
      all:
        - {{field: type, op: is, value: track}}
"""

assert len(WRITE_KEY) == 32

# One valid event of each type, without "type" (typed endpoints take it from the path).
EVENT_BODIES: dict[str, dict[str, Any]] = {
    "track": {"event": "Order Completed", "userId": "u1", "properties": {"total": 42}},
    "page": {"name": "Home", "anonymousId": "a1", "properties": {"url": "https://x.test/"}},
    "screen": {"name": "Main", "userId": "u1", "properties": {"tab": 2}},
    "identify": {"userId": "u1", "traits": {"plan": "pro"}},
    "group": {"groupId": "g1", "userId": "u1", "traits": {"name": "Acme"}},
    "alias": {"previousId": "a1", "userId": "u1"},
}
TYPES = tuple(EVENT_BODIES)


def event(event_type: str, *, typed: bool = True, **extra: Any) -> dict[str, Any]:
    """A valid event of `event_type` with a fresh messageId (and "type" unless typed=False)."""
    body = {**EVENT_BODIES[event_type], "messageId": f"m-{uuid.uuid4()}", **extra}
    if typed:
        body["type"] = event_type
    return body


def bearer(key: str = WRITE_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(key: str = WRITE_KEY, password: str = "") -> dict[str, str]:
    token = base64.b64encode(f"{key}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class Stored:
    """One message read back from a pipeline's subject."""

    subject: str
    msg_id: str
    event: dict[str, Any]


@dataclass
class CollectorHarness:
    url: str
    nats: EmbeddedNats
    conn: NatsConnection
    workspace: Workspace
    collector: Collector
    http: HTTPServer
    _subs: dict[str, Any] = field(default_factory=dict)

    write_key: str = WRITE_KEY
    source_id: str = SOURCE_ID

    async def _sub(self, pipeline: str) -> Any:
        if pipeline not in self._subs:
            self._subs[pipeline] = await self.conn.js.pull_subscribe_bind(
                consumer_name(pipeline), stream=STREAM
            )
        return self._subs[pipeline]

    async def take(
        self, pipeline: str, expected: int | None = None, timeout: float = 5.0
    ) -> list[Stored]:
        """Fetch and ack what is stored for `pipeline`, and remove it from the stream as a worker
        does (acks are synchronous, so the ack floor is current when the pruner reads it).

        With `expected`, wait (up to `timeout`) until that many arrived and then check that no
        more follow; without it, take whatever is there now.
        """
        found = await self._fetch_and_ack(pipeline, expected, timeout)
        await Pruner(self.conn.js, consumer_name(pipeline), subject(pipeline)).prune()
        return found

    async def _fetch_and_ack(
        self, pipeline: str, expected: int | None, timeout: float
    ) -> list[Stored]:
        sub = await self._sub(pipeline)
        found: list[Stored] = []
        deadline = time.monotonic() + timeout
        while True:
            want = 1000 if expected is None else max(expected - len(found), 1)
            try:
                msgs = await sub.fetch(min(want, 1000), timeout=0.3)
            except TimeoutError:
                msgs = []
            for m in msgs:
                headers = m.headers or {}
                found.append(Stored(m.subject, headers.get("Nats-Msg-Id", ""), json.loads(m.data)))
                await m.ack_sync()
            if expected is None:
                if not msgs:
                    return found
            elif len(found) >= expected:
                break
            elif time.monotonic() > deadline:
                return found  # the caller's assertion on the count shows what is missing
        with contextlib.suppress(TimeoutError):  # nothing beyond what was expected
            extra = await sub.fetch(10, timeout=0.2)
            for m in extra:
                headers = m.headers or {}
                found.append(Stored(m.subject, headers.get("Nats-Msg-Id", ""), json.loads(m.data)))
                await m.ack_sync()
        return found

    async def unsubscribe(self) -> None:
        for sub in self._subs.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    async def stream_messages(self) -> int:
        """Pipeline copies currently in EVENTS (stored and not yet acked; the archive's copies
        are not counted: see archive_messages)."""
        return (await stream_counts(self.conn.js))[0]

    async def archive_messages(self) -> int:
        """Archive copies in EVENTS_ARCHIVE."""
        return (await stream_counts(self.conn.js))[1]

    async def wait_usable(self, usable: bool, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.conn.usable != usable:
            if time.monotonic() > deadline:
                raise AssertionError(f"connection usable stayed {self.conn.usable} for {timeout}s")
            await asyncio.sleep(0.02)

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", 30.0)
        return httpx.AsyncClient(base_url=self.url, **kwargs)
