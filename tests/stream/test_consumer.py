"""Fetching, heartbeats, settling and redelivery against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from fixtures.nats_servers import settings_for
from krenalis.stream.connection import NatsConnection
from krenalis.stream.consumer import PipelineConsumer
from krenalis.stream.layout import STREAM, ensure_consumer, ensure_streams
from krenalis.stream.publisher import Publisher, copy_for


async def setup(url: str, pipeline: str, ack_wait: float, count: int = 1):
    settings = settings_for(url, KRENALIS_NATS_ACK_WAIT=f"{ack_wait}s")
    conn = NatsConnection(settings)
    await conn.connect(timeout=10)
    await ensure_streams(conn.js, settings)
    await ensure_consumer(conn.js, pipeline, 0, ack_wait)
    await Publisher(conn.nc).publish(
        [copy_for(pipeline, 0, f"e{i}".encode(), f"m{i}") for i in range(count)]
    )
    return conn


@contextlib.asynccontextmanager
async def consuming(url: str, pipeline: str, ack_wait: float, count: int = 1):
    """`setup`, then a started consumer of the pipeline; both closed at the end."""
    conn = await setup(url, pipeline, ack_wait, count)
    consumer = PipelineConsumer(conn.js, pipeline, ack_wait=ack_wait)
    await consumer.start()
    try:
        yield conn, consumer
    finally:
        await consumer.close()
        await conn.close()


async def stream_holds(conn: NatsConnection, count: int, timeout: float = 5.0) -> bool:
    """Whether EVENTS comes to hold `count` messages (settled ones leave within a second)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (await conn.js.stream_info(STREAM)).state.messages != count:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def fetch_all(consumer: PipelineConsumer, want: int, timeout: float = 5.0):
    got = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got) < want and asyncio.get_running_loop().time() < deadline:
        got += await consumer.fetch(want - len(got), timeout=0.5)
    return got


async def test_long_processing_with_heartbeats_is_delivered_once(nats_server):
    async with consuming(nats_server.url, "slow", 1.0) as (conn, consumer):
        [delivery] = await fetch_all(consumer, 1)
        assert delivery.num_delivered == 1
        await asyncio.sleep(3.0)  # three AckWaits of "work"
        info = await conn.js.consumer_info(STREAM, consumer.name)
        assert info.num_redelivered == 0 and info.num_ack_pending == 1
        assert await consumer.fetch(1, timeout=0.5) == []  # nothing redelivered meanwhile
        await delivery.ack()
        assert await stream_holds(conn, 0)


async def test_without_heartbeats_the_message_is_redelivered(nats_server):
    """The control for the test above: it would fail if heartbeats did nothing."""
    conn = await setup(nats_server.url, "noheart", ack_wait=1.0)
    await ensure_consumer(conn.js, "noheart", 0, 1.0)
    sub = await conn.js.pull_subscribe_bind("EVENTS_noheart_0", stream=STREAM)
    try:
        [first] = await sub.fetch(1, timeout=2)
        await asyncio.sleep(1.5)
        [again] = await sub.fetch(1, timeout=2)
        assert again.metadata.num_delivered == 2
        assert again.metadata.sequence.stream == first.metadata.sequence.stream
    finally:
        await conn.close()


async def test_nothing_is_acked_before_the_caller_acks(nats_server):
    async with consuming(nats_server.url, "p", 5.0, count=5) as (conn, consumer):
        batch = await fetch_all(consumer, 5)
        assert [d.data for d in batch] == [f"e{i}".encode() for i in range(5)]
        await asyncio.sleep(0.3)
        assert (await conn.js.stream_info(STREAM)).state.messages == 5
        assert consumer.in_flight == 5
        await batch[0].ack()
        await batch[0].ack()  # settling twice is harmless
        await batch[1].term("invalid event data")
        assert await stream_holds(conn, 3)
        assert consumer.in_flight == 3


async def test_ack_all_acks_each_once_and_the_acked_are_removed(nats_server):
    async with consuming(nats_server.url, "p", 5.0, count=6) as (conn, consumer):
        batch = await fetch_all(consumer, 6)
        await batch[0].ack()
        await consumer.ack_all(batch[:4])  # the first one again: harmless
        assert all(d.settled for d in batch[:4]) and not batch[4].settled
        assert consumer.in_flight == 2
        assert await stream_holds(conn, 2)  # pruned up to the ack floor
        info = await conn.js.consumer_info(STREAM, consumer.name)
        assert info.num_ack_pending == 2 and info.ack_floor.stream_seq == batch[3].stream_seq
        await consumer.ack_all(batch[4:])
        assert await stream_holds(conn, 0)


