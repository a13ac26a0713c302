"""Fault injection under steady load: the processes, the exact checks and the figures.

A test starts real `krenalis` processes (see `Stack`), runs a `LoadGenerator` (an SDK-like
client: batches of 20 events at a steady rate, every failed request retried with the same
messageIds until it gets a 200), injects a fault between `FaultClock.begin()` and `.end()`,
then checks with `verify()` that every acknowledged event is in the warehouse exactly once and
at every other destination at least once, and `record()`s the figures: one line printed and
appended to bench/out/faults.jsonl.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from faults_load import LoadGenerator
from faults_sinks import Probe, dead_letter_reasons, stream_counts

from e2e.e2e_support import WRITE_KEY, KrenalisProcess, process_env

__all__ = [
    "FaultClock",
    "Stack",
    "WRITE_KEY",
    "Watcher",
    "descendants",
    "exercise",
    "leftover_pids",
    "record",
    "sigkill",
    "verify",
    "workspace",
]

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "out" / "faults.jsonl"


# -- the workspace -------------------------------------------------------------------------------


def workspace(
    *,
    dsn: str | None = None,
    hook_url: str | None = None,
    hook_timeout: str = "2s",
    file_dir: Path | None = None,
    batch: str = "{max_events: 500, max_wait: 200ms}",
) -> str:
    """A workspace with one source and a pipeline per given destination (warehouse always)."""
    lines = []
    if dsn is not None:
        lines += ["warehouse:", f'  dsn: "{dsn}"']
    lines += ["sources:", "  web:", f'    write_key: "{WRITE_KEY}"', "destinations:"]
    if hook_url is not None:
        lines += [
            "  hook:",
            "    type: webhook",
            f'    url: "{hook_url}"',
            f"    timeout: {hook_timeout}",
        ]
    if file_dir is not None:
        lines += ["  archive:", "    type: file", f'    path: "{file_dir}"']
    if lines[-1] == "destinations:":
        lines.pop()
    lines += ["pipelines:", "  web-warehouse:", "    source: web", "    to: warehouse"]
    lines.append(f"    batch: {batch}")
    for pipeline, to in (("web-hook", "hook"), ("web-file", "archive")):
        if (to == "hook" and hook_url is not None) or (to == "archive" and file_dir is not None):
            lines += [f"  {pipeline}:", "    source: web", f"    to: {to}", f"    batch: {batch}"]
    return "\n".join(lines) + "\n"


# -- processes -----------------------------------------------------------------------------------


class Stack:
    """`krenalis` processes of one test, in `root`; `close()` stops every one by its PID.

    `close()` also SIGKILLs, by PID, any process still running whose command line names this
    test's directory (a nats-server or PostgreSQL orphaned by a SIGKILLed `krenalis serve`).
    """

    def __init__(self, root: Path, nats_url: str = "") -> None:
        self.root = root
        self.nats_url = nats_url
        self.data_dir = root / "data"
        self.processes: list[KrenalisProcess] = []
        root.mkdir(parents=True, exist_ok=True)

    @property
    def workspace_path(self) -> Path:
        return self.root / "krenalis.yaml"

    def write_workspace(self, text: str) -> None:
        self.workspace_path.write_text(text)

    def env(self, **extra: str) -> dict[str, str]:
        env = process_env(self.data_dir, nats_url=self.nats_url, **extra)
        env["KRENALIS_WORKSPACE"] = str(self.workspace_path)
        return env

    def start(self, command: str, name: str, env: dict[str, str]) -> KrenalisProcess:
        process = KrenalisProcess(command, self.root, env, name)
        self.processes.append(process)
        return process.start()

    def restart(self, process: KrenalisProcess, name: str) -> KrenalisProcess:
        """The same command and settings (same HTTP port) in a new process."""
        return self.start(process.command, name, process.env)

    def close(self) -> None:
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.stop(timeout=20)
            with contextlib.suppress(Exception):
                process.kill()
        for pid in leftover_pids(self.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def logs(self) -> str:
        parts = []
        for p in self.processes:
            pid = p.proc.pid if p.proc else "-"
            parts.append(f"===== {p.name} (pid {pid}) =====\n{p.log()[-15_000:]}")
        return "\n".join(parts)


def leftover_pids(root: Path) -> list[int]:
    """PIDs of running processes whose command line mentions `root` (ours only)."""
    needle = str(root)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and any(needle in arg for arg in proc.info["cmdline"] or ()):
                found.append(proc.pid)
    return found


def descendants(pid: int) -> list[int]:
    with contextlib.suppress(psutil.Error):
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    return []


def sigkill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- the fault and its figures -------------------------------------------------------------------


@dataclass
class FaultClock:
    """When the fault began and ended (time.monotonic()), and what the test measured."""

    name: str
    begin_at: float = 0.0
    end_at: float = 0.0
    recovery_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def begin(self) -> None:
        self.begin_at = time.monotonic()

    def end(self) -> None:
        self.end_at = time.monotonic()


class Watcher:
    """Polls every destination (every `interval` s) and notes when each messageId first
    showed up there: the delivery lags and the recovery time come from these moments."""

    def __init__(self, probes: list[Probe], interval: float = 0.25) -> None:
        self.probes = probes
        self.interval = interval
        self.first_seen: dict[str, dict[str, float]] = {p.name: {} for p in probes}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watcher:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.interval)

    async def poll(self) -> None:
        for probe in self.probes:
            ids = await probe.delivered()
            if ids is None:
                continue  # the destination cannot be read right now
            now = time.monotonic()
            seen = self.first_seen[probe.name]
            for message_id in set(ids).difference(seen):
                seen[message_id] = now

    def missing(self, ids: set[str]) -> dict[str, int]:
        return {name: len(ids.difference(seen)) for name, seen in self.first_seen.items()}

    async def wait_for(self, ids: set[str], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while any(self.missing(ids).values()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still missing after {timeout}s: {self.missing(ids)}")
            await asyncio.sleep(self.interval)

    def delivered_at(self, name: str, ids: set[str]) -> float:
        """When the last of `ids` reached destination `name`."""
        seen = self.first_seen[name]
        return max((seen[i] for i in ids), default=0.0)

    def max_lag(self, name: str, load: LoadGenerator) -> float:
        """The longest time from an event's 200 to its arrival at destination `name`."""
        seen = self.first_seen[name]
        return max(
            (
                seen[i] - b.accepted_at
                for b in load.batches
                if b.accepted_at
                for i in b.ids
                if i in seen
            ),
            default=0.0,
        )


