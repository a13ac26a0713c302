"""Child processes of `krenalis serve`: extra collectors and the worker process.

Python runs one core per process, so `serve` runs its pipeline workers in a child `krenalis
worker` process (and KRENALIS_HTTP_WORKERS - 1 extra collectors sharing the port), restarts a
child that dies, and stops them with itself. Each child's PID is written to the data directory,
so a `serve` started after a SIGKILL stops the children its predecessor left behind.

A child gets serve's environment. With serve's embedded NATS it gets no URL and no key: it
reads both from the data directory (`runtime/stream.py`), where only this user can read the
key, rather than from an environment that every process it starts would inherit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
from pathlib import Path

from krenalis.backoff import Backoff
from krenalis.config import CHILD_MARKER
from krenalis.runtime.processes import stop_leftover

__all__ = ["Child"]

log = logging.getLogger("krenalis")


class Child:
    """One `krenalis <command>` child, restarted when it dies unexpectedly."""

    def __init__(self, command: str, env: dict[str, str], pid_path: Path) -> None:
        self.command = command
        self.env = env
        self.pid_path = pid_path
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        stop_leftover(self.pid_path, self._marker())
        self._spawn()
        self.task = asyncio.create_task(self._supervise(), name=f"child-{self.command}")

    def _marker(self) -> bytes:
        return f"{CHILD_MARKER}={self.pid_path}".encode()

    def _spawn(self) -> None:
        # The marker in the environment lets a later run recognise this process as ours.
        argv = [sys.executable, "-m", "krenalis.cli", self.command]
        env = {**self.env, CHILD_MARKER: str(self.pid_path)}
        self.process = subprocess.Popen(argv, env=env)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.write_text(str(self.process.pid))
        log.info("Child process started.", extra={"command": self.command, "pid": self.process.pid})

    async def _supervise(self) -> None:
        backoff = Backoff(base=1.0, cap=30.0)
        while not self.stopping:
            await asyncio.sleep(0.5)
            if self.process is None or self.process.poll() is None or self.stopping:
                continue
            log.error(
                "Child process exited; restarting.",
                extra={"command": self.command, "code": self.process.returncode},
            )
            await backoff.wait()
            if not self.stopping:
                self._spawn()

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    async def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM (a worker finishes its batch and hands the rest back), then SIGKILL."""
        self.stopping = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            await asyncio.to_thread(self.process.wait)
        with contextlib.suppress(OSError):
            self.pid_path.unlink()
