"""Processes of a benchmark: started here, stopped here by PID, and watched with psutil.

Every process is started in its own session (a terminal's Ctrl+C reaches only the harness,
which then stops them in order) and registered; `stop_all()` runs in `finally` and stops each
registered process by its PID: SIGTERM, a grace period, then SIGKILL of the process and of the
descendants recorded while it ran. Embedded PostgreSQL daemonizes (its postmaster is not our
child), so it is found through its data directory's postmaster.pid.

`Monitor` samples, every `interval` seconds, the RSS of each watched group of processes (peak of
the group's sum) and takes CPU-time snapshots at the edges of the measured window, giving the
average cores each process used.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = ["Monitor", "Proc", "pg_processes", "start", "stop_all", "wait_http"]

PY = sys.executable
_registry: list[Proc] = []


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path | None = None
    stop_timeout: float = 40.0
    seen: set[int] = field(default_factory=set)  # descendants observed while running

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def remember_children(self) -> None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                self.seen.add(child.pid)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop by PID: `sig`, wait, then SIGKILL it and its recorded descendants."""
        self.remember_children()
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                self.popen.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        for pid in self.seen:  # children must not outlive a stopped (or killed) parent
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    os.kill(pid, signal.SIGKILL)
        if self in _registry:
            _registry.remove(self)
        return self.popen.returncode

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(
    name: str,
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    log_path: Path | None = None,
    stop_timeout: float = 40.0,
) -> Proc:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        popen = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
    proc = Proc(name, popen, log_path, stop_timeout)
    _registry.append(proc)
    return proc


def freeze_and_kill(pids: set[int]) -> None:
    """Kill processes that may be spawning more: SIGSTOP them and their descendants until no
    new process appears, then SIGKILL them all (for a runaway tree)."""
    frozen: set[int] = set()
    todo = set(pids)
    for _ in range(50):
        new = todo - frozen
        if not new:
            break
        for pid in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
            frozen.add(pid)
        todo = set(frozen)
        for pid in frozen:
            with contextlib.suppress(psutil.Error):
                todo.update(c.pid for c in psutil.Process(pid).children(recursive=True))
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def stop_all() -> None:
    """Stop every registered process, newest first."""
    for proc in reversed(list(_registry)):
        with contextlib.suppress(Exception):
            proc.stop()


