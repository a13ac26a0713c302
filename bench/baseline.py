"""Raw nats-py ceilings for the messages the collector stores: publish_async, atomic batches.

The payloads are the events of the load generator turned into their stream form by the
collector's own code (`decode_request` + `encode_event`, with the source's connectionId), so
they have the same sizes as what Krenalis stores. Each copy goes to its pipeline's subject with
`Nats-Msg-Id: <messageId>/<pipeline>`, like the collector's, into a stream of the same kind as
EVENTS (limits retention, file storage, the same replicas and duplicate window) on the same NATS
server(s), with the same in-flight window (`publish_async_max_pending=2048`). One process,
uvloop, no HTTP: what nats-py alone can do here.

Two modes, each into its own fresh stream: (1) `publish_async`, one PubAck per copy; (2) one
JetStream atomic batch (ADR-50) per group of `--batch` events, `--concurrency` groups in
flight, which is how the collector publishes a request's copies. Each publishes `--count`
messages or stops at `--max-seconds`; msgs/s = acked / elapsed (first publish to last PubAck).
The streams are deleted afterwards.

Run: python -m bench.baseline --url nats://127.0.0.1:4222 --count 200000 [--pipelines p1,p2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
import uuid
from datetime import UTC, datetime

from bench import write_result

__all__ = ["main", "payloads"]


def payloads(n: int, event_size: int = 400, source_id: str = "bench") -> list[tuple[bytes, str]]:
    """`n` distinct stream-form events (bytes) with their messageIds."""
    from bench.events import EventFactory
    from krenalis.events import decode_request, encode_event

    factory = EventFactory(target_size=event_size)
    out: list[tuple[bytes, str]] = []
    while len(out) < n:
        body = factory.body(100)
        decoded = decode_request(
            body, event_type=None, received_at=datetime.now(UTC), remote_ip="127.0.0.1"
        )
        for event in decoded.events:
            event["connectionId"] = source_id
            out.append((encode_event(event), event["messageId"]))
    return out[:n]


async def publish(
    urls: list[str],
    *,
    count: int,
    pipelines: list[str],
    replicas: int,
    max_seconds: float,
    event_size: int,
    stream: str,
    batch: int = 100,
    concurrency: int = 32,
) -> dict:
    """Both modes, one after the other, each into a fresh stream; the `async` figures at the
    top level (the baseline the brief asks for), the atomic ones under "atomic"."""
    import nats

    pool = payloads(min(count, 20_000), event_size)
    # serve's embedded server takes its user's NKey (from the environment: never an argument,
    # which any process can read)
    seed = os.environ.get("KRENALIS_NATS_NKEY") or None
    nc = await nats.connect(servers=urls, name="bench-baseline", nkeys_seed_str=seed)
    try:
        result = await _publish_async(
            nc, pool, count, pipelines, replicas, max_seconds, stream + "_ASYNC"
        )
        result["atomic"] = await _publish_atomic(
            nc, pool, count, pipelines, replicas, max_seconds, stream + "_ATOMIC", batch,
            concurrency,
        )  # fmt: skip
    finally:
        await nc.close()
    result["payload_bytes"] = round(sum(len(p[0]) for p in pool) / len(pool))
    return result


async def _add_stream(js, name: str, replicas: int, atomic: bool) -> str:
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    prefix = name.lower()
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=[f"{prefix}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120.0,
            allow_atomic=atomic or None,
        )
    )
    return prefix


async def _finish(js, stream: str, done: int, failed: int, started: float, rusage0) -> dict:
    elapsed = time.perf_counter() - started
    rusage1 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        info = await js.stream_info(stream)
        stored = info.state.messages
        avg_size = info.state.bytes / stored if stored else 0
    finally:
        await js.delete_stream(stream)
    cpu = (rusage1.ru_utime - rusage0.ru_utime) + (rusage1.ru_stime - rusage0.ru_stime)
    return {
        "messages": done,
        "failed": failed,
        "stored": stored,
        "msgs_per_s": done / elapsed if elapsed else 0.0,
        "elapsed_s": round(elapsed, 2),
        "stored_bytes_per_msg": round(avg_size),
        "cpu_cores": round(cpu / elapsed, 3) if elapsed else 0.0,
    }


async def _publish_async(nc, pool, count, pipelines, replicas, max_seconds, stream) -> dict:
    """publish_async of every copy, one PubAck each, 2,048 in flight."""
    js = nc.jetstream(timeout=10.0, publish_async_max_pending=2048)
    prefix = await _add_stream(js, stream, replicas, atomic=False)
    subjects = [f"{prefix}.{p}.0" for p in pipelines]
    rusage0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = started + max_seconds
    futures = []
    sent = 0
    for i in range(0, count, len(subjects)):
        data, mid = pool[(i // len(subjects)) % len(pool)]
        event_id = f"{mid}-{i}"
        for subject, pipeline in zip(subjects, pipelines, strict=True):
            futures.append(
                await js.publish_async(
                    subject, data, headers={"Nats-Msg-Id": f"{event_id}/{pipeline}"}
                )
            )
            sent += 1
        if sent % 1024 < len(subjects) and time.perf_counter() > deadline:
            break
    await asyncio.wait_for(js.publish_async_completed(), 60)
    acked = sum(1 for f in futures if f.done() and not f.cancelled() and f.exception() is None)
    result = await _finish(js, stream, acked, len(futures) - acked, started, rusage0)
    result["replicas"] = replicas
    result["copies_per_event"] = len(pipelines)
    return result


async def _publish_atomic(
    nc, pool, count, pipelines, replicas, max_seconds, stream, batch, concurrency
) -> dict:
    """`concurrency` publishers, each sending the copies of `batch` events as one atomic batch
    (what the collector does per request since it publishes atomic batches): plain publishes
    with Nats-Batch-Id/-Sequence, the last one with Nats-Batch-Commit waits for the PubAck."""
    js = nc.jetstream(timeout=10.0)
    prefix = await _add_stream(js, stream, replicas, atomic=True)
    subjects = [f"{prefix}.{p}.0" for p in pipelines]
    counter = 0
    failed = 0
    rusage0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = started + max_seconds
    per_batch = batch * len(subjects)

    async def one_batch() -> None:
        nonlocal counter, failed
        bid = uuid.uuid4().hex
        copies = []
        for _ in range(batch):
            counter += 1
            data, mid = pool[counter % len(pool)]
            for subject, pipeline in zip(subjects, pipelines, strict=True):
                copies.append((subject, data, f"{mid}-{counter}/{pipeline}"))
        for n, (subject, data, msg_id) in enumerate(copies, 1):
            h = {"Nats-Msg-Id": msg_id, "Nats-Batch-Id": bid, "Nats-Batch-Sequence": str(n)}
            if n < len(copies):
                await nc.publish(subject, data, headers=h)
                continue
            h["Nats-Batch-Commit"] = "1"
            reply = await nc.request(subject, data, headers=h, timeout=10)
            if b'"error"' in reply.data:
                failed += len(copies)

    async def worker() -> int:
        done = 0
        while time.perf_counter() < deadline and counter * len(subjects) < count:
            await one_batch()
            done += per_batch
        return done

    done = sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
    return await _finish(js, stream, done - failed, failed, started, rusage0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Raw nats-py publish_async baseline.")
    p.add_argument("--url", required=True, help="NATS URL(s), comma separated")
    p.add_argument("--count", type=int, default=100_000, help="messages (copies) to publish")
    p.add_argument("--pipelines", default="p", help="comma separated: one copy per pipeline")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=10.0)
    p.add_argument("--event-size", type=int, default=400)
    p.add_argument("--stream", default="BENCH_BASELINE")
    p.add_argument("--batch", type=int, default=100, help="events per atomic batch")
    p.add_argument("--concurrency", type=int, default=32, help="atomic batches in flight")
    p.add_argument("--out")
    args = p.parse_args(argv)
    import uvloop

    result = uvloop.run(
        publish(
            args.url.split(","),
            count=args.count,
            pipelines=args.pipelines.split(","),
            replicas=args.replicas,
            max_seconds=args.max_seconds,
            event_size=args.event_size,
            stream=args.stream,
            batch=args.batch,
            concurrency=args.concurrency,
        )
    )
    write_result(result, args.out)


if __name__ == "__main__":
    main()
