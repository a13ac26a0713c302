"""A 3-node cluster with replicas 3: losing the stream leader loses no acknowledged event."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from fixtures.nats_servers import settings_for
from krenalis.errors import PublishError
from krenalis.stream.connection import NatsConnection
from krenalis.stream.consumer import PipelineConsumer
from krenalis.stream.layout import STREAM, ensure_consumer, ensure_streams
from krenalis.stream.publisher import Publisher, copy_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


async def publish_until(publisher: Publisher, stop: asyncio.Event, acked: list[str]) -> None:
    i = 0
    while not stop.is_set():
        batch = [f"m{i + k}" for k in range(20)]
        i += 20
        try:
            await publisher.publish([copy_for("wh", 0, mid.encode(), mid) for mid in batch])
        except PublishError:
            continue  # not acknowledged: the client would retry; we only count acked ones
        acked.extend(batch)


async def test_stream_leader_killed_while_publishing(nats_cluster):
    await nats_cluster.wait_jetstream()
    settings = settings_for(nats_cluster.urls, KRENALIS_NATS_REPLICAS="3")
    conn = NatsConnection(settings)
    await conn.connect(timeout=20)
    try:
        await ensure_streams(conn.js, settings)
        await ensure_consumer(conn.js, "wh", 0, ack_wait=30)
        info = await conn.js.stream_info(STREAM)
        assert info.config.num_replicas == 3
        leader = info.cluster.leader

        acked: list[str] = []
        stop = asyncio.Event()
        publisher = Publisher(conn.nc, timeout=2.0, deadline=20.0)
        task = asyncio.create_task(publish_until(publisher, stop, acked))
        await asyncio.sleep(1.0)
        before_kill = len(acked)
        nats_cluster.node_named(leader).kill()
        await asyncio.sleep(8.0)  # an election takes ~5 s; publishing goes on through it
        stop.set()
        await task
        assert before_kill > 0 and len(acked) > before_kill

        new_leader = (await conn.js.stream_info(STREAM)).cluster.leader
        assert new_leader != leader

        consumer = PipelineConsumer(conn.js, "wh", ack_wait=30)
        await consumer.start()
        seen: set[str] = set()
        deadline = asyncio.get_running_loop().time() + 60
        while not set(acked) <= seen and asyncio.get_running_loop().time() < deadline:
            for d in await consumer.fetch(500, timeout=1):
                seen.add(d.data.decode())
                await d.ack()
        with contextlib.suppress(Exception):
            await consumer.close()
        missing = set(acked) - seen
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
    finally:
        await conn.close()
