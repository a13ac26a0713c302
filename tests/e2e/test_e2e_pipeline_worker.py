"""The pipeline worker in-process, against a real nats-server, with a scripted sink.

The sink is a small class implementing the Sink protocol (the seam the worker talks to); NATS is
real, so acks, heartbeats, dead letters and hand-backs are what the server records.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import pytest
from e2e_support import stream_empty, stream_messages, wait_for, wire_event
from nats.js import JetStreamContext

from krenalis.events import encode_event
from krenalis.sinks.base import DELIVERED, Event, Outcome, Rejected, Retry
from krenalis.stream.deadletters import H_ATTEMPTS, H_PIPELINE, H_REASON, list_dead_letters
from krenalis.stream.layout import DLQ_STREAM, STREAM, consumer_name, subject
from krenalis.worker.pipeline import PipelineWorker, WorkerSettings

PIPELINE = "p"
FAST = WorkerSettings(batch_max_events=100, batch_max_wait=0.1, ack_wait=30.0)

Script = Callable[[dict[str, Any], int], Outcome]


class ScriptedSink:
    """Answers each event with `script(event, attempt)`; records every write."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or (lambda event, attempt: DELIVERED)
        self.writes: list[list[str]] = []
        self.attempts: dict[str, list[float]] = defaultdict(list)  # messageId -> times
        self.raise_next: Exception | None = None

    async def write(self, events: list[Event]) -> list[Outcome]:
        self.writes.append([e.message_id for e in events])
        for e in events:
            self.attempts[e.message_id].append(time.monotonic())
        if self.raise_next is not None:
            exc, self.raise_next = self.raise_next, None
            raise exc
        return [self.script(e.fields, len(self.attempts[e.message_id])) for e in events]

    async def healthcheck(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def seen(self, message_id: str) -> int:
        return len(self.attempts.get(message_id, ()))

    def delivered_order(self) -> list[str]:
        return [m for write in self.writes for m in write]


async def publish(js: JetStreamContext, *events: dict, raw: bytes | None = None) -> None:
    for event in events:
        await js.publish(
            subject(PIPELINE),
            encode_event(event),
            headers={"Nats-Msg-Id": f"{event['messageId']}/{PIPELINE}"},
        )
    if raw is not None:
        await js.publish(subject(PIPELINE), raw)


@contextlib.asynccontextmanager
async def running(worker: PipelineWorker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def test_delivered_events_are_acked_and_leave_the_stream(js):
    sink = ScriptedSink()
    worker = PipelineWorker(js, PIPELINE, sink, settings=FAST)
    await publish(js, *(wire_event(f"m{i}", f"u{i % 3}") for i in range(25)))
    async with running(worker):
        await wait_for(lambda: stream_empty(js), what="EVENTS to empty")
        info = await js.consumer_info(STREAM, consumer_name(PIPELINE))
        assert info.num_ack_pending == 0 and info.num_pending == 0
    assert sorted(sink.delivered_order()) == sorted(f"m{i}" for i in range(25))
    assert all(len(times) == 1 for times in sink.attempts.values())
    assert worker.last_delivery is not None
    assert await list_dead_letters(js) == []


async def test_retry_keeps_the_message_and_tries_again_later(js):
    def script(event: dict[str, Any], attempt: int) -> Outcome:
        if event["messageId"] == "told" and attempt <= 2:
            return Retry("busy", after=0.3)  # the sink knows when (Retry-After)
        if event["messageId"] == "backoff" and attempt == 1:
            return Retry("HTTP 502")  # the worker's backoff: 0.5 to 1 s
        return DELIVERED

    sink = ScriptedSink(script)
    worker = PipelineWorker(js, PIPELINE, sink, settings=FAST)
    await publish(js, wire_event("told", "u1"), wire_event("backoff", "u2"))
    async with running(worker):
        await wait_for(lambda: sink.seen("told") >= 1 and sink.seen("backoff") >= 1)
        assert await stream_messages(js) == 2  # kept while waiting for the retry
        assert worker.last_error in ("busy", "HTTP 502")
        await wait_for(lambda: stream_empty(js), what="both delivered", timeout=10)
    told, backoff = sink.attempts["told"], sink.attempts["backoff"]
    assert len(told) == 3 and len(backoff) == 2
    assert all(0.25 <= b - a <= 1.5 for a, b in zip(told, told[1:], strict=False)), told
    assert 0.45 <= backoff[1] - backoff[0] <= 2.0, backoff
    assert await list_dead_letters(js) == []


async def test_a_sink_that_raises_means_retry_every_event_of_the_batch(js):
    sink = ScriptedSink()
    sink.raise_next = ConnectionError("warehouse unreachable")
    worker = PipelineWorker(js, PIPELINE, sink, settings=FAST)
    await publish(js, wire_event("x1", "u1"), wire_event("x2", "u2"))
    async with running(worker):
        await wait_for(lambda: stream_empty(js), what="both delivered after the retry", timeout=10)
    assert sink.seen("x1") == 2 and sink.seen("x2") == 2
    assert await list_dead_letters(js) == []


async def test_retrying_past_the_window_dead_letters_the_event(js):
    sink = ScriptedSink(lambda event, attempt: Retry("HTTP 503: down", after=0.2))
    settings = WorkerSettings(batch_max_wait=0.1, retry_window=1.0)
    worker = PipelineWorker(js, PIPELINE, sink, settings=settings)
    await publish(js, wire_event("doomed"))
    async with running(worker):
        [letter] = await wait_for(lambda: list_dead_letters(js, PIPELINE), what="a dead letter")
        await wait_for(lambda: stream_empty(js), what="EVENTS to empty")
        attempts = sink.seen("doomed")
        await asyncio.sleep(0.5)
        assert sink.seen("doomed") == attempts  # no attempt after the dead letter
    assert letter.reason == "retry window of 1s ended: HTTP 503: down"
    assert letter.attempts == attempts >= 3
    assert letter.message_id == "doomed"
    assert letter.pipeline == PIPELINE


async def test_a_rejected_event_is_dead_lettered_with_its_reason(js):
    def script(event: dict[str, Any], attempt: int) -> Outcome:
        if event["messageId"] == "bad":
            return Rejected("column context_ip: invalid input syntax for type inet")
        return DELIVERED

    sink = ScriptedSink(script)
    worker = PipelineWorker(js, PIPELINE, sink, settings=FAST)
    bad = wire_event("bad")
    await publish(js, wire_event("good-1"), bad, wire_event("good-2"))
    async with running(worker):
        [letter] = await wait_for(lambda: list_dead_letters(js, PIPELINE), what="a dead letter")
        await wait_for(lambda: stream_empty(js), what="EVENTS to empty")
    assert sink.seen("bad") == 1  # a rejection is not retried
    assert sink.seen("good-1") == sink.seen("good-2") == 1
    assert letter.reason == "column context_ip: invalid input syntax for type inet"
    assert letter.data == encode_event(bad)  # the original bytes, to replay
    raw = await js.get_msg(DLQ_STREAM, seq=letter.seq)
    assert raw.headers[H_REASON] == letter.reason
    assert raw.headers[H_PIPELINE] == PIPELINE and raw.headers[H_ATTEMPTS] == "1"
    assert raw.subject == f"dlq.v1.{PIPELINE}"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not json", "invalid event data: event is not valid JSON"),
        (b'{"type": "track"}', "invalid event data: event property 'connectionId'"),
    ],
)
async def test_an_undecodable_message_is_dead_lettered(js, raw, reason):
    sink = ScriptedSink()
    worker = PipelineWorker(js, PIPELINE, sink, settings=FAST)
    await publish(js, wire_event("before"), raw=raw)
    await publish(js, wire_event("after"))
    async with running(worker):
        [letter] = await wait_for(lambda: list_dead_letters(js, PIPELINE), what="a dead letter")
        await wait_for(lambda: stream_empty(js), what="EVENTS to empty")
    assert letter.reason.startswith(reason), letter.reason
    assert letter.data == raw
    assert sorted(sink.delivered_order()) == ["after", "before"]  # the sink never saw it


