"""The measured scenarios. Each returns rows (dicts) that bench/report.py turns into tables.

A measurement: start the monitor, start the load generator (its own process) at a given wall
time, snapshot per-process CPU at the edges of the measured window (after the warm-up), wait for
the generator's figures, wait until every accepted event reached each sink ("drain"), read the
sinks' figures for the window, and keep the peak RSS of each group of processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs
from bench.procs import PY, Monitor
from bench.stacks import (
    REPO,
    FileProbe,
    KrenalisStack,
    NatsNodes,
    Receiver,
    WarehouseProbe,
    WebhookProbe,
    bench_env,
    http_workers_env_safe,
    make_pg_template,
    workspace_yaml,
)

__all__ = ["Options", "Runner", "SCENARIOS"]


@dataclass
class Options:
    root: Path
    quick: bool = False
    ingest_duration: float = 6.0
    #: The headline run (one pipeline into the warehouse, `krenalis serve` as shipped).
    e2e_duration: float = 20.0
    #: Every other end-to-end phase.
    short_duration: float = 6.0
    warmup: float = 2.0
    connections: int = 32
    event_size: int = 400
    baseline_seconds: float = 3.0
    latency_rate: float = 5000.0
    #: The throughput goal: held for sustained_duration, delivery must keep up.
    sustained_rate: float = 12000.0
    sustained_duration: float = 60.0
    drain_timeout: float = 120.0
    #: Before each phase, wait up to this long for other users' processes to calm down.
    quiet_wait: float = 5.0
    quiet_threshold: float = 0.25


@dataclass
class Runner:
    opts: Options
    write_key: str = ""
    rows: list[dict] = field(default_factory=list)
    extra_rows: list[dict] = field(default_factory=list)
    #: bench.drain's rows: the workers alone on a filled stream.
    drain_rows: list[dict] = field(default_factory=list)
    fsync_rate: float = 0.0
    commit_start: str = ""
    notes: list[str] = field(default_factory=list)
    log: Callable[[str], None] = print
    _pg_template: Path | None = None

    def __post_init__(self) -> None:
        from krenalis.workspace.starter import generate_write_key

        self.write_key = generate_write_key()

    # -- shared pieces ------------------------------------------------------------------------

    def measure_fsync(self, n: int = 300) -> float:
        """fsyncs/s of the disk under the temporary directory (4 KiB appends)."""
        import os

        path = self.opts.root / "fsync-probe"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            block = b"x" * 4096
            started = time.perf_counter()
            for _ in range(n):
                os.write(fd, block)
                os.fsync(fd)
            self.fsync_rate = n / (time.perf_counter() - started)
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)
        return self.fsync_rate

    def pg_template(self) -> Path:
        if self._pg_template is None:
            self.log("  preparing a PostgreSQL data directory (track_commit_timestamp = on)")
            self._pg_template = make_pg_template(self.opts.root / "pg-template")
        return self._pg_template

    def dir(self, name: str) -> Path:
        path = self.opts.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def measure(
        self,
        *,
        scenario: str,
        variant: str,
        url: str,
        batch: int = 100,
        rate: float = 0.0,
        duration: float,
        connections: int | None = None,
        stack: KrenalisStack | None = None,
        nats_procs: Callable | None = None,
        receiver: Receiver | None = None,
        probes: tuple = (),
        # Stored messages per event: its pipeline's copy and its source's archive copy.
        copies: int = 2,
        expected_before: int = 0,
        client: str = "raw",
        extra: dict | None = None,
        warmup: float | None = None,
    ) -> dict:
        """One load phase; returns its row (also appended to self.rows)."""
        o = self.opts
        conns = connections or o.connections
        warm = o.warmup if warmup is None else warmup
        mon = Monitor()
        holder: dict[str, procs.Proc] = {}
        if stack is not None:
            mon.watch("krenalis", stack.processes)
            mon.watch("nats-server", nats_procs or stack.nats_processes)
            mon.watch("postgres", stack.pg_processes)
            mon.guard = stack.guard
        elif nats_procs is not None:
            mon.watch("nats-server", nats_procs)
        if receiver is not None:
            mon.watch("receiver", receiver.processes)
        mon.watch("loadgen", lambda: procs.tree(holder["lg"].pid) if "lg" in holder else [])
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{scenario}-{variant}").strip("-")
        out = self.dir("loadgen") / f"{slug}-{time.time():.0f}.json"
        start_at = time.time() + 1.5
        args = [
            PY, "-m", "bench.loadgen", "--url", url, "--key", self.write_key,
            "--batch", str(batch), "--rate", str(rate), "--duration", str(duration),
            "--warmup", str(warm), "--connections", str(conns),
            "--event-size", str(o.event_size), "--client", client,
            "--start-at", f"{start_at:.3f}", "--out", str(out),
        ]  # fmt: skip
        rate_text = f"{rate:,.0f} ev/s" if rate else "unthrottled"
        self.log(f"  {scenario} / {variant}: batch {batch}, {conns} connections, {rate_text}, "
                 f"{duration:g}s (+{warm:g}s warm-up)")  # fmt: skip
        waited, background = self._wait_quiet()
        start_at = time.time() + 1.5
        args[args.index("--start-at") + 1] = f"{start_at:.3f}"
        mon.start()
        try:
            holder["lg"] = lg = procs.start(
                "loadgen", args, env=bench_env(), cwd=REPO, log_path=out.with_suffix(".log"),
                stop_timeout=10,
            )  # fmt: skip
            _sleep_until(start_at + warm)
            mon.window_start()
            _sleep_until(start_at + warm + duration)
            mon.window_end()
            try:
                lg.popen.wait(duration + 90)
            finally:
                lg.stop()
            if mon.guard_error:
                raise RuntimeError(mon.guard_error)
            if not out.exists():
                raise RuntimeError(f"the load generator wrote no result:\n{lg.log_tail()}")
            load = json.loads(out.read_text())
            a, b = load["window_epoch"]
            sinks = {}
            expected = expected_before + load["accepted_total"]
            for probe in probes:
                drained = _wait_drained(probe, expected, o.drain_timeout)
                figures = probe.window(a, b)
                figures["drained"] = drained
                figures["count"] = probe.count()
                last = figures.get("last_delivery_epoch")
                figures["drain_s"] = max(0.0, last - b) if last else None
                after = figures.get("delivered_after_window") or 0
                if figures["drain_s"] and after > 1000:
                    figures["drain_per_s"] = after / figures["drain_s"]
                sinks[probe.name] = figures
        finally:
            mon.stop()
        total, _ = mon.system_cores()
        others = mon.others()
        row = {
            "scenario": scenario,
            "variant": variant,
            "batch": batch,
            "rate": rate,
            "connections": conns,
            "duration": duration,
            "copies": copies,
            "load": load,
            "sinks": sinks,
            "rss": mon.peaks(),
            "cpu": [r for r in mon.cpu_report() if r["cores"] >= 0.01],
            "cpu_total": total,
            "cpu_steal": mon.steal(),
            "cpu_others": others["other_processes"],
            "others": others,
            "quiet_wait_s": waited,
            "background_before": background,
            **(extra or {}),
        }
        self.rows.append(row)
        ev = load["events_per_s"]
        lat = load["latency_ms"]
        self.log(f"    accepted {ev:,.0f} ev/s, request p50 {lat['p50']} ms p99 {lat['p99']} ms, "
                 f"failures {load['failures'] or 'none'}")  # fmt: skip
        for name, s in sinks.items():
            p50, p99 = s.get("e2e_p50_s"), s.get("e2e_p99_s")
            self.log(f"    {name}: delivered {s['delivered_per_s']:,.0f} ev/s in the window, "
                     f"e2e p50 {_fmt_s(p50)} p99 {_fmt_s(p99)}, drained={s['drained']}")  # fmt: skip
        return row

    def _ours(self) -> set[int]:
        """Every process of this run: those started here, and those living in our temp dir
        (PostgreSQL daemonizes; its backends are the postmaster's children)."""
        import psutil

        pids: set[int] = set()
        root = str(self.opts.root)
        for p in psutil.process_iter(["cmdline"]):
            if root in " ".join(p.info.get("cmdline") or []):
                pids.update(x.pid for x in procs.tree(p.pid))
        for proc in list(procs._registry):
            pids.update(x.pid for x in procs.tree(proc.pid))
        return pids

    def _wait_quiet(self) -> tuple[float, float]:
        """Wait (at most opts.quiet_wait) until other users' processes use little CPU."""
        o = self.opts
        began = time.monotonic()
        load = procs.background_load(1.0, self._ours())
        while load > o.quiet_threshold and time.monotonic() - began < o.quiet_wait:
            load = procs.background_load(2.0, self._ours())
        waited = time.monotonic() - began
        if waited > 1.5:
            self.log(f"    waited {waited:.0f}s for a quieter machine (other processes: "
                     f"{load:.2f} cores)")  # fmt: skip
        return waited, load

    def baseline(
        self,
        rows: list[dict],
        urls: list[str],
        pipelines: list[str],
        replicas: int = 1,
        nkey: str | None = None,
    ):
        """Raw publish_async of as many copies as the first row stored; attach to `rows`.
        `nkey`: the seed serve's embedded server wants (passed in the environment)."""
        o = self.opts
        copies = max(1000, rows[0]["load"]["accepted_total"] * len(pipelines))
        out = self.dir("baseline") / f"baseline-{time.time():.0f}.json"
        self._wait_quiet()
        self.log(f"  baseline: raw nats-py publish_async of up to {copies:,} copies "
                 f"(at most {o.baseline_seconds:g}s)")  # fmt: skip
        proc = procs.start(
            "baseline",
            [PY, "-m", "bench.baseline", "--url", ",".join(urls), "--count", str(copies),
             "--pipelines", ",".join(pipelines), "--replicas", str(replicas),
             "--max-seconds", str(o.baseline_seconds), "--event-size", str(o.event_size),
             "--batch", str(rows[0]["batch"]), "--concurrency", str(rows[0]["connections"]),
             "--out", str(out)],
            env=dict(bench_env(), **({"KRENALIS_NATS_NKEY": nkey} if nkey else {})),
            cwd=REPO, log_path=out.with_suffix(".log"), stop_timeout=10,
        )  # fmt: skip
        try:
            proc.popen.wait(o.baseline_seconds + 120)
        finally:
            proc.stop()
        if not out.exists():
            self.log(f"    baseline failed:\n{proc.log_tail()}")
            return None
        base = json.loads(out.read_text())
        atomic = base.get("atomic") or {}
        self.log(f"    baseline publish_async {base['msgs_per_s']:,.0f} msgs/s, atomic batches "
                 f"{atomic.get('msgs_per_s', 0):,.0f} msgs/s")  # fmt: skip
        for row in rows:
            row["baseline"] = base
        return base

    # -- scenarios ------------------------------------------------------------------------------

    def selftest(self) -> None:
        """The generator against a do-nothing server: how far can it go on this machine?"""
        o = self.opts
        rx = Receiver(self.dir("selftest"), mode="accept")
        rx.start()
        try:
            url = f"http://127.0.0.1:{rx.port}/v1/batch"
            d = 3.0
            variants = [(100, "raw"), (1, "raw")] + ([] if o.quick else [(100, "httpx")])
            for batch, client in variants:
                self.measure(
                    scenario="selftest", variant=f"{client} client", url=url, batch=batch,
                    duration=d, receiver=rx, client=client, warmup=1.0,
                )  # fmt: skip
        finally:
            rx.stop()

    def ingest(self, sync: str) -> None:
        """Collector(s) + NATS only: the pipeline exists, no worker consumes it."""
        o = self.opts
        name = "ingest" if sync == "always" else "ingest-relaxed"
        root = self.dir(name)
        nats = NatsNodes(root / "nats", sync_interval=sync)
        nats.start()
        try:
            if o.quick:
                variants = [(1, 100)]
            elif sync == "always":
                variants = [(1, 100), (2, 100), (1, 10)]
            else:
                variants = [(1, 100), (2, 100), (1, 10), (1, 1)]
            rows = []
            for collectors, batch in variants:
                ws = workspace_yaml(self.write_key, {"p1": "archive"}, file_dir=root / "unused")
                stack = KrenalisStack(
                    root / f"c{collectors}-b{batch}", ws, command="collector",
                    collectors=collectors, nats_urls=nats.urls,
                )  # fmt: skip
                try:
                    stack.start()
                    conns = o.connections * (2 if batch == 1 else 1)
                    row = self.measure(
                        scenario=name, variant=f"{collectors} collector(s), batch {batch}",
                        url=stack.url, batch=batch, duration=o.ingest_duration,
                        connections=conns, stack=stack, nats_procs=nats.processes,
                        extra={"collectors": collectors, "sync": sync,
                               "workers_via_env": stack.use_env_workers},
                    )  # fmt: skip
                    row["stream"] = _run(_stream_info(nats.urls, "EVENTS"))
                    rows.append(row)
                finally:
                    stack.stop()
                _run(_purge(nats.urls, "EVENTS", "EVENTS_ARCHIVE"))
            self.baseline(rows, nats.urls, ["p1"])
        finally:
            nats.stop()

    def warehouse(self) -> None:
        """One pipeline into the embedded PostgreSQL: `krenalis serve` as shipped (fsync
        always), unthrottled, then held at the sustained rate (the throughput goal) and at the
        latency rate; then, unless quick, the same with KRENALIS_NATS_SYNC_INTERVAL=2m.
        (`_warehouse("split", ...)` runs `krenalis collector` + `krenalis worker` against a
        harness-run NATS.)"""
        o = self.opts
        rates = [] if o.quick else [(o.sustained_rate, o.sustained_duration),
                                    (o.latency_rate, o.short_duration)]  # fmt: skip
        self._warehouse("serve", "always", o.e2e_duration, rates)
        if not o.quick:
            self._warehouse("serve", "2m", o.short_duration,
                            [(o.sustained_rate, o.short_duration * 2),
                             (o.latency_rate, o.short_duration)])  # fmt: skip

    def _warehouse(
        self, topology: str, sync: str, duration: float, rates: list[tuple[float, float]]
    ) -> None:
        """An unthrottled run, then one run held at each (events/s, seconds) of `rates`."""
        root = self.dir(f"warehouse-{topology}-{sync}")
        ws = workspace_yaml(self.write_key, {"wh": "warehouse"})
        nats = None
        if topology == "split":
            nats = NatsNodes(root / "nats", sync_interval=sync)
            nats.start()
            stack = KrenalisStack(
                root / "krenalis", ws, command="worker", nats_urls=nats.urls,
                pg_template=self.pg_template(),
            )  # fmt: skip
            label = "collector + worker processes"
        else:
            env = {} if sync == "always" else {"KRENALIS_NATS_SYNC_INTERVAL": sync}
            stack = KrenalisStack(root, ws, pg_template=self.pg_template(), extra_env=env)
            label = "serve"
        label += ", fsync always" if sync == "always" else f", sync {sync}"
        extra = {"sync": sync, "topology": topology}
        try:
            stack.start()
            probe = WarehouseProbe(stack.pg_dsn())
            nats_procs = nats.processes if nats else None
            row = self.measure(
                scenario="warehouse", variant=f"{label}: unthrottled", url=stack.url,
                duration=duration, stack=stack, nats_procs=nats_procs, probes=(probe,),
                extra=extra,
            )  # fmt: skip
            rows = [row]
            for rate, seconds in rates:
                # The sustained run always runs: it is the throughput goal, reached or not.
                if rate != self.opts.sustained_rate and row["load"]["events_per_s"] < 1.02 * rate:
                    self.notes.append(
                        f"warehouse / {label}: the run at {rate:,.0f} ev/s was skipped: the "
                        f"unthrottled maximum ({row['load']['events_per_s']:,.0f} ev/s accepted) "
                        "is below that rate."
                    )
                    self.log(f"    (the run at {rate:,.0f} ev/s is skipped: the maximum is below)")
                    continue
                rows.append(self.measure(
                    scenario="warehouse", variant=f"{label}: at {rate:,.0f} ev/s",
                    url=stack.url, rate=rate, duration=seconds, stack=stack,
                    nats_procs=nats_procs, probes=(probe,), expected_before=probe.count(),
                    extra=extra,
                ))  # fmt: skip
            self.baseline(rows, stack.nats_urls, ["wh"], nkey=stack.env.get("KRENALIS_NATS_NKEY"))
        finally:
            stack.stop()
            if nats is not None:
                nats.stop()

    def webhook(self) -> None:
        o = self.opts
        root = self.dir("webhook")
        rx = Receiver(root)
        rx.start()
        try:
            modes = [True] if o.quick else [True, False]
            for batch_mode in modes:
                ws = workspace_yaml(
                    self.write_key, {"hook": "hook"}, webhook_url=rx.url, webhook_batch=batch_mode
                )
                sub = root / ("batch" if batch_mode else "per-event")
                stack = KrenalisStack(sub, ws)
                probe = WebhookProbe(rx)
                before = probe.count()
                try:
                    stack.start()
                    rate = 0.0 if batch_mode else 500.0
                    variant = (
                        "serve, fsync always, batch: true"
                        if batch_mode
                        else "serve, fsync always, one POST per event, at 500 ev/s"
                    )
                    row = self.measure(
                        scenario="webhook", variant=variant, url=stack.url, rate=rate,
                        duration=o.short_duration, stack=stack, receiver=rx, probes=(probe,),
                        expected_before=before, extra={"sync": "always"},
                        connections=None if batch_mode else 8,
                    )  # fmt: skip
                    if batch_mode:  # the other is bound by the sink, not by NATS
                        self.baseline(
                            [row],
                            stack.nats_urls,
                            ["hook"],
                            nkey=stack.env.get("KRENALIS_NATS_NKEY"),
                        )
                finally:
                    stack.stop()
        finally:
            rx.stop()

    def three(self) -> None:
        o = self.opts
        root = self.dir("three")
        rx = Receiver(root)
        rx.start()
        files = root / "archive"
        fprobe = FileProbe(files)
        try:
            ws = workspace_yaml(
                self.write_key, {"wh": "warehouse", "hook": "hook", "archive": "archive"},
                webhook_url=rx.url, file_dir=files,
            )  # fmt: skip
            stack = KrenalisStack(root, ws, pg_template=self.pg_template())
            try:
                stack.start()
                fprobe.start()
                probes = (WarehouseProbe(stack.pg_dsn()), WebhookProbe(rx), fprobe)
                row = self.measure(
                    scenario="three pipelines", variant="serve, fsync always, warehouse + webhook + file",
                    url=stack.url, duration=o.short_duration, stack=stack, receiver=rx,
                    probes=probes, copies=4, extra={"sync": "always"},
                )  # fmt: skip
                self.baseline(
                    [row],
                    stack.nats_urls,
                    ["wh", "hook", "archive"],
                    nkey=stack.env.get("KRENALIS_NATS_NKEY"),
                )
            finally:
                fprobe.stop()
                stack.stop()
        finally:
            rx.stop()

    def cluster(self) -> None:
        o = self.opts
        root = self.dir("cluster")
        nats = NatsNodes(root / "nats", size=3, sync_interval="2m")
        self.log("  starting a 3-node NATS cluster")
        nats.start()
        try:
            ws = workspace_yaml(self.write_key, {"wh": "warehouse"})
            stack = KrenalisStack(
                root / "krenalis", ws, nats_urls=nats.urls, replicas=3,
                pg_template=self.pg_template(),
            )  # fmt: skip
            try:
                stack.start()
                probe = WarehouseProbe(stack.pg_dsn())
                row = self.measure(
                    scenario="cluster R3", variant="serve, 3 nodes, replicas 3, sync default",
                    url=stack.url, duration=o.short_duration, stack=stack,
                    nats_procs=nats.processes, probes=(probe,),
                    extra={"sync": "2m (NATS default, as `krenalis nats config --cluster`)"},
                )  # fmt: skip
                self.baseline([row], nats.urls, ["wh"], replicas=3)
            finally:
                stack.stop()
        finally:
            nats.stop()


def nats_level(runner: Runner) -> None:
    """NATS alone, with fsync always and with 2m: atomic batches versus publish_async for
    requests of 10 and 100 copies, and how fast acked messages leave a WorkQueue stream and a
    limits stream purged up to the ack floor."""
    o = runner.opts
    for sync in ("always", "2m"):
        root = runner.dir(f"nats-{sync}")
        nats = NatsNodes(root / "nats", sync_interval=sync)
        nats.start()
        try:
            row: dict = {"scenario": "nats", "variant": f"sync {sync}", "sync": sync}
            runs = [(f"publish-{b}", ["--mode", "publish", "--batch", str(b), "--requests",
                                      str(o.connections), "--seconds", str(o.baseline_seconds)])
                    for b in (10, 100)]  # fmt: skip
            runs.append(("acks", ["--mode", "acks", "--total", "20000"]))
            for name, args in runs:
                runner._wait_quiet()
                out = root / f"{name}.json"
                proc = procs.start(
                    f"experiments {name}",
                    [PY, "-m", "bench.experiments", "--url", nats.urls[0], *args, "--out", str(out)],
                    env=bench_env(), cwd=REPO, log_path=out.with_suffix(".log"), stop_timeout=10,
                )  # fmt: skip
                try:
                    proc.popen.wait(120)
                finally:
                    proc.stop()
                row[name] = json.loads(out.read_text()) if out.exists() else None
            runner.log(
                f"  sync {sync}: {json.dumps({k: v for k, v in row.items() if k[0] in 'pa'})}"
            )
            runner.extra_rows.append(row)
        finally:
            nats.stop()


def drain(runner: Runner) -> None:
    """The workers alone on a filled stream (bench.drain): the warehouse with one worker process
    and with two on two shards (scale-out), and webhooks one POST per event."""
    from bench.drain import run

    events = 30_000 if runner.opts.quick else 60_000
    repeat = 1 if runner.opts.quick else 3
    for sink, shards, count in (("warehouse", 1, events), ("warehouse", 2, events),
                                ("webhook", 1, events // 2)):  # fmt: skip
        runner._wait_quiet()
        runner.log(f"  drain: {count:,} events to the {sink}, {shards} worker process(es)")
        rows = run(runner.dir(f"drain-{sink}-{shards}"), sink, count, shards, repeat=repeat)
        row = sorted(rows, key=lambda r: r["events_per_s"])[len(rows) // 2]  # the median
        runner.drain_rows.append({"sink": sink, "shards": shards, "events": count,
                                  "rounds": [r["events_per_s"] for r in rows], **row})  # fmt: skip


SCENARIOS: dict[str, Callable[[Runner], None]] = {
    "selftest": Runner.selftest,
    "ingest": lambda r: r.ingest("always"),
    "ingest-relaxed": lambda r: r.ingest("2m"),
    "warehouse": Runner.warehouse,
    "webhook": Runner.webhook,
    "three": Runner.three,
    "cluster": Runner.cluster,
    "nats": nats_level,
    "drain": drain,
}
QUICK = ["selftest", "ingest", "ingest-relaxed", "warehouse"]


# -- helpers ------------------------------------------------------------------------------------


def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms"


def _wait_drained(probe, expected: int, timeout: float) -> bool:
    """Wait until the sink holds `expected` events; give up after `timeout` or 20 s idle."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = probe.count()
        if count >= expected:
            return True
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > 20:
            return False
        time.sleep(0.25)
    return False


def _run(coro):
    return asyncio.run(coro)


async def _stream_info(urls: list[str], stream: str) -> dict:
    import nats

    nc = await nats.connect(urls)
    try:
        info = await nc.jetstream().stream_info(stream)
        n = info.state.messages
        return {"messages": n, "bytes_per_msg": round(info.state.bytes / n) if n else 0}
    finally:
        await nc.close()


async def _purge(urls: list[str], *streams: str) -> None:
    import nats

    nc = await nats.connect(urls)
    try:
        for stream in streams:
            with contextlib.suppress(Exception):
                await nc.jetstream().purge_stream(stream)
    finally:
        await nc.close()


def note_http_workers(runner: Runner) -> None:
    if not http_workers_env_safe():
        runner.notes.append(
            "KRENALIS_HTTP_WORKERS=2 is not used as is: `serve._spawn_collector` passes "
            "KRENALIS_HTTP_WORKERS=2 on to each child collector, which spawns another child, "
            "recursively (a fork bomb). Two collector processes were started by the harness "
            "instead: the same `krenalis collector` command on the same port (SO_REUSEPORT) "
            "and NATS, which is the topology `serve` means to build."
        )
