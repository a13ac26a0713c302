"""NATS-level measurements behind the suggestions in RESULTS.md (scenario `nats-modes`).

- `publish`: the stored form of the load generator's events, published the way the collector
  would for `--requests` concurrent requests of `--batch` events each: (a) `publish_async`, one
  PubAck per copy (what Krenalis does), versus (b) one JetStream *atomic batch* per request
  (ADR-50, nats-server >= 2.12, stream option `allow_atomic`): the copies go out as plain
  publishes with `Nats-Batch-Id`/`Nats-Batch-Sequence` headers and only the last one
  (`Nats-Batch-Commit: 1`) waits for a PubAck. With `sync_interval: always` the server then
  fsyncs once per batch instead of once per message.
- `acks`: how fast acked messages leave the stream: fetch batches of 1,000, `ack()` each, and
  time until the stream is empty, (a) on a WorkQueue stream, where each ack deletes its message
  (with `sync_interval: always` each delete is written and fsynced), versus (b) on a limits
  stream purged up to the consumer's ack floor every 0.5 s, as Krenalis does (stream/pruning.py).

Run: python -m bench.experiments --url nats://127.0.0.1:4222 --mode publish|acks
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from bench import write_result

__all__ = ["main"]


async def _stream(js, name: str, atomic: bool, limits: bool = False) -> None:
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=[f"{name.lower()}.>"],
            retention=RetentionPolicy.LIMITS if limits else RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=120.0,
            allow_atomic=atomic or None,
        )
    )


async def publish(url: str, *, batch: int, requests: int, total: int, seconds: float) -> dict:
    import nats

    from bench.baseline import payloads

    pool = payloads(min(total, 5000))
    nc = await nats.connect(url, name="bench-experiments")
    js = nc.jetstream(timeout=10.0, publish_async_max_pending=2048)
    results = {}
    counter = 0

    def next_msg() -> tuple[bytes, str]:
        nonlocal counter
        counter += 1
        data, mid = pool[counter % len(pool)]
        return data, f"{mid}-{counter}/p"

    async def as_async(subject: str) -> None:
        futures = []
        for _ in range(batch):
            data, msg_id = next_msg()
            futures.append(await js.publish_async(subject, data, headers={"Nats-Msg-Id": msg_id}))
        await asyncio.gather(*futures)

    async def as_atomic(subject: str) -> None:
        bid = uuid.uuid4().hex
        for i in range(1, batch + 1):
            data, msg_id = next_msg()
            h = {"Nats-Batch-Id": bid, "Nats-Batch-Sequence": str(i), "Nats-Msg-Id": msg_id}
            if i == batch:
                h["Nats-Batch-Commit"] = "1"
                reply = await nc.request(subject, data, headers=h, timeout=10)
                ack = json.loads(reply.data)
                if "error" in ack:
                    raise RuntimeError(ack["error"])
            else:  # like the collector: no confirmation of the batch's start
                await nc.publish(subject, data, headers=h)

    for mode, fn in (("publish_async", as_async), ("atomic batch", as_atomic)):
        name = "BENCH_" + mode.replace(" ", "_").upper()
        await _stream(js, name, atomic=mode == "atomic batch")
        subject = f"{name.lower()}.p.0"
        deadline = time.perf_counter() + seconds
        done = 0

        async def worker(fn=fn, subject=subject, deadline=deadline) -> int:
            n = 0
            while time.perf_counter() < deadline and n * batch * requests < total:
                await fn(subject)
                n += 1
            return n * batch

        started = time.perf_counter()
        done = sum(await asyncio.gather(*(worker() for _ in range(requests))))
        elapsed = time.perf_counter() - started
        stored = (await js.stream_info(name)).state.messages
        await js.delete_stream(name)
        results[mode] = {"msgs_per_s": done / elapsed, "messages": done, "stored": stored}
    await nc.close()
    return results


async def acks(url: str, *, total: int) -> dict:
    """Acked messages removed per second: WorkQueue (each ack deletes) versus limits + purge."""
    return {
        "workqueue": await _acks(url, total=total, limits=False),
        "limits": await _acks(url, total=total, limits=True),
    }


async def _acks(url: str, *, total: int, limits: bool) -> dict:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(url, name="bench-experiments")
    js = nc.jetstream(timeout=10.0)
    name = "BENCH_ACKS"
    subject = f"{name.lower()}.p.0"
    await _stream(js, name, atomic=True, limits=limits)
    payload = b"x" * 800
    for _ in range(total // 500):  # fill fast: atomic batches of 500
        bid = uuid.uuid4().hex
        for i in range(1, 501):
            h = {"Nats-Batch-Id": bid, "Nats-Batch-Sequence": str(i)}
            if i in (1, 500):
                if i == 500:
                    h["Nats-Batch-Commit"] = "1"
                await nc.request(subject, payload, headers=h, timeout=10)
            else:
                await nc.publish(subject, payload, headers=h)
    await js.add_consumer(
        name,
        ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20_000),
    )
    sub = await js.pull_subscribe_bind("c", stream=name)

    async def purge_to_ack_floor() -> None:
        while True:
            await asyncio.sleep(0.5)
            floor = (await js.consumer_info(name, "c")).ack_floor.stream_seq
            if floor:
                await js.purge_stream(name, subject=subject, seq=floor + 1)

    pruner = asyncio.create_task(purge_to_ack_floor()) if limits else None
    started = time.perf_counter()
    n = 0
    while n < total:
        msgs = await sub.fetch(1000, timeout=5)
        for m in msgs:
            await m.ack()
        n += len(msgs)
    fetched = time.perf_counter() - started
    while (await js.stream_info(name)).state.messages > 0:
        await asyncio.sleep(0.01)
    applied = time.perf_counter() - started
    if pruner is not None:
        pruner.cancel()
    await js.delete_stream(name)
    await nc.close()
    return {"fetch_ack_per_s": total / fetched, "acks_applied_per_s": total / applied}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="NATS publish/ack measurements.")
    p.add_argument("--url", required=True)
    p.add_argument("--mode", choices=("publish", "acks"), required=True)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--requests", type=int, default=32, help="concurrent publishing requests")
    p.add_argument("--total", type=int, default=60_000)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--out")
    args = p.parse_args(argv)
    import uvloop

    if args.mode == "publish":
        coro = publish(
            args.url, batch=args.batch, requests=args.requests, total=args.total,
            seconds=args.seconds,
        )  # fmt: skip
    else:
        coro = acks(args.url, total=args.total)
    result = uvloop.run(coro)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
