"""A consumer made again under the same name, against a real nats-server.

An ack names only the consumer and the stream sequence. When the consumer is deleted and made
again (by an operator, or by `serve` after a memory-storage server restarted empty), what a
process fetched from the old one must settle nothing on the new one: not the same message that
another worker now holds, not a new message that took the same sequence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import nats
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from fixtures.nats_servers import settings_for
from krenalis.config import Settings
from krenalis.runtime.nats_server import EmbeddedNats
from krenalis.stream.connection import NatsConnection
from krenalis.stream.consumer import Delivery, PipelineConsumer
from krenalis.stream.deadletters import dead_letter, list_dead_letters
from krenalis.stream.layout import STREAM, consumer_name, ensure_consumer, ensure_streams
from krenalis.stream.publisher import Publisher, copy_for

NAME = consumer_name("p")


async def connect(settings: Settings) -> NatsConnection:
    conn = NatsConnection(settings)
    await conn.connect(timeout=10)
    await ensure_streams(conn.js, settings)
    await ensure_consumer(conn.js, "p", 0, 30)
    return conn


async def publish(conn: NatsConnection, prefix: str, count: int) -> None:
    copies = [copy_for("p", 0, f"{prefix}-{i}".encode(), f"{prefix}{i}") for i in range(count)]
    await Publisher(conn.nc).publish(copies)


async def fetch(consumer: PipelineConsumer, want: int) -> list[Delivery]:
    got: list[Delivery] = []
    for _ in range(20):
        got += await consumer.fetch(want - len(got), timeout=0.5)
        if len(got) >= want:
            break
    assert len(got) == want
    return got


async def eventually(probe: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not probe():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def stream_holds(conn: NatsConnection, count: int, timeout: float = 10.0) -> bool:
    """Whether EVENTS comes to hold `count` messages (settled ones leave within a second)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (await conn.js.stream_info(STREAM)).state.messages != count:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def held_by_the_new_consumer(conn: NatsConnection) -> tuple[int, int, int]:
    """(messages in EVENTS, the consumer's unacked deliveries, its ack floor)."""
    info = await conn.js.consumer_info(STREAM, NAME)
    messages = (await conn.js.stream_info(STREAM)).state.messages
    return messages, info.num_ack_pending, info.ack_floor.stream_seq or 0


async def remake_consumer(conn: NatsConnection) -> None:
    await conn.js.delete_consumer(STREAM, NAME)
    await ensure_consumer(conn.js, "p", 0, 30)


async def old_settles_do_nothing(url: str, settings: Settings) -> None:
    """Five held by a consumer that is then made again; another worker takes the same five from
    the new one; the old deliveries' acks and terms must not settle them."""
    conn = await connect(settings)
    other = await connect(settings)
    old = PipelineConsumer(conn.js, "p", ack_wait=30.0)
    new = PipelineConsumer(other.js, "p", ack_wait=30.0)
    try:
        await old.start()
        await publish(conn, "e", 5)
        held = await fetch(old, 5)
        await remake_consumer(conn)
        await new.start()
        again = await fetch(new, 5)
        assert [d.stream_seq for d in again] == [d.stream_seq for d in held]
        # The old process notices within a round of its watch (checked below, after the harm).
        await eventually(lambda: old.in_flight == 0, timeout=3.0)
        for d in held[:3]:
            await d.ack()
        for d in held[3:]:
            await d.term("bad")
        await asyncio.sleep(1.2)  # an ack that went out would be applied and pruned by now
        assert await held_by_the_new_consumer(conn) == (5, 5, 0)
        assert old.in_flight == 0
        # The old process is bound to the new generation now: what it fetches, it settles.
        await publish(conn, "later", 1)
        [later] = await fetch(old, 1)
        await later.ack()
        for d in again:
            await d.ack()
        assert await stream_holds(conn, 0)
    finally:
        await old.close()
        await new.close()
        await conn.close()
        await other.close()


async def test_old_deliveries_settle_nothing_on_a_consumer_made_again(nats_server):
    url = nats_server.url
    await old_settles_do_nothing(url, settings_for(url, KRENALIS_NATS_ACK_WAIT="30s"))


