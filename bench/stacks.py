"""What a scenario runs against: Krenalis processes, NATS servers, a warehouse, a receiver.

- `NatsNodes`: nats-server processes started by the harness (one node, or a 3-node cluster),
  with the same `EmbeddedNats` class `krenalis serve` uses, so the configuration is the same.
- `KrenalisStack`: `krenalis serve` (embedded NATS unless a URL is given, embedded PostgreSQL
  when a pipeline writes to the warehouse) or `krenalis collector` alone; plus extra collector
  processes sharing the HTTP port when more than one collector is asked for (see
  `http_workers_env_safe`).
- `Receiver`: bench/receiver.py in its own process.
- Probes that read what reached each sink: `WarehouseProbe`, `WebhookProbe`, `FileProbe`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from bench import procs
from bench.procs import PY, Proc
from krenalis.runtime.processes import free_port

__all__ = [
    "FileProbe",
    "KrenalisStack",
    "NatsNodes",
    "Receiver",
    "WarehouseProbe",
    "WebhookProbe",
    "http_workers_env_safe",
    "make_pg_template",
    "workspace_yaml",
]

REPO = Path(__file__).resolve().parent.parent


def http_workers_env_safe() -> bool:
    """Whether KRENALIS_HTTP_WORKERS=N can be used as is.

    Up to commit 2ae4319, `serve` handed its own environment (with KRENALIS_HTTP_WORKERS=N) to
    each child collector, which then spawned N-1 children of its own, recursively: a fork bomb.
    The fix pins KRENALIS_HTTP_WORKERS=1 in the child's environment; without it, the harness
    starts the extra collectors itself: the same `krenalis collector` command on the same port
    (SO_REUSEPORT) and NATS, which is exactly the topology `serve` means to build. The monitor's
    guard (`KrenalisStack.guard`) stops a runaway tree in any case.
    """
    try:
        import krenalis.runtime.serve as serve

        source = inspect.getsource(serve)
    except (ImportError, OSError):
        return False
    return re.search(r"""KRENALIS_HTTP_WORKERS["']?\s*[=:]\s*["']1["']""", source) is not None


def bench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRENALIS_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def workspace_yaml(
    write_key: str,
    pipelines: dict[str, str],
    *,
    webhook_url: str | None = None,
    webhook_batch: bool = True,
    file_dir: Path | None = None,
    batch_max_events: int | None = None,
    batch_max_wait: str | None = None,
) -> str:
    """A workspace with source `web` and `pipelines` (id -> "warehouse" | "hook" | "archive")."""
    lines = ["sources:", "  web:", f'    write_key: "{write_key}"']
    dests = []
    if webhook_url:
        dests += [
            "  hook:",
            "    type: webhook",
            f"    url: {webhook_url}",
            f"    batch: {'true' if webhook_batch else 'false'}",
            "    max_concurrency: 8",
        ]
    if file_dir is not None:
        dests += ["  archive:", "    type: file", f'    path: "{file_dir}"']
    if dests:
        lines += ["destinations:", *dests]
    lines.append("pipelines:")
    for pid, to in pipelines.items():
        lines += [f"  {pid}:", "    source: web", f"    to: {to}"]
        if batch_max_events or batch_max_wait:
            parts = []
            if batch_max_events:
                parts.append(f"max_events: {batch_max_events}")
            if batch_max_wait:
                parts.append(f"max_wait: {batch_max_wait}")
            lines.append("    batch: {" + ", ".join(parts) + "}")
    return "\n".join(lines) + "\n"


# -- NATS ---------------------------------------------------------------------------------------


class NatsNodes:
    """One node or a cluster of nats-server processes started by the harness."""

    def __init__(self, root: Path, *, size: int = 1, sync_interval: str = "always") -> None:
        from tests.fixtures.cluster import local_cluster

        from krenalis.runtime.nats_server import EmbeddedNats

        self.sync_interval = sync_interval
        if size == 1:
            self.nodes = [EmbeddedNats(root / "n0", sync_interval=sync_interval)]
        else:
            self.nodes = local_cluster(root, size, sync_interval=sync_interval)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes if n.running and n.pid]

    def processes(self) -> list[psutil.Process]:
        out = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                out.append(psutil.Process(pid))
        return out

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            if len(self.nodes) > 1:
                self._wait_jetstream()
        except BaseException:
            self.stop()
            raise

    def _wait_jetstream(self, timeout: float = 30.0) -> None:
        """A cluster's JetStream meta layer needs a leader (a few seconds) before use."""
        import asyncio

        from tests.fixtures.cluster import wait_for_jetstream

        asyncio.run(wait_for_jetstream(self.urls, timeout))

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()


# -- PostgreSQL -------------------------------------------------------------------------------