async def test_nak_with_delay_redelivers_later(nats_server):
    async with consuming(nats_server.url, "p", 5.0) as (conn, consumer):
        [delivery] = await fetch_all(consumer, 1)
        await delivery.nak(delay=1.0)
        assert await consumer.fetch(1, timeout=0.5) == []
        [again] = await fetch_all(consumer, 1, timeout=3)
        assert again.num_delivered == 2
        await again.ack()


async def test_close_hands_back_unsettled_messages(nats_server):
    conn = await setup(nats_server.url, "p", ack_wait=30.0, count=3)
    first = PipelineConsumer(conn.js, "p", ack_wait=30.0)
    await first.start()
    batch = await fetch_all(first, 3)
    await batch[0].ack()
    await first.close()
    second = PipelineConsumer(conn.js, "p", ack_wait=30.0)
    await second.start()
    try:
        # Redelivered at once, not after the 30 s AckWait.
        again = await fetch_all(second, 2, timeout=3)
        assert sorted(d.data for d in again) == [b"e1", b"e2"]
    finally:
        await second.close()
        await conn.close()


async def test_close_hands_back_what_came_after_the_last_fetch(nats_server):
    # A fetch that timed out on the client can leave its pull request open on the server; a
    # message published then lands in the subscription's queue, which no fetch will read.
    conn = await setup(nats_server.url, "late", ack_wait=30.0, count=0)
    first = PipelineConsumer(conn.js, "late", ack_wait=30.0)
    await first.start()
    pull = first._sub
    request = json.dumps({"batch": 1, "expires": 10_000_000_000}).encode()
    await conn.nc.publish(pull._nms, request, reply=pull._deliver)
    await conn.nc.flush()
    await Publisher(conn.nc).publish([copy_for("late", 0, b"late", "m-late")])
    deadline = asyncio.get_running_loop().time() + 5
    while pull._sub._pending_queue.empty():
        assert asyncio.get_running_loop().time() < deadline, "the open pull request got nothing"
        await asyncio.sleep(0.01)
    await first.close()
    second = PipelineConsumer(conn.js, "late", ack_wait=30.0)
    await second.start()
    try:
        # Redelivered at once, not after the 30 s AckWait.
        [again] = await fetch_all(second, 1, timeout=3)
        assert again.data == b"late"
    finally:
        await second.close()
        await conn.close()


async def test_consumer_killed_before_ack_leads_to_redelivery(nats_server):
    conn = await setup(nats_server.url, "killed", ack_wait=1.0)
    child = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("consumer_child.py")),
            nats_server.url,
            "killed",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 20)
        assert line.strip() == "fetched e0"
        await asyncio.sleep(2.0)  # the child's heartbeats keep it from being redelivered
        info = await conn.js.consumer_info(STREAM, "EVENTS_killed_0")
        assert info.num_redelivered == 0 and info.num_ack_pending == 1
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        consumer = PipelineConsumer(conn.js, "killed", ack_wait=1.0)
        await consumer.start()
        [again] = await fetch_all(consumer, 1, timeout=5)
        assert again.data == b"e0" and again.num_delivered >= 2
        await again.ack()
        await consumer.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        await conn.close()


def test_stream_sequence_read_as_nats_py_reads_it() -> None:
    from nats.aio.msg import Msg

    from krenalis.stream.consumer import _stream_seq

    for reply in (
        "$JS.ACK.EVENTS.EVENTS_p_0.1.4242.17.1764144000000000000.3",
        "$JS.ACK._.ACCHASH.EVENTS.EVENTS_p_0.2.4243.18.1764144000000000000.0.xyz",
        "$JS.ACK.hub.ACCHASH.EVENTS.EVENTS_p_0.1.99.1.1764144000000000000.0",
    ):
        assert _stream_seq(reply) == Msg.Metadata._from_reply(reply).sequence.stream


async def test_a_consumer_deleted_while_fetching_is_called_gone_not_leaderless(nats_server, caplog):
    # A retired pipeline's consumer is deleted while its worker still fetches: the worker is
    # told it is gone, not that it waits for a leader.
    async with consuming(nats_server.url, "gone", 30, count=0) as (conn, consumer):
        fetching = asyncio.create_task(consumer.fetch(10, timeout=2))
        await asyncio.sleep(0.3)
        await conn.js.delete_consumer(STREAM, consumer.name)
        assert await fetching == []
        for _ in range(3):
            assert await consumer.fetch(10, timeout=0.3) == []
        messages = [r.getMessage() for r in caplog.records]
        assert not [m for m in messages if "no leader" in m], messages
        assert consumer.generation is None
