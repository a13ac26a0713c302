"""End to end under faults: a worker killed with SIGKILL mid-batch, PostgreSQL stopped a while.

Every event the collector acknowledged must end up in the warehouse exactly once.
"""

from __future__ import annotations

import asyncio
import time

from e2e_support import (
    WRITE_KEY,
    jetstream,
    make_event,
    post_events,
    stream_empty,
    stream_messages,
    wait_for,
    warehouse_ids,
    warehouse_stats,
)

from krenalis.stream.layout import STREAM, consumer_name


def warehouse_workspace(dsn: str, batch: int | None = None) -> str:
    text = f"""\
warehouse:
  dsn: "{dsn}"
sources:
  web:
    write_key: "{WRITE_KEY}"
pipelines:
  web-warehouse:
    source: web
    to: warehouse
"""
    if batch is not None:
        text += f"    batch: {{max_events: {batch}, max_wait: 200ms}}\n"
    return text


async def test_worker_killed_mid_batch_loses_and_duplicates_nothing(deployment, warehouse_dsn):
    sent = 3000
    events = [make_event(f"k-{i}", user=f"anon-{i % 50}") for i in range(sent)]
    expected = {e["messageId"] for e in events}
    deployment.write_workspace(warehouse_workspace(warehouse_dsn, batch=250))
    env = {"KRENALIS_NATS_ACK_WAIT": "2s"}
    async with jetstream(deployment.nats_url) as js:
        collector = deployment.start("collector", "collector", **env)
        await collector.wait_healthy()
        assert await post_events(collector.base_url, events, per_request=500) == sent
        assert await stream_messages(js) == sent

        first = deployment.start("worker", "worker-1", **env)
        # Kill it as soon as its first batch is committed: it is then writing the next ones.
        rows_at_kill = await wait_for(
            lambda: first_rows(warehouse_dsn), interval=0.005, what="the first batch",
            processes=[first],
        )  # fmt: skip
        first.kill()
        assert first.proc.returncode == -9
        info = await js.consumer_info(STREAM, consumer_name("web-warehouse"))
        assert 0 < rows_at_kill < sent, rows_at_kill
        # The dead worker held messages it had not acked: they come back after AckWait.
        assert info.num_ack_pending > 0, info
        assert await stream_messages(js) > 0

        second = deployment.start("worker", "worker-2", **env)
        await wait_for(
            lambda: stream_empty(js), what="EVENTS to empty", processes=[second], timeout=60
        )
        assert await warehouse_stats(warehouse_dsn) == (sent, sent)
        assert set(await warehouse_ids(warehouse_dsn)) == expected
        info = await js.consumer_info(STREAM, consumer_name("web-warehouse"))
        # More deliveries than messages: the dead worker's messages were delivered again.
        assert info.delivered.consumer_seq > sent, info.delivered
        assert second.log_count("Event dead-lettered") == 0


async def first_rows(dsn: str) -> int:
    rows, _ = await warehouse_stats(dsn)
    return rows


async def test_postgres_down_for_a_while_loses_nothing_and_acks_nothing(deployment, make_postgres):
    from krenalis.sinks.warehouse import init_db

    pg = make_postgres()
    dsn = pg.dsn
    await init_db(dsn)
    deployment.write_workspace(warehouse_workspace(dsn))
    before = [make_event(f"pg-before-{i}") for i in range(50)]
    during = [make_event(f"pg-during-{i}", user=f"u{i % 5}") for i in range(200)]
    async with jetstream(deployment.nats_url) as js:
        serve = deployment.start("serve")
        await serve.wait_healthy()
        await post_events(serve.base_url, before)
        await wait_for(lambda: stream_empty(js), what="the first events to be written")
        assert await warehouse_stats(dsn) == (50, 50)

        await asyncio.to_thread(pg.stop)
        down_since = time.monotonic()
        assert await post_events(serve.base_url, during, per_request=20) == len(during)
        await serve.wait_log("Deliveries are failing; retrying.", timeout=10)
        # While PostgreSQL is down, nothing is acked: every event stays in EVENTS.
        while time.monotonic() - down_since < 5.0:
            assert await stream_messages(js) == len(during)
            await asyncio.sleep(0.25)
        info = await js.consumer_info(STREAM, consumer_name("web-warehouse"))
        assert info.num_redelivered == 0  # held by the worker (heartbeats), not redelivered
        await asyncio.to_thread(pg.start)
        assert pg.dsn == dsn, "PostgreSQL came back on another port"

        await wait_for(lambda: stream_empty(js), what="EVENTS to empty after PostgreSQL returned",
                       processes=[serve], timeout=45)  # fmt: skip
        total = len(before) + len(during)
        assert await warehouse_stats(dsn) == (total, total)
        assert set(await warehouse_ids(dsn)) == {e["messageId"] for e in before + during}
        assert serve.log_count("Event dead-lettered") == 0
        assert serve.stop() == 0
