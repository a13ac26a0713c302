"""A pipeline's workers alone: drain a stream filled beforehand, and their CPU per event.

Starts a nats-server (the embedded configuration: `sync_interval` always unless `--sync`) and,
for the warehouse, an embedded PostgreSQL (for webhooks, bench/receiver.py, which answers at
once) in a temporary directory; stores `--events` events of the load generator in their stream
form (as the collector would: atomic batches of 100 with fsync always) on `--shards` shards of
one pipeline; then runs one worker process per shard (a `PipelineWorker` with the sink, as
`krenalis worker` runs it) until the consumers are empty, and checks that the sink got every
event once. Prints the events/s of all the workers together and the CPU time of each worker
process per event it delivered (the workers' cost without the collector's competition for the
cores; nats-server, PostgreSQL and the receiver run in their own processes), and the CPU time
those servers spent meanwhile, per event (where the other core goes).

`--shards 2` against `--shards 1` is the scale-out figure: two worker processes on one pipeline.

Run: python -m bench.drain [--events 60000] [--sink warehouse|webhook] [--shards 1]
     [--sync always|2m] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import queue
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["main", "run"]

PIPELINE = "wh"


async def fill(url: str, events: int, shards: int) -> None:
    """A fresh EVENTS stream holding `events` copies for the pipeline, spread over its shards."""
    from bench.baseline import payloads
    from krenalis.config import load_settings
    from krenalis.stream.connection import NatsConnection
    from krenalis.stream.layout import STREAM, ensure_consumer, ensure_streams
    from krenalis.stream.publisher import Publisher, copy_for

    settings = load_settings({"KRENALIS_NATS_URL": url}, env_file=None)
    conn = NatsConnection(settings)
    await conn.connect(timeout=10)
    try:
        with contextlib.suppress(Exception):  # none yet
            await conn.js.delete_stream(STREAM)
        await ensure_streams(conn.js, settings)
        for shard in range(shards):
            await ensure_consumer(conn.js, PIPELINE, shard, 30)
        stored = payloads(events)
        publisher = Publisher(conn.nc)
        for start in range(0, events, 100):
            chunk = stored[start : start + 100]
            copies = [copy_for(PIPELINE, (start // 100) % shards, d, m) for d, m in chunk]
            await publisher.publish(copies)
    finally:
        await conn.close()


def _worker_process(url: str, sink: dict[str, str], shard: int, go: Any, out: Any) -> None:
    """One worker process: wait for `go`, drain the shard, put (seconds, CPU s, error)."""
    import uvloop

    out.put(uvloop.run(_drain_shard(url, sink, shard, go)))


async def _drain_shard(url: str, sink_spec: dict[str, str], shard: int, go: Any) -> tuple:
    from krenalis.config import load_settings
    from krenalis.runtime.memory import settle_garbage_collector
    from krenalis.sinks.warehouse import WarehouseSink
    from krenalis.sinks.webhook import WebhookOptions, WebhookSink
    from krenalis.stream.connection import NatsConnection
    from krenalis.stream.layout import STREAM, consumer_name
    from krenalis.worker.pipeline import PipelineWorker

    conn = NatsConnection(load_settings({"KRENALIS_NATS_URL": url}, env_file=None))
    await conn.connect(timeout=10)
    if sink_spec["kind"] == "warehouse":
        sink: Any = WarehouseSink(sink_spec["dsn"])
    else:
        sink = WebhookSink(WebhookOptions(url=sink_spec["url"]))  # type: ignore[arg-type]
    try:
        settle_garbage_collector()  # as `krenalis worker` does once started
        while not go.is_set():  # every process connected before the clock starts
            await asyncio.sleep(0.01)
        worker = PipelineWorker(conn.js, PIPELINE, sink, shard=shard)
        started, cpu = time.perf_counter(), time.process_time()
        task = asyncio.create_task(worker.run())
        deadline = started + 120
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
            info = await conn.js.consumer_info(STREAM, consumer_name(PIPELINE, shard))
            if not info.num_pending and not info.num_ack_pending:
                break
        else:  # not drained in time: say what the consumer holds (a later hang is diagnosed)
            print(f"shard {shard}: not drained within 120 s: {info}", file=sys.stderr)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        worker.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), 30)
        except TimeoutError:
            print(
                f"shard {shard}: the worker did not stop within 30 s; its tasks:", file=sys.stderr
            )
            for other in asyncio.all_tasks():
                other.print_stack(file=sys.stderr)
            raise
        return elapsed, cpu, worker.last_error or ""
    finally:
        await sink.aclose()
        await conn.close()


def _cpu_seconds(pid: int | None) -> float:
    """CPU seconds of process `pid` and of its children, those it has reaped included (the
    PostgreSQL backends); 0 without a process."""
    import psutil

    if pid is None:
        return 0.0
    proc = psutil.Process(pid)
    own = proc.cpu_times()
    total = own.user + own.system + own.children_user + own.children_system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def drain_once(
    url: str, sink: dict[str, str], events: int, shards: int, servers: tuple[int | None, ...] = ()
) -> dict[str, float]:
    """One drain of `events` fresh events by `shards` worker processes; with the PIDs of
    `servers` (nats-server, PostgreSQL or the receiver), their CPU per event too."""
    import uvloop

    uvloop.run(fill(url, events, shards))
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    children = [
        ctx.Process(target=_worker_process, args=(url, sink, shard, go, out))
        for shard in range(shards)
    ]
    for child in children:
        child.start()
    time.sleep(2.0)  # imports and connections
    servers_before = [_cpu_seconds(pid) for pid in servers]
    go.set()
    try:
        results = [out.get(timeout=180) for _ in children]
    except queue.Empty:
        raise SystemExit("a worker process did not finish its drain within 180 s") from None
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.terminate()
    # A PostgreSQL backend counts once the postmaster has reaped it: until then its time is
    # neither a live child's nor a reaped one's (read earlier, the warehouse showed 0 or 22 us).
    time.sleep(0.5)
    servers_cpu = [_cpu_seconds(pid) - b for pid, b in zip(servers, servers_before, strict=True)]
    errors = [r[2] for r in results if r[2]]
    if errors:
        raise SystemExit(f"the sink refused events: {errors[0]}")
    elapsed = max(r[0] for r in results)
    cpu = sum(r[1] for r in results)
    row = {"events_per_s": events / elapsed, "us_per_event": cpu / events * 1e6}
    # The servers' CPU from the start to a little after the end (the workers' exit): an upper
    # bound of what the drain cost them.
    row["servers_us_per_event"] = sum(servers_cpu) / events * 1e6
    row["servers_split_us"] = [c / events * 1e6 for c in servers_cpu]
    return row


def _count_webhook(receiver_url: str) -> tuple[int, int]:
    """(events received, distinct messageIds) so far."""
    with urllib.request.urlopen(receiver_url.replace("/hook", "/count"), timeout=10) as resp:
        counts = json.loads(resp.read())
    return int(counts["events"]), int(counts["unique"])


async def _count_warehouse(dsn: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM krenalis_events")
        row = await cur.fetchone()
        await conn.execute("TRUNCATE krenalis_events")
        await conn.commit()
        return int(row[0]) if row else 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--sink", choices=("warehouse", "webhook"), default="warehouse")
    p.add_argument("--shards", type=int, default=1, help="shards, one worker process each")
    p.add_argument("--sync", default="always", help="the nats-server's sync_interval")
    p.add_argument("--repeat", type=int, default=3, help="drains, each on a fresh stream")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="krenalis-drain-") as tmp:
        rows = run(Path(tmp), args.sink, args.events, args.shards, args.sync, args.repeat)
    rates = [r["events_per_s"] for r in rows]
    cpu = [r["us_per_event"] for r in rows]
    servers = [r["servers_us_per_event"] for r in rows]
    print(f"median: {statistics.median(rates):,.0f} ev/s, worker CPU "
          f"{statistics.median(cpu):.1f} us/event, nats-server and the {args.sink} "
          f"{statistics.median(servers):.1f} us/event", flush=True)  # fmt: skip


def run(
    root: Path, sink_kind: str, events: int, shards: int, sync: str = "always", repeat: int = 1
) -> list[dict[str, float]]:
    """`repeat` drains of `events` events into `sink_kind` by `shards` worker processes, with
    servers of their own under `root`; one row (events/s, us/event) per drain."""
    import uvloop

    from bench.stacks import Receiver
    from krenalis.runtime.nats_server import EmbeddedNats
    from krenalis.sinks.warehouse import EmbeddedPostgres, init_db

    nats = EmbeddedNats(root / "nats", sync_interval=sync)
    nats.start()
    pg = rx = None
    rows = []
    try:
        if sink_kind == "warehouse":
            pg = EmbeddedPostgres(root / "postgres").__enter__()
            uvloop.run(init_db(pg.dsn))
            sink = {"kind": "warehouse", "dsn": pg.dsn}
        else:
            rx = Receiver(root / "receiver")
            rx.start()
            sink = {"kind": "webhook", "url": rx.url}
        for n in range(repeat):
            before = _count_webhook(rx.url) if rx is not None else (0, 0)
            other = pg.pid if pg is not None else rx.proc.pid  # type: ignore[union-attr]
            servers = (nats.pid, other)
            row = drain_once(nats.url, sink, events, shards, servers)
            if pg is not None:
                got = (uvloop.run(_count_warehouse(pg.dsn)),) * 2
            else:
                after = _count_webhook(rx.url)  # type: ignore[union-attr]
                got = (after[0] - before[0], after[1] - before[1])
            if got != (events, events):
                raise SystemExit(f"drain {n + 1}: the sink got {got[0]} events ({got[1]} "
                                 f"distinct) of {events}")  # fmt: skip
            rows.append(row)
            nats_us, sink_us = row["servers_split_us"]
            split = f"nats-server {nats_us:.1f}, the {sink_kind} {sink_us:.1f}"
            print(f"drain {n + 1}: {events:,} events to the {sink_kind}, {shards} "
                  f"worker process(es): {row['events_per_s']:,.0f} ev/s, worker CPU "
                  f"{row['us_per_event']:.1f} us/event; nats-server and the {sink_kind} "
                  f"{row['servers_us_per_event']:.1f} us/event ({split}; sync {sync})",
                  flush=True)  # fmt: skip
    finally:
        if rx is not None:
            rx.stop()
        if pg is not None:
            pg.__exit__(None, None, None)
        nats.stop()
    return rows


if __name__ == "__main__":
    main()
