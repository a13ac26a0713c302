"""The EVENTS stream and per-pipeline consumers, created on a real nats-server."""

from __future__ import annotations

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StoreCompression

from fixtures.nats_servers import connected, settings_for
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import (
    DLQ_STREAM,
    STREAM,
    ensure_consumer,
    ensure_streams,
    list_pipeline_consumers,
    remove_pipeline,
)
from krenalis.stream.publisher import Publisher, copy_for


async def test_stream_created_with_configured_storage_and_compression(nats_server):
    settings = settings_for(nats_server.url, KRENALIS_NATS_COMPRESSION="s2")
    conn = await connected(settings)
    try:
        info = await conn.js.stream_info(STREAM)
        cfg = info.config
        assert cfg.subjects == ["events.v1.>"]
        assert cfg.retention == RetentionPolicy.LIMITS  # consumers remove what they acked
        assert cfg.discard == DiscardPolicy.NEW  # a size limit never drops unprocessed events
        assert cfg.storage == StorageType.FILE
        assert cfg.num_replicas == 1
        assert cfg.compression == StoreCompression.S2
        assert cfg.duplicate_window == 120.0
        dlq = await conn.js.stream_info(DLQ_STREAM)
        assert dlq.config.subjects == ["dlq.v1.>"]
        assert conn.usable and await conn.wait_usable()
    finally:
        await conn.close()


async def test_memory_storage_and_update_is_idempotent(nats_server):
    settings = settings_for(nats_server.url, KRENALIS_NATS_STORAGE="memory")
    conn = await connected(settings)
    try:
        await ensure_streams(conn.js, settings)  # a second start updates, does not fail
        info = await conn.js.stream_info(STREAM)
        assert info.config.storage == StorageType.MEMORY
    finally:
        await conn.close()


async def test_one_consumer_per_pipeline_and_one_copy_per_pipeline(nats_settings):
    conn = await connected(nats_settings)
    js = conn.js
    try:
        for pipeline in ("warehouse", "crm"):
            await ensure_consumer(js, pipeline, 0, ack_wait=5)
        await ensure_consumer(js, "crm", 0, ack_wait=7)  # an update, not an error
        assert await list_pipeline_consumers(js) == {"warehouse": {0}, "crm": {0}}
        info = await js.consumer_info(STREAM, "EVENTS_crm_0")
        assert info.config.filter_subject == "events.v1.crm.0"
        assert info.config.ack_wait == 7
        assert info.config.durable_name == "EVENTS_crm_0"

        publisher = Publisher(conn.nc)
        copies = [copy_for(p, 0, b'{"messageId":"m1"}', "m1") for p in ("warehouse", "crm")]
        acks = await publisher.publish(copies)
        assert [a.duplicate for a in acks] == [None, None] or not any(a.duplicate for a in acks)
        for pipeline in ("warehouse", "crm"):
            assert (await js.consumer_info(STREAM, f"EVENTS_{pipeline}_0")).num_pending == 1
        assert (await js.stream_info(STREAM)).state.messages == 2
    finally:
        await conn.close()


async def test_republished_message_id_is_stored_once(nats_settings):
    conn = await connected(nats_settings)
    try:
        await ensure_consumer(conn.js, "wh", 0, ack_wait=5)
        publisher = Publisher(conn.nc)
        first = await publisher.publish([copy_for("wh", 0, b"{}", "same-id")])
        again = await publisher.publish([copy_for("wh", 0, b"{}", "same-id")])
        assert again[0].duplicate and again[0].seq == first[0].seq
        assert (await conn.js.stream_info(STREAM)).state.messages == 1
    finally:
        await conn.close()


async def test_removed_pipeline_loses_consumer_and_pending_events(nats_settings):
    conn = await connected(nats_settings)
    js = conn.js
    try:
        for pipeline in ("keep", "gone"):
            await ensure_consumer(js, pipeline, 0, ack_wait=5)
        publisher = Publisher(conn.nc)
        await publisher.publish(
            [copy_for(p, 0, b"{}", f"m{i}") for i in range(3) for p in ("keep", "gone")]
        )
        assert await remove_pipeline(js, "gone") == 3
        assert await list_pipeline_consumers(js) == {"keep": {0}}
        assert (await js.stream_info(STREAM)).state.messages == 3
    finally:
        await conn.close()


async def test_stream_creation_waits_while_jetstream_is_unavailable(tmp_path, caplog):
    """A server without JetStream: ensure_streams keeps retrying and says why, once."""
    import asyncio
    import logging

    from krenalis.runtime.nats_server import EmbeddedNats

    server = EmbeddedNats(tmp_path / "nojs", jetstream=False)
    server.start()
    settings = settings_for(server.url)
    conn = NatsConnection(settings)
    try:
        await conn.connect(timeout=10)
        with caplog.at_level(logging.WARNING, logger="krenalis.stream"):
            task = asyncio.create_task(ensure_streams(conn.js, settings))
            await asyncio.sleep(2.0)
            assert not task.done()
            task.cancel()
        warnings = [r for r in caplog.records if "Cannot create or update" in r.getMessage()]
        assert len(warnings) == 1
        assert "JetStream not enabled" in warnings[0].reason
        assert not conn.usable
    finally:
        await conn.close()
        server.kill()