async def test_stop_hands_back_unsettled_messages_at_once(js):
    sink = ScriptedSink(lambda event, attempt: Retry("later", after=60))
    worker = PipelineWorker(js, PIPELINE, sink, settings=FAST)  # AckWait 30 s
    await publish(js, *(wire_event(f"h{i}", f"u{i}") for i in range(5)))
    async with running(worker) as task:
        await wait_for(lambda: len(sink.attempts) == 5, what="5 events held for a retry")
        stopped = time.monotonic()
    assert task.done() and time.monotonic() - stopped < 3
    # Handed back (nak), not left to AckWait: another consumer gets them right away.
    sub = await js.pull_subscribe_bind(consumer_name(PIPELINE), stream=STREAM)
    msgs: list = []
    deadline = time.monotonic() + 3  # far below the AckWait of 30 s
    while len(msgs) < 5 and time.monotonic() < deadline:
        with contextlib.suppress(nats.errors.TimeoutError):
            msgs += await sub.fetch(5 - len(msgs), timeout=0.5)
    assert sorted(m.data for m in msgs) == sorted(
        encode_event(wire_event(f"h{i}", f"u{i}")) for i in range(5)
    )
    assert all(m.metadata.num_delivered == 2 for m in msgs)
    for m in msgs:
        await m.ack()
    await sub.unsubscribe()