async def test_the_same_on_a_workqueue_stream_without_a_pruner(nats_server):
    """A WorkQueue stream has no Pruner: the consumer's own watch notices the new generation,
    and there an ack that went out would delete the message at once."""
    url = nats_server.url
    settings = settings_for(url, KRENALIS_NATS_ACK_WAIT="30s")
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        await js.add_stream(
            StreamConfig(
                name=STREAM,
                subjects=["events.v1.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
            )
        )
    finally:
        await client.close()
    await old_settles_do_nothing(url, settings)


async def test_settles_made_while_away_go_out_once_the_consumer_is_known(nats_server):
    """A server that restarts with its state: the consumer is the same one, so what was acked
    while the connection was down is sent once its generation is read again."""
    conn = await connect(settings_for(nats_server.url, KRENALIS_NATS_ACK_WAIT="30s"))
    consumer = PipelineConsumer(conn.js, "p", ack_wait=30.0)
    try:
        await consumer.start()
        generation = consumer.generation
        await publish(conn, "e", 3)
        held = await fetch(consumer, 3)
        await asyncio.to_thread(nats_server.stop)  # a clean stop keeps the consumer's state
        for d in held:
            await d.ack()  # held back: the server is away
        await asyncio.to_thread(nats_server.start)
        assert await eventually(lambda: conn.nc.is_connected)
        assert await stream_holds(conn, 0)
        assert consumer.generation == generation
    finally:
        await consumer.close()
        await conn.close()


async def test_acks_held_across_a_restart_that_lost_the_consumer_are_dropped(nats_server):
    """Memory storage: the server restarts empty, the layout is put back and new messages take
    the old sequences before this process reconnects. The acks it made while away must not
    settle the new messages another worker holds."""
    settings = settings_for(
        nats_server.url, KRENALIS_NATS_STORAGE="memory", KRENALIS_NATS_ACK_WAIT="30s"
    )
    conn = await connect(settings)
    old = PipelineConsumer(conn.js, "p", ack_wait=30.0)
    try:
        await old.start()
        await publish(conn, "old", 3)
        held = await fetch(old, 3)
        await restart_empty(nats_server)
        for d in held:
            await d.ack()  # made while away
        other = await connect(settings)  # puts the layout back, as serve does
        new = PipelineConsumer(other.js, "p", ack_wait=30.0)
        try:
            await new.start()
            await publish(other, "new", 3)
            again = await fetch(new, 3)
            assert [d.stream_seq for d in again] == [d.stream_seq for d in held]
            assert await eventually(lambda: conn.nc.is_connected)
            await asyncio.sleep(1.5)  # reconnected: what it sends has arrived by now
            assert await held_by_the_new_consumer(other) == (3, 3, 0)
            assert old.generation == new.generation
        finally:
            await new.close()
            await other.close()
    finally:
        await old.close()
        await conn.close()


async def restart_empty(server: EmbeddedNats) -> None:
    """Kill and start the server on its port; memory-storage streams do not survive."""
    server.kill()
    await asyncio.to_thread(server.start)


async def test_a_dead_letter_of_a_new_generation_is_not_taken_for_an_old_one(nats_settings):
    """The DLQ drops a retry of the same dead letter (same generation and sequence), but not a
    dead letter of the same sequence in another generation."""
    conn = await connect(nats_settings)

    async def letter(generation: str, data: bytes) -> None:
        await dead_letter(
            conn.js, pipeline="p", shard=0, data=data, reason="bad", attempts=1,
            first_attempt=datetime(2026, 1, 1, tzinfo=UTC), stream_seq=7, generation=generation,
        )  # fmt: skip

    try:
        await letter("100", b"first")
        await letter("100", b"first")  # the same one again: a crash between PubAck and term
        await letter("200", b"second")  # sequence 7 of a consumer made again
        assert [d.data for d in await list_dead_letters(conn.js)] == [b"first", b"second"]
    finally:
        await conn.close()
