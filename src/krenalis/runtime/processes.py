"""Processes and ports: what a killed earlier run left running (SIGKILL cannot stop children),
and loopback ports for the embedded servers."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path

import psutil

__all__ = ["alive", "free_port", "port_is_free", "running", "stop_leftover"]

log = logging.getLogger("krenalis")


def running(pid: int) -> psutil.Process | None:
    """The process `pid` if it runs (a zombie waiting to be reaped does not), else None."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.Error:
        return None


def alive(pid: int) -> bool:
    return running(pid) is not None


def stop_leftover(pid_path: Path, marker: bytes) -> None:
    """Stop the process whose PID is in `pid_path` if its command line or environment holds
    `marker` (so a PID reused by an unrelated process is left alone)."""
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return
    proc = running(pid)
    if proc is None or pid == os.getpid() or not _holds(proc, marker.decode()):
        return
    log.warning("Stopping a process left running by an earlier run.", extra={"pid": pid})
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def _holds(proc: psutil.Process, marker: str) -> bool:
    try:
        environ = proc.environ()
        seen = proc.cmdline() + [f"{name}={value}" for name, value in environ.items()]
    except psutil.Error:
        return False
    return any(marker in part for part in seen)


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on `host` (the kernel picks it)."""
    with socket.socket(_family(host)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """Whether a server can listen on `port` again. As nats-server and PostgreSQL bind, the
    last run's connections in TIME_WAIT do not hold the port."""
    with socket.socket(_family(host)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
