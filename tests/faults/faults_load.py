"""The steady load of the fault tests: an SDK-like client posting batches to /v1/batch.

Every request that fails (a 503, a refused or reset connection) is sent again with the same
messageIds, as an SDK would, until it gets a 200; so every event sent is eventually accepted,
and the figures say how long that took.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import httpx

from e2e.e2e_support import WRITE_KEY

__all__ = ["AUTH", "LoadGenerator"]

AUTH = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()


@dataclass
class Attempt:
    started: float  # time.monotonic()
    ended: float
    outcome: str  # the HTTP status, or the name of the transport error

    @property
    def latency(self) -> float:
        return self.ended - self.started


@dataclass
class Batch:
    ids: list[str]
    body: bytes
    created: float
    accepted_at: float | None = None


class LoadGenerator:
    """Steady load on /v1/batch, retried like an SDK: a failed request is sent again, with the
    same messageIds, after a short jittered backoff, until it gets a 200.

    `accepted` holds every messageId whose request got a 200 (with every event accepted).
    """

    RETRIED = {"429", "500", "502", "503", "504"}

    def __init__(
        self,
        base_url: str,
        *,
        rate: float = 250.0,
        per_request: int = 20,
        users: int = 40,
        prefix: str | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/v1/batch"
        self.rate = rate
        self.per_request = per_request
        self.users = users
        self.prefix = prefix or uuid.uuid4().hex[:8]
        self.batches: list[Batch] = []
        self.attempts: list[Attempt] = []
        self.accepted: set[str] = set()
        self.unexpected: list[str] = []
        self.in_flight = 0  # requests sent and not answered yet
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> LoadGenerator:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self, timeout: float = 60.0) -> None:
        """Stop making new batches; wait until every batch made so far got its 200."""
        self._stopping = True
        if self._ticker is not None:
            await self._ticker
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                waiting = sum(b.accepted_at is None for b in self.batches)
                raise AssertionError(f"{waiting} batches still not accepted after {timeout}s")

    @property
    def sent(self) -> set[str]:
        return {i for b in self.batches for i in b.ids}

    async def _tick(self) -> None:
        interval = self.per_request / self.rate
        due = time.monotonic()
        n = 0
        while not self._stopping:
            ids = [f"{self.prefix}-{n + i}" for i in range(self.per_request)]
            events = [_event(mid, f"u{(n + i) % self.users}", n + i) for i, mid in enumerate(ids)]
            n += self.per_request
            batch = Batch(ids, json.dumps({"batch": events}).encode(), time.monotonic())
            self.batches.append(batch)
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            due += interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def _send(self, batch: Batch) -> None:
        assert self._client is not None
        headers = {"Authorization": AUTH, "Content-Type": "application/json"}
        failures = 0
        while True:
            started = time.monotonic()
            self.in_flight += 1
            try:
                response = await self._client.post(self.url, content=batch.body, headers=headers)
                outcome = str(response.status_code)
            except httpx.HTTPError as exc:
                response, outcome = None, type(exc).__name__
            finally:
                self.in_flight -= 1
            ended = time.monotonic()
            self.attempts.append(Attempt(started, ended, outcome))
            if response is not None and response.status_code == 200:
                answer = response.json()
                if answer.get("accepted") != len(batch.ids) or "rejected" in answer:
                    self.unexpected.append(f"200 with {answer}")
                batch.accepted_at = ended
                self.accepted.update(batch.ids)
                return
            if response is not None and outcome not in self.RETRIED:
                self.unexpected.append(f"{outcome}: {response.text[:300]}")
                return
            failures += 1
            ceiling = min(1.0, 0.05 * 2**failures)  # an SDK's backoff, capped short for measuring
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    async def wait_in_flight(self, timeout: float = 2.0) -> bool:
        """Wait until a request is on its way (to kill a process while it serves one)."""
        deadline = time.monotonic() + timeout
        while self.in_flight == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        return self.in_flight > 0

    # -- figures --

    def ids_created_before(self, moment: float) -> set[str]:
        return {i for b in self.batches if b.created <= moment for i in b.ids}

    def max_latency(self, start: float, end: float) -> float:
        """The longest request (one attempt) that overlapped [start, end]."""
        return max(
            (a.latency for a in self.attempts if a.started <= end and a.ended >= start), default=0.0
        )

    def max_accept_delay(self, start: float, end: float) -> float:
        """The longest wait, first send to 200, of the batches that were pending in [start, end]."""
        return max(
            (
                b.accepted_at - b.created
                for b in self.batches
                if b.accepted_at is not None and b.created <= end and b.accepted_at >= start
            ),
            default=0.0,
        )

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time within [start, end] without any request answered 200."""
        moments = sorted(
            a.ended for a in self.attempts if a.outcome == "200" and start <= a.ended <= end
        )
        edges = [start, *moments, end]
        return max(b - a for a, b in zip(edges, edges[1:], strict=False))

    def failures(self) -> dict[str, int]:
        """The failed requests, by HTTP status or transport error."""
        return dict(Counter(a.outcome for a in self.attempts if a.outcome != "200"))

    def baseline(self, end: float) -> tuple[float, float]:
        """p50 and p99 request latency (s) of the 200s before `end`."""
        values = sorted(a.latency for a in self.attempts if a.outcome == "200" and a.ended <= end)
        if not values:
            return 0.0, 0.0
        return statistics.median(values), values[int((len(values) - 1) * 0.99)]


def _event(message_id: str, user: str, n: int) -> dict:
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": message_id,
        "anonymousId": user,
        "properties": {"n": n, "total": 12.5},
    }
