"""The cost of transform steps: the warehouse worker draining a filled stream, with and without
steps, in one run.

Like `bench.drain` (a nats-server with the embedded configuration, an embedded PostgreSQL, the
load generator's events stored as the collector would), three variants drain the same number
of fresh events, one after the other, repeated `--repeat` times in turn: the pipeline without
steps, with an identity Python function, and with a chain of five built-in steps. Prints the
delivered events/s of each, the change against no steps, and the CPU per event of the worker
process and of its transform process.

Run: python -m bench.transforms [--events 40000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import psutil

__all__ = ["main"]

IDENTITY = "def identity(event):\n    return event\n"
VARIANTS = {
    "no steps": "",
    "identity Python function": "      - python: identity.py:identity\n",
    "five built-in steps": (
        "      - hash: [userId, anonymousId]\n        secret: bench-secret-0123456789abcdef\n"
        "      - drop: [context.library]\n"
        "      - rename: {properties.price: properties.amount}\n"
        "      - set: {properties.channel: web}\n"
        "      - mask_ip\n"
    ),
}


def _steps(text: str, code: Path):
    from krenalis.workspace.load import parse_workspace

    steps = f"    transform:\n{text}" if text else ""
    workspace = (
        'sources:\n  web: {write_key: "BenchTransformsKey0123456789abcd"}\n'
        f"pipelines:\n  wh:\n    source: web\n    to: warehouse\n{steps}"
    )
    return parse_workspace(workspace).pipelines["wh"]


async def drain_once(url: str, dsn: str, events: int, steps: str, code: Path) -> dict:
    """events/s and CPU us/event (worker, transform process) of one drain."""
    from bench.baseline import payloads
    from krenalis.config import load_settings
    from krenalis.sinks.warehouse import WarehouseSink, init_db
    from krenalis.stream.connection import NatsConnection
    from krenalis.stream.layout import STREAM, consumer_name, ensure_consumer, ensure_streams
    from krenalis.stream.publisher import Publisher, copy_for
    from krenalis.transforms.process import TransformProcess
    from krenalis.worker.pipeline import PipelineWorker

    settings = load_settings({"KRENALIS_NATS_URL": url}, env_file=None)
    await init_db(dsn)
    conn = NatsConnection(settings)
    await conn.connect(timeout=10)
    try:
        await ensure_streams(conn.js, settings)
        await ensure_consumer(conn.js, "wh", 0, 30)
        publisher = Publisher(conn.nc, atomic=True)
        stored = payloads(events)
        for start in range(0, events, 100):
            chunk = stored[start : start + 100]
            await publisher.publish([copy_for("wh", 0, data, mid) for data, mid in chunk])
        pipeline = _steps(steps, code)
        transform = None
        if pipeline.transform:
            transform = TransformProcess("wh", "web", pipeline.transform, code)
        worker = PipelineWorker(conn.js, "wh", WarehouseSink(dsn), transform=transform)
        task = asyncio.create_task(worker.run())
        while transform is not None and transform._proc is None:  # wait for its start
            await asyncio.sleep(0.01)
        child = psutil.Process(transform._proc.pid) if transform and transform._proc else None
        started, cpu = time.perf_counter(), time.process_time()
        child_cpu = sum(child.cpu_times()[:2]) if child else 0.0
        while True:
            await asyncio.sleep(0.05)
            info = await conn.js.consumer_info(STREAM, consumer_name("wh"))
            if not info.num_pending and not info.num_ack_pending:
                break
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        child_cpu = sum(child.cpu_times()[:2]) - child_cpu if child else 0.0
        worker.stop()
        await task
        return {"rate": events / elapsed, "worker_us": cpu / events * 1e6,
                "child_us": child_cpu / events * 1e6}  # fmt: skip
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.transforms", description=__doc__.splitlines()[0]
    )
    p.add_argument("--events", type=int, default=40_000)
    p.add_argument("--repeat", type=int, default=3, help="drains of each variant, in turn")
    args = p.parse_args(argv)
    import uvloop

    from bench.drain import _delete_stream
    from krenalis.runtime.nats_server import EmbeddedNats
    from krenalis.sinks.warehouse import EmbeddedPostgres

    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="krenalis-transforms-") as tmp:
        root = Path(tmp)
        (root / "identity.py").write_text(IDENTITY)
        nats = EmbeddedNats(root / "nats", sync_interval="always")
        nats.start()
        try:
            with EmbeddedPostgres(root / "postgres") as pg:
                for n in range(args.repeat):
                    for name, steps in VARIANTS.items():
                        got = uvloop.run(drain_once(nats.url, pg.dsn, args.events, steps, root))
                        results[name].append(got)
                        print(f"round {n + 1}, {name}: {got['rate']:,.0f} ev/s, worker "
                              f"{got['worker_us']:.1f} us/event, transform process "
                              f"{got['child_us']:.1f} us/event", flush=True)  # fmt: skip
                        uvloop.run(_delete_stream(nats.url))
        finally:
            nats.stop()
    _summary(results)


def _summary(results: dict[str, list[dict]]) -> None:
    base = statistics.median(r["rate"] for r in results["no steps"])
    print("\n| variant | delivered ev/s (median) | vs no steps | worker CPU us/event | "
          "transform process CPU us/event |\n|---|---|---|---|---|")  # fmt: skip
    for name, runs in results.items():
        rate = statistics.median(r["rate"] for r in runs)
        worker = statistics.median(r["worker_us"] for r in runs)
        child = statistics.median(r["child_us"] for r in runs)
        change = f"{(rate / base - 1) * 100:+.1f}%" if name != "no steps" else "-"
        print(f"| {name} | {rate:,.0f} | {change} | {worker:.1f} | {child:.1f} |")


if __name__ == "__main__":
    main()