async def test_a_users_later_events_wait_behind_its_retried_event(js):
    def script(event: dict[str, Any], attempt: int) -> Outcome:
        if event["messageId"] == "a1" and attempt == 1:
            return Retry("HTTP 500", after=1.0)
        return DELIVERED

    sink = ScriptedSink(script)
    worker = PipelineWorker(js, PIPELINE, sink, settings=FAST)
    await publish(js, wire_event("a1", "user-a"), wire_event("b1", "user-b"))
    async with running(worker):
        await wait_for(lambda: sink.seen("a1") == 1 and sink.seen("b1") == 1)
        failed_at = time.monotonic()
        await publish(js, wire_event("a2", "user-a"), wire_event("b2", "user-b"))
        await wait_for(lambda: sink.seen("b2") == 1, what="b2 while a1 waits")
        assert time.monotonic() - failed_at < 0.9  # user B was not held up
        assert sink.seen("a2") == 0  # user A's later event waits behind a1
        await wait_for(lambda: stream_empty(js), what="EVENTS to empty", timeout=10)
    order = sink.delivered_order()
    assert order.index("a2") > len(order) - 1 - order[::-1].index("a1")  # a2 after a1's retry
    assert sink.seen("a1") == 2 and sink.seen("a2") == 1


async def test_waiting_events_go_at_once_when_a_retried_event_gets_through(js, monkeypatch):
    """After an outage the backlog drains as soon as the sink is back, not after each event's
    own backoff; a Retry-After from the sink is still honoured."""
    outage = {"on": True}

    def script(event: dict[str, Any], attempt: int) -> Outcome:
        if event["messageId"] == "told":
            return Retry("rate limited", after=3.0) if attempt == 1 else DELIVERED
        if event["messageId"] == "first":  # the sink asks for this one again soon
            return Retry("HTTP 503", after=0.3) if outage["on"] else DELIVERED
        return Retry("HTTP 503") if outage["on"] else DELIVERED

    # The worker's own backoff: a minute, far longer than the test waits.
    monkeypatch.setattr("krenalis.worker.pipeline.retry_delay", lambda attempt: 60.0)
    sink = ScriptedSink(script)
    worker = PipelineWorker(js, PIPELINE, sink, settings=FAST)
    await publish(js, wire_event("first", "u1"))
    async with running(worker):
        await wait_for(lambda: sink.seen("first") == 1, what="the first attempt")
        await publish(
            js, wire_event("told", "u3"), *(wire_event(f"w{i}", f"u{i}") for i in range(4, 9))
        )
        await wait_for(lambda: sink.seen("w8") == 1, what="the others' first attempt")
        outage["on"] = False  # "first" is retried within 0.3 s and gets through; w4..w8 wait 60 s
        started = time.monotonic()
        await wait_for(
            lambda: all(sink.seen(f"w{i}") == 2 for i in range(4, 9)),
            what="the waiting events to go",
            timeout=10,
        )
        assert time.monotonic() - started < 5
        assert sink.seen("told") == 1  # its Retry-After (3 s) is not cut short by the recovery
        await wait_for(lambda: stream_empty(js), what="EVENTS to empty", timeout=10)
