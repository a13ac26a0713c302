"""Removal of settled messages from the limits-retention EVENTS stream, on a real nats-server.

What must hold: a message leaves EVENTS only once its own consumer settled it (ack or term), never
while any process still holds it, never for another pipeline's sake; and a message held for a
long retry does not keep everything acked after it on disk.
"""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from fixtures.nats_servers import settings_for
from krenalis.stream import pruning
from krenalis.stream.connection import NatsConnection
from krenalis.stream.consumer import Delivery, PipelineConsumer
from krenalis.stream.layout import STREAM, ensure_consumer, ensure_streams
from krenalis.stream.publisher import Publisher, copy_for


async def connect(url: str, *pipelines: str) -> NatsConnection:
    settings = settings_for(url, KRENALIS_NATS_ACK_WAIT="30s")
    conn = NatsConnection(settings)
    await conn.connect(timeout=10)
    await ensure_streams(conn.js, settings)
    for pipeline in pipelines:
        await ensure_consumer(conn.js, pipeline, 0, 30)
    return conn


async def publish(conn: NatsConnection, pipelines: tuple[str, ...], count: int) -> None:
    """`count` events, one copy per pipeline, interleaved in the stream."""
    copies = [copy_for(p, 0, f"{p}-{i}".encode(), f"m{i}") for i in range(count) for p in pipelines]
    await Publisher(conn.nc).publish(copies)


async def fetch(consumer: PipelineConsumer, want: int) -> list[Delivery]:
    got: list[Delivery] = []
    for _ in range(20):
        got += await consumer.fetch(want - len(got), timeout=0.5)
        if len(got) >= want:
            break
    assert len(got) == want
    return got


async def stored(conn: NatsConnection) -> dict[str, int]:
    info = await conn.js.stream_info(STREAM, subjects_filter=">")
    return {s.split(".")[2]: n for s, n in (info.state.subjects or {}).items()}


async def settles_to(conn: NatsConnection, want: dict[str, int], timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while await stored(conn) != want:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_settled_messages_leave_and_held_ones_stay(nats_server):
    conn = await connect(nats_server.url, "a", "b")
    consumer = PipelineConsumer(conn.js, "a", ack_wait=30.0)
    await consumer.start()
    try:
        assert consumer.pruner is not None
        await publish(conn, ("a", "b"), 10)
        batch = await fetch(consumer, 10)
        for d in batch[:4]:
            await d.ack()
        await batch[4].term("bad")
        for d in batch[6:]:  # batch[5] is held: waiting for a retry
            await d.ack()
        # Up to the held message everything left; the four acked after it wait for it (or for
        # the straggler deletion); pipeline b, never consumed, keeps all of its copies.
        assert await settles_to(conn, {"a": 5, "b": 10})
        assert batch[4].stream_seq <= consumer.pruner.floor < batch[5].stream_seq
        await batch[5].ack()
        assert await settles_to(conn, {"b": 10})
    finally:
        await consumer.close()
        await conn.close()


async def test_a_message_held_by_another_process_is_not_removed(nats_server):
    """Two workers share a consumer: one's acks must not remove what the other still holds."""
    conn_a = await connect(nats_server.url, "p")
    conn_b = await connect(nats_server.url)
    first = PipelineConsumer(conn_a.js, "p", ack_wait=30.0)
    second = PipelineConsumer(conn_b.js, "p", ack_wait=30.0)
    await first.start()
    await second.start()
    try:
        await publish(conn_a, ("p",), 20)
        held = await fetch(first, 10)  # the first ten, not settled yet
        for d in await fetch(second, 10):
            await d.ack()
        await second.pruner.prune()
        await asyncio.sleep(0.6)  # a few pruning rounds of both
        assert await stored(conn_a) == {"p": 20}
        await first.close()  # hands its ten back at once
        again = await fetch(second, 10)
        assert sorted(d.data for d in again) == sorted(d.data for d in held)
        for d in again:
            await d.ack()
        assert await settles_to(conn_a, {})
    finally:
        await second.close()
        await conn_a.close()
        await conn_b.close()


async def test_acked_messages_behind_a_long_retry_are_deleted_one_by_one(
    nats_server, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(pruning, "STRAGGLER_AFTER", 0.5)
    conn = await connect(nats_server.url, "p")
    consumer = PipelineConsumer(conn.js, "p", ack_wait=30.0)
    await consumer.start()
    try:
        await publish(conn, ("p",), 200)
        batch = await fetch(consumer, 200)
        for d in batch[1:]:  # batch[0] waits for a retry and holds the ack floor at 0
            await d.ack()
        assert await settles_to(conn, {"p": 1})
        assert consumer.pruner.floor == 0
        left = await conn.js.get_msg(STREAM, batch[0].stream_seq)
        assert left.data == b"p-0"
        await batch[0].ack()
        assert await settles_to(conn, {})
    finally:
        await consumer.close()
        await conn.close()


async def test_the_last_acks_are_removed_when_the_worker_stops(nats_server):
    conn = await connect(nats_server.url, "p")
    consumer = PipelineConsumer(conn.js, "p", ack_wait=30.0)
    await consumer.start()
    await publish(conn, ("p",), 5)
    for d in await fetch(consumer, 5):
        await d.ack()
    await consumer.close()
    try:
        assert await settles_to(conn, {}, timeout=1.0)
    finally:
        await conn.close()


async def test_an_existing_workqueue_stream_is_kept_and_acks_remove(nats_server):
    """A stream made by the original Krenalis (or our first versions) cannot change retention."""
    conn = await connect(nats_server.url)
    await conn.js.delete_stream(STREAM)
    await conn.js.add_stream(
        StreamConfig(
            name=STREAM,
            subjects=["events.v1.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        )
    )
    try:
        await ensure_streams(conn.js, conn.settings)  # no error, no endless retry
        info = await conn.js.stream_info(STREAM)
        assert info.config.retention == RetentionPolicy.WORK_QUEUE
        assert info.config.allow_atomic  # the rest of the configuration was applied
        await ensure_consumer(conn.js, "p", 0, 30)
        consumer = PipelineConsumer(conn.js, "p", ack_wait=30.0)
        await consumer.start()
        assert consumer.pruner is None
        await publish(conn, ("p",), 3)
        for d in await fetch(consumer, 3):
            await d.ack()
        assert await settles_to(conn, {})
        await consumer.close()
    finally:
        await conn.close()


async def test_a_consumer_made_again_is_not_pruned_by_old_sequences(
    nats_server, monkeypatch: pytest.MonkeyPatch
):
    """A memory-storage server restarted empty: the same names, sequences from 1 again. What the
    pruner remembers from before must not delete the new stream's messages."""
    monkeypatch.setattr(pruning, "STRAGGLER_AFTER", 0.3)
    conn = await connect(nats_server.url, "p")
    consumer = PipelineConsumer(conn.js, "p", ack_wait=30.0)
    await consumer.start()
    try:
        await publish(conn, ("p",), 10)
        batch = await fetch(consumer, 10)
        for d in batch[1:]:  # batch[0] held: seqs 2-10 wait above the floor
            await d.ack()
        await conn.js.delete_stream(STREAM)  # what a restart of a memory server looks like
        await ensure_streams(conn.js, conn.settings)
        await ensure_consumer(conn.js, "p", 0, 30)
        await Publisher(conn.nc).publish([copy_for("p", 0, b"new", f"n{i}") for i in range(10)])
        await asyncio.sleep(1.5)  # several pruning rounds past STRAGGLER_AFTER
        assert await stored(conn) == {"p": 10}
    finally:
        await consumer.close()
        await conn.close()
