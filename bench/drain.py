"""The warehouse worker alone: drain a stream filled beforehand, and its CPU per event.

Starts a nats-server (the embedded configuration: `sync_interval` always unless `--sync`) and an
embedded PostgreSQL in a temporary directory, stores `--events` events of the load generator in
their stream form (as the collector would: atomic batches of 100 with fsync always), then runs one
`PipelineWorker` with the warehouse sink in this process until the consumer is empty. Prints the
events/s and the CPU time of this process per event (the worker's cost without the collector's
competition for the cores; nats-server and PostgreSQL run in their own processes).

Run: python -m bench.drain [--events 60000] [--sync always|2m] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

__all__ = ["main"]


async def drain_once(url: str, dsn: str, events: int, sync: str) -> tuple[float, float]:
    """(events/s, CPU microseconds per event) of one drain of `events` fresh events."""
    from bench.baseline import payloads
    from krenalis.config import load_settings
    from krenalis.sinks.warehouse import WarehouseSink, init_db
    from krenalis.stream.connection import NatsConnection
    from krenalis.stream.layout import STREAM, consumer_name, ensure_consumer, ensure_streams
    from krenalis.stream.publisher import Publisher, copy_for
    from krenalis.worker.pipeline import PipelineWorker

    env = {"KRENALIS_NATS_URL": url, "KRENALIS_NATS_SYNC_INTERVAL": sync}
    settings = load_settings(env, env_file=None)
    await init_db(dsn)
    conn = NatsConnection(settings)
    await conn.connect(timeout=10)
    try:
        await ensure_streams(conn.js, settings)
        await ensure_consumer(conn.js, "wh", 0, 30)
        stored = payloads(events)
        publisher = Publisher(conn.nc, atomic=settings.nats_sync_interval == "always")
        for start in range(0, events, 100):
            chunk = stored[start : start + 100]
            await publisher.publish([copy_for("wh", 0, data, mid) for data, mid in chunk])
        worker = PipelineWorker(conn.js, "wh", WarehouseSink(dsn))
        started, cpu = time.perf_counter(), time.process_time()
        task = asyncio.create_task(worker.run())
        deadline = started + 30 + events / 1000  # far beyond any drain seen here
        while True:
            await asyncio.sleep(0.1)
            info = await conn.js.consumer_info(STREAM, consumer_name("wh"))
            if not info.num_pending and not info.num_ack_pending:
                break
            if time.perf_counter() > deadline:
                worker.stop()
                raise SystemExit(f"not drained in time; last error: {worker.last_error or '-'}")
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        worker.stop()
        await task
        if worker.last_error:
            raise SystemExit(f"the warehouse refused the events: {worker.last_error}")
        return events / elapsed, cpu / events * 1e6
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--sync", default="always", help="the nats-server's sync_interval")
    p.add_argument("--repeat", type=int, default=3, help="drains, each on a fresh stream")
    args = p.parse_args(argv)
    import uvloop

    from krenalis.runtime.nats_server import EmbeddedNats
    from krenalis.sinks.warehouse import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="krenalis-drain-") as tmp:
        root = Path(tmp)
        nats = EmbeddedNats(root / "nats", sync_interval=args.sync)
        nats.start()
        try:
            with EmbeddedPostgres(root / "postgres") as pg:
                for n in range(args.repeat):
                    rate, us = uvloop.run(drain_once(nats.url, pg.dsn, args.events, args.sync))
                    print(f"drain {n + 1}: {args.events:,} events, {rate:,.0f} ev/s, "
                          f"worker CPU {us:.1f} us/event (sync {args.sync})", flush=True)  # fmt: skip
                    uvloop.run(_delete_stream(nats.url))
        finally:
            nats.stop()


async def _delete_stream(url: str) -> None:
    import nats

    from krenalis.stream.layout import STREAM

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(STREAM)
    finally:
        await nc.close()


if __name__ == "__main__":
    main()