def stop_pg_data_dir(data_dir: Path) -> None:
    """Stop a (daemonized) PostgreSQL of `data_dir` left running, by its postmaster.pid."""
    for proc in pg_processes(data_dir):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if proc.ppid() == 1 or "-D" in proc.cmdline():
                os.kill(proc.pid, signal.SIGINT)  # fast shutdown
    deadline = time.monotonic() + 15
    while pg_processes(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    for proc in pg_processes(data_dir):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


def pg_processes(data_dir: Path) -> list[psutil.Process]:
    """The postmaster of `data_dir` and its children (backends, walwriter, ...)."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        master = psutil.Process(pid)
        if master.name() != "postgres":
            return []
        return [master, *master.children(recursive=True)]
    except (OSError, ValueError, psutil.Error):
        return []


def wait_http(url: str, timeout: float, proc: Proc | None = None) -> None:
    """Wait for a 200 from GET url; fail early if `proc` exits."""
    import urllib.request

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and not proc.running():
            raise RuntimeError(
                f"{proc.name} exited (code {proc.popen.returncode}):\n{proc.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # not up yet
            last = str(exc)
        time.sleep(0.2)
    tail = proc.log_tail() if proc else ""
    raise TimeoutError(f"{url} not ready within {timeout:g}s ({last})\n{tail}")


@dataclass
class _Group:
    name: str
    find: Callable[[], list[psutil.Process]]
    peak_rss: int = 0


class Monitor:
    """Peak RSS per group (sampled) and average cores per process over a window."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.groups: list[_Group] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._procs: dict[int, tuple[str, psutil.Process]] = {}
        self._labels: dict[int, str] = {}
        self._cpu0: dict[int, float] = {}
        self._cpu1: dict[int, float] = {}
        self._t0 = self._t1 = 0.0
        self._sys0: psutil._common.scputimes | None = None
        self._sys1: psutil._common.scputimes | None = None
        self._all0: dict[int, tuple[str, bool, float]] = {}
        self._all1: dict[int, tuple[str, bool, float]] = {}
        self.guard: Callable[[], None] | None = None
        self.guard_error: str = ""

    def watch(self, name: str, find: Callable[[], list[psutil.Process]]) -> None:
        self.groups.append(_Group(name, find))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="bench-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            if self.guard is not None:
                try:
                    self.guard()
                except Exception as exc:  # the guard killed something: record why
                    self.guard_error = str(exc)
            self._stop.wait(self.interval)

    def sample(self) -> None:
        for group in self.groups:
            total = 0
            for proc in _safe(group.find):
                with contextlib.suppress(psutil.Error):
                    if group.name == "postgres":  # shared buffers: count each page once
                        total += proc.memory_full_info().pss
                    else:
                        total += proc.memory_info().rss
                    if proc.pid not in self._procs:
                        self._procs[proc.pid] = (group.name, proc)
                        self._labels[proc.pid] = _label(proc)
            group.peak_rss = max(group.peak_rss, total)

    def _cpu_snapshot(self) -> dict[int, float]:
        self.sample()
        snap = {}
        for pid, (_, proc) in list(self._procs.items()):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                snap[pid] = t.user + t.system
        return snap

    def window_start(self) -> None:
        self._cpu0 = self._cpu_snapshot()
        self._all0 = all_cpu()
        self._sys0 = psutil.cpu_times()
        self._t0 = time.monotonic()

    def window_end(self) -> None:
        self._cpu1 = self._cpu_snapshot()
        self._all1 = all_cpu()
        self._sys1 = psutil.cpu_times()
        self._t1 = time.monotonic()

    def others(self) -> dict:
        """CPU of processes the harness did not start, during the window: other users'
        processes (interference) and kernel threads (partly ours: fsync, loopback)."""
        wall = max(1e-6, self._t1 - self._t0)
        ours = set(self._cpu1) | {os.getpid()}
        users: dict[str, float] = {}
        kernel = 0.0
        for pid, (label, kthread, t1) in self._all1.items():
            if pid in ours or pid not in self._all0:
                continue
            used = (t1 - self._all0[pid][2]) / wall
            if kthread:
                kernel += used
            elif used > 0:
                users[label] = users.get(label, 0.0) + used
        harness = 0.0
        if os.getpid() in self._all1 and os.getpid() in self._all0:
            harness = (self._all1[os.getpid()][2] - self._all0[os.getpid()][2]) / wall
        top = sorted(users.items(), key=lambda kv: -kv[1])[:3]
        return {
            "other_processes": sum(users.values()),
            "top": [(k, round(v, 2)) for k, v in top if v >= 0.02],
            "kernel_threads": kernel,
            "harness": harness,
        }

    def cpu_report(self) -> list[dict]:
        """[{group, pid, name, cores}] for processes seen in the window, busiest first."""
        wall = max(1e-6, self._t1 - self._t0)
        rows = []
        for pid, (group, _proc) in self._procs.items():
            if pid not in self._cpu1:
                continue
            used = self._cpu1[pid] - self._cpu0.get(pid, 0.0)
            label = self._labels.get(pid, "?")
            rows.append({"group": group, "pid": pid, "name": label, "cores": used / wall})
        rows.sort(key=lambda r: -r["cores"])
        return rows

    def system_cores(self) -> tuple[float, float]:
        """(cores busy machine-wide, cores busy in processes we do not watch)."""
        if self._sys0 is None or self._sys1 is None:
            return 0.0, 0.0
        wall = max(1e-6, self._t1 - self._t0)
        total = (_busy(self._sys1) - _busy(self._sys0)) / wall
        ours = sum(r["cores"] for r in self.cpu_report())
        return total, max(0.0, total - ours)

    def steal(self) -> float:
        """Cores the hypervisor gave to other guests during the window (steal time)."""
        if self._sys0 is None or self._sys1 is None:
            return 0.0
        wall = max(1e-6, self._t1 - self._t0)
        return (getattr(self._sys1, "steal", 0.0) - getattr(self._sys0, "steal", 0.0)) / wall

    def peaks(self) -> dict[str, int]:
        return {g.name: g.peak_rss for g in self.groups}


def _busy(t) -> float:
    """CPU seconds spent working: user (guest time is inside it), nice, system, irq, softirq."""
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def all_cpu() -> dict[int, tuple[str, bool, float]]:
    """pid -> (short label, is a kernel thread, CPU seconds) for every process."""
    out = {}
    for proc in psutil.process_iter(["name", "ppid", "cpu_times", "cmdline"]):
        info = proc.info
        times = info.get("cpu_times")
        if times is None:
            continue
        kthread = info.get("ppid") == 2 or proc.pid == 2
        cmd = info.get("cmdline") or []
        label = " ".join(os.path.basename(c) for c in cmd[:3])[:50] or (info.get("name") or "?")
        out[proc.pid] = (label, kthread, times.user + times.system)
    return out


def background_load(seconds: float = 1.0, exclude: set[int] | None = None) -> float:
    """Cores used by other users' processes (not kernel threads, not `exclude`)."""
    a = all_cpu()
    time.sleep(seconds)
    b = all_cpu()
    skip = (exclude or set()) | {os.getpid()}
    total = 0.0
    for pid, (_, kthread, t1) in b.items():
        if kthread or pid in skip or pid not in a:
            continue
        total += (t1 - a[pid][2]) / seconds
    return total


def _label(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    name = proc.name()
    if name == "postgres":
        text = " ".join(cmd)
        if not text.startswith("postgres:"):
            return "postgres: postmaster"
        role = text.split()[1] if len(text.split()) > 1 else "?"
        return "postgres: backend" if "(" in text or role == "postgres" else f"postgres: {role}"
    if name == "nats-server":
        return "nats-server"
    text = " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(cmd))
    for marker in ("krenalis.cli ", "krenalis ", "bench."):
        if marker in text:
            text = text[text.index(marker) :]
            break
    if text.startswith("bench."):
        text = text.split()[0]  # no arguments (the loadgen's carry the write key)
    return text[:60]


def _safe(find: Callable[[], list[psutil.Process]]) -> list[psutil.Process]:
    try:
        return find()
    except (psutil.Error, OSError):
        return []


def tree(pid: int) -> list[psutil.Process]:
    """A process and its descendants (empty once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