async def backlog_delivered(
    load: LoadGenerator, watcher: Watcher, clock: FaultClock, timeout: float = 120.0
) -> float:
    """Seconds from the fault's end until every event of the batches made before it (the
    backlog) was at every destination."""
    backlog = load.ids_created_before(clock.end_at)
    await watcher.wait_for(backlog, timeout, "the backlog of the fault")
    by_sink = {
        n: round(max(0.0, watcher.delivered_at(n, backlog) - clock.end_at), 2)
        for n in watcher.first_seen
    }
    clock.recovery_s = max(by_sink.values())
    clock.extra["recovery_by_sink_s"] = by_sink
    accepted = [b.accepted_at or 0.0 for b in load.batches if b.created <= clock.end_at]
    clock.extra["backlog_accepted_s"] = round(max(0.0, max(accepted) - clock.end_at), 2)
    return clock.recovery_s


async def verify(
    load: LoadGenerator,
    watcher: Watcher,
    nats_url: str | Callable[[], str],
    *,
    also: set[str] = frozenset(),
    clock: FaultClock | None = None,
    timeout: float = 90.0,
    nats_options: dict[str, Any] | None = None,
) -> dict[str, int]:
    """The exact checks, after `load.stop()`: every accepted event (the load's, plus `also`)
    at every destination (the warehouse exactly once), nothing else there, EVENTS empty, no
    dead letter. Returns the duplicates seen per destination; notes in `clock` when EVENTS
    was empty (acks lost with a connection or a leader bring messages back after AckWait)."""
    assert not load.unexpected, load.unexpected[:5]
    assert load.accepted == load.sent, f"{len(load.sent - load.accepted)} events never got a 200"
    expected = load.accepted | also
    url = nats_url() if callable(nats_url) else nats_url
    options = nats_options or {}
    try:
        await watcher.wait_for(expected, timeout, "accepted events")
    except AssertionError as exc:
        letters = await dead_letter_reasons(url, **options)
        raise AssertionError(f"{exc}; dead letters (messageId, reason): {letters[:5]}") from None
    letters = await dead_letter_reasons(url, **options)
    assert not letters, f"{len(letters)} accepted events were dead-lettered: {letters[:5]}"
    # Delivered is not yet acked: an ack lost with a connection comes back after AckWait.
    deadline = time.monotonic() + 60
    while (counts := await stream_counts(url, **options))[0] and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    assert counts == (0, 0), f"EVENTS holds {counts[0]} messages, EVENTS_DLQ {counts[1]}"
    if clock is not None:
        clock.extra["stream_empty_s"] = round(time.monotonic() - clock.end_at, 1)
    duplicates = {}
    for probe in watcher.probes:
        ids = await probe.delivered()
        assert ids is not None, f"cannot read {probe.name}"
        extra = set(ids) - expected
        assert not extra, f"{probe.name} holds {len(extra)} events that were never accepted"
        assert set(ids) == expected
        duplicates[probe.name] = len(ids) - len(expected)
        if probe.exactly_once:
            assert duplicates[probe.name] == 0, f"{probe.name} holds duplicates"
    return duplicates