def make_pg_template(path: Path) -> Path:
    """An initialised PostgreSQL data directory with track_commit_timestamp = on.

    Krenalis's EmbeddedPostgres uses it as is (it only initialises a missing directory), and
    the commit timestamp of each row's inserting transaction, pg_xact_commit_timestamp(xmin),
    gives the exact moment each event was committed.
    """
    import psycopg

    from krenalis.sinks.warehouse import EmbeddedPostgres

    pg = EmbeddedPostgres(path)
    pg.start()
    try:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
    finally:
        pg.stop()
    return path


def copy_pg_template(template: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # cp -a keeps the owner (PostgreSQL runs as `embedded_postgres` when we are root).
    subprocess.run(["cp", "-a", str(template), str(target)], check=True)
    os.chmod(target.parent, 0o755)


# -- Krenalis ---------------------------------------------------------------------------------


class KrenalisStack:
    """`krenalis serve` (or `krenalis collector`) and optional extra collectors on one port."""

    def __init__(
        self,
        root: Path,
        workspace_text: str,
        *,
        command: str = "serve",
        collectors: int = 1,
        nats_urls: list[str] | None = None,
        replicas: int = 1,
        pg_template: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.command = command
        self.collectors = collectors
        self.nats_urls = nats_urls or []
        self.replicas = replicas
        self.port = free_port()
        self.data_dir = root / "data"
        self.workspace = root / "krenalis.yaml"
        root.mkdir(parents=True, exist_ok=True)
        self.workspace.write_text(workspace_text)
        if pg_template is not None:
            copy_pg_template(pg_template, self.data_dir / "postgres")
        self.use_env_workers = collectors > 1 and http_workers_env_safe()
        self.env = bench_env()
        self.env.update(
            KRENALIS_DATA_DIR=str(self.data_dir),
            KRENALIS_WORKSPACE=str(self.workspace),
            KRENALIS_HTTP_HOST="127.0.0.1",
            KRENALIS_HTTP_PORT=str(self.port),
            KRENALIS_HTTP_WORKERS=str(collectors if self.use_env_workers else 1),
            KRENALIS_LOG_LEVEL="WARNING",
            KRENALIS_NATS_REPLICAS=str(replicas),
            **(extra_env or {}),
        )
        if self.nats_urls:
            self.env["KRENALIS_NATS_URL"] = ",".join(self.nats_urls)
        self.main: Proc | None = None
        self.extra: list[Proc] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/batch"

    @property
    def health(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def start(self, timeout: float = 90.0) -> None:
        if self.command == "worker":
            self._start_split(timeout)
            return
        self.main = procs.start(
            f"krenalis {self.command}",
            [PY, "-m", "krenalis.cli", self.command],
            env=self.env,
            cwd=self.root,  # no stray .env is read
            log_path=self.root / f"krenalis-{self.command}.log",
        )
        procs.wait_http(self.health, timeout, self.main)
        if not self.nats_urls:  # serve's embedded server: its URL and key, for extra processes
            port = (self.data_dir / "nats" / "port").read_text().strip()
            self.nats_urls = [f"nats://127.0.0.1:{port}"]
            seed = (self.data_dir / "nats" / "krenalis-user.nk").read_text().strip()
            self.env["KRENALIS_NATS_NKEY"] = seed
        if self.collectors > 1 and not self.use_env_workers:
            self._start_collectors(self.collectors - 1)
        elif self.collectors > 1:
            time.sleep(3.0)  # its own children start once it is healthy; they share the port

    def _start_collectors(self, n: int) -> None:
        env = dict(self.env, KRENALIS_NATS_URL=",".join(self.nats_urls))
        for _ in range(n):
            proc = procs.start(
                "krenalis collector",
                [PY, "-m", "krenalis.cli", "collector"],
                env=env,
                cwd=self.root,
                log_path=self.root / f"krenalis-collector-{len(self.extra) + 1}.log",
            )
            self.extra.append(proc)
        time.sleep(1.0)  # they bind the shared port once connected to NATS
        for proc in self.extra:
            procs.wait_http(self.health, 30, proc)

    def _start_split(self, timeout: float) -> None:
        """`krenalis worker` (embedded PostgreSQL) and `collectors` x `krenalis collector`."""
        assert self.nats_urls, "the split topology needs NATS started by the harness"
        self.env["KRENALIS_HTTP_WORKERS"] = "1"
        self.main = procs.start(
            "krenalis worker",
            [PY, "-m", "krenalis.cli", "worker"],
            env=self.env,
            cwd=self.root,
            log_path=self.root / "krenalis-worker.log",
        )
        deadline = time.monotonic() + timeout
        while not self._warehouse_ready():
            if not self.main.running():
                raise RuntimeError(f"krenalis worker exited:\n{self.main.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"krenalis worker not ready:\n{self.main.log_tail()}")
            time.sleep(0.3)
        time.sleep(1.0)  # its consumer is created right after the tables
        self._start_collectors(self.collectors)

    def _warehouse_ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.pg_dsn(), connect_timeout=2) as conn:
                row = conn.execute("SELECT to_regclass('krenalis_events')").fetchone()
                return bool(row and row[0])
        except (OSError, AssertionError, psycopg.Error):
            return False

    def expected_collectors(self) -> int:
        return self.collectors

    def processes(self) -> list[psutil.Process]:
        """Krenalis's own processes (no nats-server, no postgres)."""
        out = []
        for proc in [self.main, *self.extra]:
            if proc is None:
                continue
            for p in procs.tree(proc.pid):
                with contextlib.suppress(psutil.Error):
                    if p.name() not in ("nats-server", "postgres"):
                        out.append(p)
        return out

    def nats_processes(self) -> list[psutil.Process]:
        if self.main is None or self.command == "worker":
            return []
        out = []
        for p in procs.tree(self.main.pid):
            with contextlib.suppress(psutil.Error):
                if p.name() == "nats-server":
                    out.append(p)
        return out

    def pg_processes(self) -> list[psutil.Process]:
        return procs.pg_processes(self.data_dir / "postgres")

    def guard(self) -> None:
        """Stop a runaway tree of collector processes (see http_workers_env_safe)."""
        collectors = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                if "collector" in " ".join(p.cmdline()):
                    collectors += 1
        allowed = self.collectors - 1 if self.command == "serve" else self.collectors
        if collectors > allowed + 1:
            roots = {p.pid for p in [self.main, *self.extra] if p is not None}
            procs.freeze_and_kill(roots)
            self.stop()
            raise RuntimeError(
                f"{collectors} collector processes for {self.collectors} asked: stopped "
                "(KRENALIS_HTTP_WORKERS spawns collectors recursively)"
            )

    def pg_dsn(self) -> str:
        text = (self.data_dir / "postgres" / "krenalis.conf").read_text()
        port = re.search(r"^port = (\d+)$", text, re.MULTILINE)
        assert port is not None
        passfile = (self.data_dir / "postgres" / "krenalis.pgpass").resolve()
        return f"postgresql://krenalis@127.0.0.1:{port.group(1)}/krenalis?passfile={passfile}"

    def stop(self) -> None:
        for proc in [*self.extra, self.main]:
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        self.extra = []
        pg_dir = self.data_dir / "postgres"
        if pg_dir.exists():
            procs.stop_pg_data_dir(pg_dir)


# -- Receiver and probes -----------------------------------------------------------------------


class Receiver:
    def __init__(self, root: Path, mode: str = "webhook") -> None:
        self.port = free_port()
        self.mode = mode
        self.root = root
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = procs.start(
            f"receiver ({self.mode})",
            [PY, "-m", "bench.receiver", "--port", str(self.port), "--mode", self.mode],
            env=bench_env(),
            cwd=REPO,
            log_path=self.root / f"receiver-{self.port}.log",
            stop_timeout=10,
        )
        procs.wait_http(f"http://127.0.0.1:{self.port}/count", 20, self.proc)

    def processes(self) -> list[psutil.Process]:
        return procs.tree(self.proc.pid) if self.proc else []

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


def _get_json(url: str, timeout: float = 30.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    values = sorted(values)
    n = len(values)

    def q(p: float) -> float:
        return values[min(n - 1, round(p * (n - 1)))]

    return {"p50": q(0.5), "p99": q(0.99), "max": values[-1]}


def _window_figures(
    arrivals: Iterable[tuple[float, float | None]], start: float, end: float
) -> dict[str, Any]:
    """What a sink probe reports for the window [start, end), from (arrival time, receivedAt)
    per delivered event (receivedAt None when unknown): deliveries in and after the window,
    and the latency of the events received in it."""
    lat: list[float] = []
    last = None
    delivered = after = 0
    for arrived, received in arrivals:
        if start <= arrived < end:
            delivered += 1
        elif arrived >= end:
            after += 1
        if received is not None and start <= received < end:
            lat.append(arrived - received)
            last = arrived if last is None else max(last, arrived)
    pct = _percentiles(lat)
    return {
        "received_in_window": len(lat),
        "e2e_p50_s": pct["p50"],
        "e2e_p99_s": pct["p99"],
        "e2e_max_s": pct["max"],
        "delivered_per_s": delivered / (end - start),
        "last_delivery_epoch": last,
        "delivered_after_window": after,
    }


def _iso_epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class WarehouseProbe:
    """Reads krenalis_events: counts, and per-event commit latency from commit timestamps."""

    name = "warehouse"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def count(self) -> int:
        import psycopg

        try:
            with psycopg.connect(self.dsn, connect_timeout=5) as conn:
                row = conn.execute("SELECT count(*) FROM krenalis_events").fetchone()
                return int(row[0]) if row else 0
        except psycopg.Error:
            return 0

    def window(self, start: float, end: float) -> dict:
        """Events received by the collector in [start, end): latency to commit, and the
        rate at which rows were committed during [start, end)."""
        import psycopg

        sql = """
        WITH r AS (
            SELECT extract(epoch FROM received_at)::float8 AS recv,
                   extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS committed
            FROM krenalis_events
        )
        SELECT
            (SELECT count(*) FROM r WHERE recv >= %(a)s AND recv < %(b)s),
            (SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY committed - recv)
               FROM r WHERE recv >= %(a)s AND recv < %(b)s),
            (SELECT max(committed - recv) FROM r WHERE recv >= %(a)s AND recv < %(b)s),
            (SELECT count(*) FROM r WHERE committed >= %(a)s AND committed < %(b)s),
            (SELECT max(committed) FROM r WHERE recv >= %(a)s AND recv < %(b)s),
            (SELECT count(*) FROM r WHERE committed IS NULL),
            (SELECT count(*) FROM r WHERE committed >= %(b)s)
        """
        with psycopg.connect(self.dsn, connect_timeout=5) as conn:
            row = conn.execute(sql, {"a": start, "b": end}).fetchone()
            per_s = conn.execute(
                """SELECT count(*) FROM krenalis_events
                   WHERE extract(epoch FROM pg_xact_commit_timestamp(xmin)) >= %(a)s
                     AND extract(epoch FROM pg_xact_commit_timestamp(xmin)) < %(b)s
                   GROUP BY floor(extract(epoch FROM pg_xact_commit_timestamp(xmin)))""",
                {"a": start, "b": end},
            ).fetchall()
        assert row is not None
        received, pcts, worst, committed_in_window, last_commit, no_ts, after = row
        seconds = [r[0] for r in per_s]
        return {
            "received_in_window": received,
            "e2e_p50_s": pcts[0] if pcts else None,
            "e2e_p99_s": pcts[1] if pcts else None,
            "e2e_max_s": worst,
            "delivered_per_s": committed_in_window / (end - start),
            "slowest_second": min(seconds) if len(seconds) >= int(end - start) else 0,
            "last_delivery_epoch": last_commit,
            "rows_without_commit_ts": no_ts,
            "delivered_after_window": after,
        }


class WebhookProbe:
    """Asks the receiver process for what it got."""

    name = "webhook"

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.base = f"http://127.0.0.1:{receiver.port}"

    def count(self) -> int:
        try:
            return int(_get_json(self.base + "/count")["unique"])
        except (OSError, ValueError, KeyError):
            return 0

    def window(self, start: float, end: float) -> dict:
        stats = _get_json(self.base + "/stats", timeout=120)
        arrivals = (
            (arrived, _iso_epoch(text) if text else None)
            for text, arrived in zip(stats["received_at"], stats["arrived"], strict=True)
        )
        figures = _window_figures(arrivals, start, end)
        return {**figures, "duplicates": stats["duplicates"], "requests": stats["requests"]}


class FileProbe:
    """Polls the size of the file destination's NDJSON files every `interval` seconds.

    An event's delivery time is the first poll that saw its whole line: an upper bound, at
    most `interval` late.
    """

    name = "file"

    def __init__(self, directory: Path, interval: float = 0.1) -> None:
        self.directory = directory
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _size(self) -> int:
        try:
            files = sorted(self.directory.glob("*.ndjson"))
        except OSError:
            return 0
        if len(files) > 1:
            raise RuntimeError("the run crossed midnight UTC; the file probe reads one file")
        return files[0].stat().st_size if files else 0

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                with contextlib.suppress(OSError):
                    size = self._size()
                    if not self.samples or size != self.samples[-1][1]:
                        self.samples.append((time.time(), size))
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, name="file-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def count(self) -> int:
        files = sorted(self.directory.glob("*.ndjson"))
        total = 0
        for f in files:
            with open(f, "rb") as fh:
                total += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        return total

    def window(self, start: float, end: float) -> dict:
        import bisect

        import msgspec

        class _Line(msgspec.Struct):
            receivedAt: str = ""  # noqa: N815

        decode = msgspec.json.Decoder(_Line).decode
        sizes = [s for _, s in self.samples]
        times = [t for t, _ in self.samples]
        files = sorted(self.directory.glob("*.ndjson"))
        if not files:
            return {"received_in_window": 0}

        def arrivals():
            """(first poll that saw the whole line, its receivedAt) per line."""
            offset = 0
            with open(files[0], "rb") as fh:
                for line in fh:
                    offset += len(line)
                    i = bisect.bisect_left(sizes, offset)
                    if i < len(times):
                        yield times[i], _iso_epoch(decode(line).receivedAt)

        return _window_figures(arrivals(), start, end)


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
