"""The archive's and the live tail's cost: disk bytes per archived event, events/s accepted with
and without the archive, and with and without a `krenalis tail` attached.

Ingest runs `krenalis collector` against a nats-server the harness starts (the embedded
server's configuration: `sync_interval` always), one pipeline that no worker consumes (as the
`ingest` scenario of bench/run.py), driven by bench/loadgen.py; the variants alternate within
each round so that the machine's drift touches them alike. The disk figure publishes archive
copies of the load generator's events (as the collector makes them, atomic batches of 100) and
reads both the stream's own byte count and the growth of its directory on disk.

Run: python -m bench.archive [--duration 6] [--rounds 2] [--batches 100,10,1] [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from bench import procs
from bench.procs import PY
from bench.scenarios import Options, Runner, _purge
from bench.stacks import KrenalisStack, NatsNodes, bench_env, rmtree, workspace_yaml

__all__ = ["main"]


def _workspace(runner: Runner, root: Path, archive: str) -> str:
    text = workspace_yaml(runner.write_key, {"p1": "archive"}, file_dir=root / "unused")
    return text.replace(
        f'"{runner.write_key}"\n', f'"{runner.write_key}"\n    archive: {archive}\n'
    )


def _ingest(
    runner: Runner, nats: NatsNodes, root: Path, batch: int, archive: str, tail: bool
) -> dict[str, float]:
    """One phase: events/s one collector accepted, and the cores each side used."""
    stack = KrenalisStack(root, _workspace(runner, root, archive), command="collector",
                          nats_urls=nats.urls)  # fmt: skip
    watcher = None
    try:
        stack.start()
        if tail:
            watcher = _start_tail(root, nats.urls)
        variant = f"batch {batch}, archive {archive}" + (", tail attached" if tail else "")
        tail_cpu = _cpu(watcher)
        row = runner.measure(
            scenario="archive", variant=variant, url=stack.url, batch=batch,
            duration=runner.opts.ingest_duration,
            connections=runner.opts.connections * (2 if batch == 1 else 1),
            stack=stack, nats_procs=nats.processes,
        )  # fmt: skip
        cores = {group: 0.0 for group in ("krenalis", "nats-server")}
        for entry in row["cpu"]:
            if entry["group"] in cores:
                cores[entry["group"]] += entry["cores"]
        a, b = row["load"]["window_epoch"]
        return {
            "events_per_s": float(row["load"]["events_per_s"]),
            "collector": cores["krenalis"],
            "nats": cores["nats-server"],
            "tail": (_cpu(watcher) - tail_cpu) / (b - a + runner.opts.warmup + 3) if tail else 0.0,
            "others": float(row["cpu_others"]),
        }
    finally:
        if watcher is not None:
            watcher.stop()
        stack.stop()
        asyncio.run(_purge(nats.urls, "EVENTS", "EVENTS_ARCHIVE"))


def _cpu(proc: procs.Proc | None) -> float:
    """CPU seconds the process used so far (0 without one)."""
    if proc is None:
        return 0.0
    try:
        times = psutil.Process(proc.pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def _start_tail(root: Path, urls: list[str]) -> procs.Proc:
    """`krenalis tail --json` writing every line to a file, as someone watching would."""
    env = bench_env()
    env["KRENALIS_NATS_URL"] = ",".join(urls)
    out = root / "tail.ndjson"
    tail = procs.start("krenalis tail", [PY, "-m", "krenalis.cli", "tail", "--json"], env=env,
                       cwd=root, log_path=out)  # fmt: skip
    time.sleep(2.0)  # connected and announced
    return tail


async def _disk(url: str, store: Path, events: int) -> tuple[float, float]:
    """(stream bytes, directory growth) per archived event."""
    from bench.baseline import payloads
    from krenalis.config import load_settings
    from krenalis.stream.archive import archive_copy
    from krenalis.stream.connection import NatsConnection
    from krenalis.stream.layout import ARCHIVE_STREAM, ensure_streams
    from krenalis.stream.publisher import Publisher

    settings = load_settings({"KRENALIS_NATS_URL": url}, env_file=None)
    conn = NatsConnection(settings)
    await conn.connect(timeout=10)
    try:
        await ensure_streams(conn.js, settings)
        await conn.js.purge_stream(ARCHIVE_STREAM)
        info = await conn.js.stream_info(ARCHIVE_STREAM)
        before_bytes, before_disk = info.state.bytes, _du(store)
        publisher = Publisher(conn.nc)
        stored = payloads(events)
        for start in range(0, events, 100):
            chunk = stored[start : start + 100]
            await publisher.publish([archive_copy("web", d, m, 7 * 86400) for d, m in chunk])
        after_bytes = (await conn.js.stream_info(ARCHIVE_STREAM)).state.bytes
        return (after_bytes - before_bytes) / events, (_du(store) - before_disk) / events
    finally:
        await conn.close()


def _du(path: Path) -> int:
    """Bytes the directory takes on disk (blocks), as `du -sb` counts them."""
    done = subprocess.run(["du", "-sB1", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.archive", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per phase")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batches", default="100,10,1", help="events per request, comma-separated")
    p.add_argument("--events", type=int, default=20_000, help="archive copies for the disk figure")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="krenalis-archive-bench-"))
    runner = Runner(Options(root=root, ingest_duration=args.duration, warmup=1.5, quiet_wait=5.0))
    nats = NatsNodes(root / "nats", sync_interval="always")
    nats.start()
    results: dict[str, list[dict[str, float]]] = {}
    try:
        stream_bytes, disk_bytes = asyncio.run(_disk(nats.urls[0], root / "nats", args.events))
        print(f"disk: {stream_bytes:,.0f} stream bytes, {disk_bytes:,.0f} bytes on disk per "
              "archived event", flush=True)  # fmt: skip
        batches = [int(b) for b in args.batches.split(",")]
        variants = [(b, a, False) for b in batches for a in ("7d", "0")]
        variants += [(b, "7d", True) for b in (batches[0], batches[-1])]
        for n in range(args.rounds):
            for batch, archive, tail in variants:
                key = f"batch {batch}, archive {archive}{', tail attached' if tail else ''}"
                where = root / f"r{n}-b{batch}-a{archive}-t{int(tail)}"
                results.setdefault(key, []).append(
                    _ingest(runner, nats, where, batch, archive, tail)
                )
    finally:
        procs.stop_all()
        nats.stop()
        rmtree(root)
    _print(results)


def _print(results: dict[str, list[dict[str, float]]]) -> None:
    print("| variant | events/s accepted, each round | median | collector us/event | "
          "nats-server us/event | tail cores | other load |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for key, rows in results.items():
        rates = [r["events_per_s"] for r in rows]
        per_event = {side: statistics.median(r[side] / r["events_per_s"] * 1e6 for r in rows)
                     for side in ("collector", "nats")}  # fmt: skip
        tail = statistics.median(r["tail"] for r in rows)
        others = max(r["others"] for r in rows)
        print(f"| {key} | {' / '.join(f'{r:,.0f}' for r in rates)} | "
              f"{statistics.median(rates):,.0f} | {per_event['collector']:.0f} | "
              f"{per_event['nats']:.0f} | {tail:.2f} | {others:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
