"""Sources' archives, on a real nats-server: in EVENTS_ARCHIVE, stored beside the pipelines'
copies, expiring by their own TTL, untouched by pruning and purges, counted apart; what an
earlier version archived in EVENTS still counted; the archive's stream put back when lost."""

from __future__ import annotations

import asyncio

from nats.js.api import RetentionPolicy, StreamConfig

from fixtures.nats_servers import connected
from krenalis.stream.archive import archive_copy, archive_spans, stream_counts
from krenalis.stream.consumer import PipelineConsumer
from krenalis.stream.layout import (
    ARCHIVE_STREAM,
    STREAM,
    archive_subject,
    consumer_name,
    legacy_archive_subject,
    remove_pipeline,
    restore_if_lost,
    subject,
)
from krenalis.stream.pruning import Pruner
from krenalis.stream.publisher import OutMessage, Publisher, copy_for


def request(count: int, ttl: float = 3600, first: int = 0) -> tuple[list, list]:
    """A request's copies as the collector makes them: each event's pipeline copy (pipeline
    "p"), and its archive copy."""
    copies, archived = [], []
    for i in range(first, first + count):
        data = f'{{"messageId": "m{i}"}}'.encode()
        copies.append(copy_for("p", 0, data, f"m{i}"))
        archived.append(archive_copy("web", data, f"m{i}", ttl))
    return copies, archived


async def store(conn, count: int, ttl: float = 3600, first: int = 0) -> list:
    """Store a request's copies as the collector does, two parts of one publish; the archive
    copies' acks."""
    copies, archived = request(count, ttl, first)
    return (await Publisher(conn.nc).publish(copies, archived))[count:]


async def test_archive_copies_go_to_their_own_stream_with_their_ttl(nats_settings):
    conn = await connected(nats_settings, "p")
    try:
        acks = await store(conn, 30)  # 30 copies each: an atomic batch in each stream
        assert {a.stream for a in acks} == {ARCHIVE_STREAM}
        assert await stream_counts(conn.js) == (30, 30)
        archived = await conn.js.get_msg(ARCHIVE_STREAM, acks[0].seq)
        assert archived.subject == archive_subject("web") == "archive.v1.web"
        headers = archived.headers or {}
        assert headers["Nats-TTL"] == "3600"
        assert headers["Nats-Msg-Id"] == "m0/_archive.web"
        assert "Nats-Batch-Id" in headers  # one fsync for the request's archive copies
        piped = await conn.js.get_msg(STREAM, 1)
        assert "Nats-TTL" not in (piped.headers or {})  # pipeline copies never expire
        again = await store(conn, 30)  # a client's retry
        assert all(a.duplicate for a in again) and await stream_counts(conn.js) == (30, 30)
    finally:
        await conn.close()


async def test_archive_copies_expire_and_pipeline_copies_stay(nats_settings):
    conn = await connected(nats_settings, "p")
    try:
        await store(conn, 5, ttl=1)
        assert await stream_counts(conn.js) == (5, 5)
        for _ in range(50):
            if await stream_counts(conn.js) == (5, 0):
                break
            await asyncio.sleep(0.1)
        assert await stream_counts(conn.js) == (5, 0)
    finally:
        await conn.close()


async def test_pruning_and_removing_a_pipeline_leave_the_archive(nats_settings):
    conn = await connected(nats_settings, "p")
    try:
        await store(conn, 20)
        consumer = PipelineConsumer(conn.js, "p", 0, ack_wait=30)
        await consumer.start(create=False)
        deliveries = await consumer.fetch(20, timeout=2)
        assert len(deliveries) == 20
        for delivery in deliveries:
            await delivery.ack()
        await conn.nc.flush()
        await asyncio.sleep(0.2)
        await Pruner(conn.js, consumer_name("p"), subject("p")).prune()
        assert await stream_counts(conn.js) == (0, 20)  # processed copies gone, archive kept
        await consumer.close()
        await store(conn, 3, first=20)
        assert await stream_counts(conn.js) == (3, 23)
        assert await remove_pipeline(conn.js, "p") == 3
        assert await stream_counts(conn.js) == (0, 23)
    finally:
        await conn.close()


async def test_archive_spans_per_source(nats_settings):
    conn = await connected(nats_settings)
    try:
        assert await archive_spans(conn.js) == {}
        data = b'{"messageId": "x", "properties": {"pad": "' + b"p" * 400 + b'"}}'
        copies = [archive_copy("web", data, f"w{i}", 60) for i in range(40)]
        copies += [archive_copy("app", b"{}", "a1", 60)]
        await Publisher(conn.nc).publish(copies)
        spans = await archive_spans(conn.js)
        assert set(spans) == {"web", "app"}
        web = spans["web"]
        assert web.messages == 40 and web.first is not None and web.first <= web.last
        per_copy = len(data) + len(archive_subject("web"))
        assert per_copy * 40 < web.approx_bytes < (per_copy + 200) * 40
        assert spans["app"].messages == 1
    finally:
        await conn.close()


def legacy_copy(source: str, data: bytes, message_id: str) -> OutMessage:
    """An archive copy as an earlier version stored it: in EVENTS."""
    return OutMessage(legacy_archive_subject(source), data, f"{message_id}/_archive.{source}", 60)


async def test_an_earlier_versions_archive_in_events_is_counted_with_the_new_one(nats_settings):
    conn = await connected(nats_settings, "p")
    try:
        await Publisher(conn.nc).publish([legacy_copy("web", b"{}", f"old{i}") for i in range(7)])
        await asyncio.sleep(0.01)  # the new copies come later
        await store(conn, 3)
        assert await stream_counts(conn.js) == (3, 10)  # pipeline copies, archive copies
        spans = await archive_spans(conn.js)
        old = await conn.js.get_msg(STREAM, 1)
        new = await conn.js.get_last_msg(ARCHIVE_STREAM, archive_subject("web"))
        assert spans["web"].messages == 10
        assert (spans["web"].first, spans["web"].last) == (old.time, new.time)
    finally:
        await conn.close()


async def test_a_workqueue_events_stream_still_gets_an_archive(nats_settings, nc):
    await nc.jetstream().add_stream(
        StreamConfig(name=STREAM, subjects=["events.v1.>"], retention=RetentionPolicy.WORK_QUEUE)
    )
    conn = await connected(nats_settings)  # keeps the retention NATS cannot change
    try:
        assert (await conn.js.stream_info(STREAM)).config.retention == RetentionPolicy.WORK_QUEUE
        archive = await conn.js.stream_info(ARCHIVE_STREAM)
        assert archive.config.retention == RetentionPolicy.LIMITS
        await Publisher(conn.nc).publish([archive_copy("web", b"{}", "m1", 60)])
        assert (await archive_spans(conn.js))["web"].messages == 1
    finally:
        await conn.close()


async def test_a_lost_archive_stream_is_put_back(nats_settings):
    conn = await connected(nats_settings, "p")
    try:
        assert not await restore_if_lost(conn.js, nats_settings, {"p": 1})
        await conn.js.delete_stream(ARCHIVE_STREAM)  # by hand, or a memory server's restart
        assert await restore_if_lost(conn.js, nats_settings, {"p": 1})
        await store(conn, 2)
        assert await stream_counts(conn.js) == (2, 2)
    finally:
        await conn.close()