def record(
    clock: FaultClock, load: LoadGenerator, watcher: Watcher, duplicates: dict[str, int]
) -> dict[str, Any]:
    """Print the one-line summary and append it to bench/out/faults.jsonl."""
    p50, p99 = load.baseline(clock.begin_at)
    window_end = clock.end_at + (clock.recovery_s or 0.0)
    line = {
        "fault": clock.name,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "events_accepted": len(load.accepted),
        "rate_events_s": load.rate,
        "fault_s": round(clock.end_at - clock.begin_at, 2),
        "baseline_p50_s": round(p50, 4),
        "baseline_p99_s": round(p99, 4),
        "max_latency_s": round(load.max_latency(clock.begin_at, clock.end_at), 3),
        "max_accept_delay_s": round(load.max_accept_delay(clock.begin_at, clock.end_at), 3),
        "ingest_gap_s": round(load.longest_gap(clock.begin_at - 0.5, window_end), 3),
        "failed_requests": load.failures(),
        "recovery_s": None if clock.recovery_s is None else round(clock.recovery_s, 2),
        "max_delivery_lag_s": {n: round(watcher.max_lag(n, load), 2) for n in watcher.first_seen},
        "duplicates": duplicates,
        **clock.extra,
    }
    print(
        f"FAULT {clock.name}: accepted={line['events_accepted']} fault={line['fault_s']}s "
        f"max_latency={line['max_latency_s']}s ingest_gap={line['ingest_gap_s']}s "
        f"recovery={line['recovery_s']}s lag={line['max_delivery_lag_s']} "
        f"failed={line['failed_requests']} duplicates={duplicates}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as out:
        out.write(json.dumps(line) + "\n")
    return line


async def run_fault(
    load: LoadGenerator,
    watcher: Watcher,
    clock: FaultClock,
    inject: Callable[[LoadGenerator], Awaitable[None]],
    *,
    warmup: float = 2.0,
    after: float = 1.0,
) -> None:
    """Warm up, run `inject` (it calls clock.begin() and clock.end()), keep the load going
    for at least `after` s and until the backlog is delivered, then stop the load."""
    await asyncio.sleep(warmup)
    await inject(load)
    recovery = asyncio.create_task(backlog_delivered(load, watcher, clock))
    await asyncio.sleep(after)
    await recovery
    await load.stop()


async def exercise(
    base_url: str,
    probes: list[Probe],
    clock: FaultClock,
    inject: Callable[[LoadGenerator], Awaitable[None]],
    nats_url: str | Callable[[], str],
    *,
    warmup: float = 2.0,
    after: float = 1.0,
    rate: float = 250.0,
    nats_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole run: load, fault, recovery, exact checks, figures. `nats_options` go to
    nats.connect (the embedded server's key: nkeys_seed=<its file>)."""
    async with LoadGenerator(base_url, rate=rate) as load, Watcher(probes) as watcher:
        await run_fault(load, watcher, clock, inject, warmup=warmup, after=after)
        duplicates = await verify(load, watcher, nats_url, clock=clock, nats_options=nats_options)
    return record(clock, load, watcher, duplicates)
