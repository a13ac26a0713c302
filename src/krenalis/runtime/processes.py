"""Processes and ports: stopping what a killed earlier run left running (SIGKILL cannot stop
children), and picking free loopback ports."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path

__all__ = ["alive", "free_port", "stop_leftover"]

log = logging.getLogger("krenalis")


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stop_leftover(pid_path: Path, marker: bytes) -> None:
    """Stop the process whose PID is in `pid_path` if its command line or environment holds
    `marker` (so a PID reused by an unrelated process is left alone)."""
    try:
        pid = int(pid_path.read_text().strip())
        seen = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
    except (OSError, ValueError):
        return
    if marker not in seen or pid == os.getpid() or not alive(pid):
        return
    log.warning("Stopping a process left running by an earlier run.", extra={"pid": pid})
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on `host` (the kernel picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
