"""Sources' archives in EVENTS, on a real nats-server: in the same atomic batch as the pipeline
copies, expiring by their own TTL, untouched by pruning and purges, counted apart."""

from __future__ import annotations

import asyncio

from nats.js.api import RetentionPolicy, StreamConfig

from fixtures.nats_servers import connected
from krenalis.stream.archive import archive_copy, archive_possible, archive_spans, stream_counts
from krenalis.stream.consumer import PipelineConsumer
from krenalis.stream.layout import STREAM, archive_subject, consumer_name, remove_pipeline, subject
from krenalis.stream.pruning import Pruner
from krenalis.stream.publisher import Publisher, copy_for


def request(count: int, ttl: float = 3600, first: int = 0) -> list:
    """A request's copies as the collector makes them: each event's pipeline copy (pipeline
    "p"), then its archive copy."""
    copies = []
    for i in range(first, first + count):
        data = f'{{"messageId": "m{i}"}}'.encode()
        copies += [copy_for("p", 0, data, f"m{i}"), archive_copy("web", data, f"m{i}", ttl)]
    return copies


async def test_archive_copies_go_in_the_request_s_atomic_batch_with_their_ttl(nats_settings):
    conn = await connected(nats_settings, "p")
    try:
        acks = await Publisher(conn.nc).publish(request(30))  # 60 copies: one atomic batch
        assert await stream_counts(conn.js) == (30, 30)
        archived = await conn.js.get_msg(STREAM, acks[1].seq)
        assert archived.subject == archive_subject("web") == "events.v1._archive.web"
        headers = archived.headers or {}
        assert headers["Nats-TTL"] == "3600"
        assert headers["Nats-Msg-Id"] == "m0/_archive.web"
        batch = (await conn.js.get_msg(STREAM, acks[0].seq)).headers["Nats-Batch-Id"]
        assert headers["Nats-Batch-Id"] == batch  # the same batch: one fsync for both
        assert (
            headers.get("Nats-TTL")
            and "Nats-TTL" not in (await conn.js.get_msg(STREAM, acks[0].seq)).headers
        )  # pipeline copies never expire by themselves
        again = await Publisher(conn.nc).publish(request(30))  # a client's retry
        assert all(a.duplicate for a in again) and await stream_counts(conn.js) == (30, 30)
    finally:
        await conn.close()


async def test_archive_copies_expire_and_pipeline_copies_stay(nats_settings):
    conn = await connected(nats_settings, "p")
    try:
        await Publisher(conn.nc).publish(request(5, ttl=1))
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
        await Publisher(conn.nc).publish(request(20))
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
        await Publisher(conn.nc).publish(request(3, first=20))
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


async def test_a_workqueue_stream_keeps_no_archive(nats_settings, nc):
    await nc.jetstream().add_stream(
        StreamConfig(name=STREAM, subjects=["events.v1.>"], retention=RetentionPolicy.WORK_QUEUE)
    )
    conn = await connected(nats_settings)  # keeps the retention NATS cannot change
    try:
        assert not await archive_possible(conn.js)
    finally:
        await conn.close()
    await nc.jetstream().delete_stream(STREAM)
    conn = await connected(nats_settings)  # a new stream: limits retention
    try:
        assert await archive_possible(conn.js)
    finally:
        await conn.close()
