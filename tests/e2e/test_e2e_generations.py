"""A worker holding events while a memory-storage nats-server restarts empty.

The layout is put back as `serve` does (`ensure_streams` + `ensure_consumer`) and new events take
the sequences the held ones had. What the worker held from before belongs to a consumer that no
longer exists: it must not ack, term or dead-letter anything now, and the new events must go
through exactly once, their dead letter included (the DLQ remembers message ids).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import nats
from e2e_support import stream_empty, wait_for, wire_event
from nats.js import JetStreamContext
from test_e2e_pipeline_worker import FAST, PIPELINE, ScriptedSink, running

from fixtures.nats_servers import settings_for
from krenalis.events import encode_event
from krenalis.sinks.base import DELIVERED, Event, Outcome, Rejected, Retry
from krenalis.stream.connection import NatsConnection
from krenalis.stream.deadletters import list_dead_letters
from krenalis.stream.layout import STREAM, consumer_name, ensure_consumer, ensure_streams, subject
from krenalis.worker.pipeline import PipelineWorker

COUNT = 4


class Phases:
    """What the sink answers, step by step: everything waits; then the old events are delivered
    (old-3 rejected) and new-3 is rejected while the other new ones wait; then they go too."""

    def __init__(self) -> None:
        self.now = 0
        self.delivered: Counter[str] = Counter()

    def answer(self, event: Event, attempt: int) -> Outcome:
        message_id = event["messageId"]
        if message_id in ("old-3", "new-3") and self.now >= 2:
            return Rejected("bad event")
        if self.now >= 3 or (self.now >= 2 and message_id.startswith("old-")):
            self.delivered[message_id] += 1
            return DELIVERED
        return Retry("busy", after=0.2)


async def publish(js: JetStreamContext, prefix: str) -> list[int]:
    """COUNT events, one user each (none waits behind another); their stream sequences."""
    seqs = []
    for i in range(COUNT):
        event = wire_event(f"{prefix}-{i}", f"{prefix}-user-{i}")
        ack = await js.publish(
            subject(PIPELINE), encode_event(event), headers={"Nats-Msg-Id": f"{prefix}-{i}/p"}
        )
        assert not ack.duplicate
        seqs.append(ack.seq)
    return seqs


async def dead_letter_ids(js: JetStreamContext) -> list[str]:
    return [json.loads(d.data)["messageId"] for d in await list_dead_letters(js)]


async def test_a_worker_settles_nothing_of_a_stream_lost_in_a_restart(nats_server):
    settings = settings_for(
        nats_server.url, KRENALIS_NATS_STORAGE="memory", KRENALIS_NATS_ACK_WAIT="30s"
    )
    conn = NatsConnection(settings)
    await conn.connect(timeout=10)
    await ensure_streams(conn.js, settings)
    phases = Phases()
    sink = ScriptedSink(phases.answer)
    worker = PipelineWorker(conn.js, PIPELINE, sink, settings=FAST)
    try:
        async with running(worker):
            old_seqs = await publish(conn.js, "old")
            await wait_for(lambda: all(sink.seen(f"old-{i}") for i in range(COUNT)))

            nats_server.kill()  # memory storage: EVENTS, EVENTS_DLQ and the consumer are gone
            await asyncio.to_thread(nats_server.start)  # same port
            admin = await nats.connect(nats_server.url)
            try:
                js = admin.jetstream()
                await ensure_streams(js, settings)  # as serve's restore_if_lost
                await ensure_consumer(js, PIPELINE, 0, 30)
                assert await publish(js, "new") == old_seqs
                await wait_for(lambda: all(sink.seen(f"new-{i}") for i in range(COUNT)))

                phases.now = 2  # old events, if still held, are delivered or rejected now
                await wait_for(
                    lambda: dead_letter_ids(js), what="a dead letter", timeout=10, interval=0.2
                )
                await asyncio.sleep(1.5)  # settles that went out are applied and pruned by now
                info = await js.consumer_info(STREAM, consumer_name(PIPELINE))
                assert info.num_ack_pending == COUNT - 1  # new-0..2 held; new-3 termed
                for i, seq in enumerate(old_seqs[: COUNT - 1]):
                    stored = await js.get_msg(STREAM, seq)
                    assert json.loads(stored.data)["messageId"] == f"new-{i}"
                assert await dead_letter_ids(js) == ["new-3"]

                phases.now = 3
                await wait_for(lambda: stream_empty(js), what="the new events delivered")
                assert await dead_letter_ids(js) == ["new-3"]
            finally:
                await admin.close()
    finally:
        await conn.close()
    new = {f"new-{i}": 1 for i in range(COUNT - 1)}
    assert {m: n for m, n in phases.delivered.items() if m.startswith("new-")} == new
    assert not any(m.startswith("old-") for m in phases.delivered)
