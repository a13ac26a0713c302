"""End-to-end fixtures: `krenalis` processes around a real nats-server and PostgreSQL.

`deployment` gives a working directory (for krenalis.yaml and the data directory) and starts
`krenalis serve|collector|worker` children pointed at the test's nats-server. Every child is
stopped by its PID at the end, even when the test fails, and its log is printed (pytest shows
it for failed tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from e2e_support import KrenalisProcess, process_env
from nats.js import JetStreamContext

from fixtures.nats_servers import settings_for
from krenalis.runtime.nats_server import EmbeddedNats
from krenalis.stream.layout import ensure_streams


class Deployment:
    def __init__(self, root: Path, nats_url: str) -> None:
        self.root = root
        self.nats_url = nats_url
        self.data_dir = root / "data"
        self.processes: list[KrenalisProcess] = []

    @property
    def workspace_path(self) -> Path:
        return self.root / "krenalis.yaml"

    def write_workspace(self, text: str) -> None:
        self.workspace_path.write_text(text)

    def start(self, command: str, name: str | None = None, **env: str) -> KrenalisProcess:
        """Start `krenalis <command>` with KRENALIS_* settings (`env` adds or overrides)."""
        name = name or f"{command}-{len(self.processes)}"
        process = KrenalisProcess(
            command, self.root, process_env(self.data_dir, nats_url=self.nats_url, **env), name
        )
        self.processes.append(process)
        return process.start()

    def stop_all(self) -> None:
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.stop()
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.kill()  # a no-op unless stop() failed


@pytest.fixture
def deployment(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[Deployment]:
    root = tmp_path / "krenalis"
    root.mkdir()
    deployment = Deployment(root, nats_server.url)
    try:
        yield deployment
    finally:
        deployment.stop_all()
        for process in deployment.processes:
            print(f"===== {process.name} (pid {process.proc.pid if process.proc else '-'}) =====")
            print(process.log()[-20_000:])


@pytest.fixture
async def js(nats_server: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    """JetStream on the test's nats-server, with EVENTS and EVENTS_DLQ created (in-process
    worker tests, no `krenalis` child)."""
    nc = await nats.connect(nats_server.url)
    try:
        context = nc.jetstream()
        await ensure_streams(context, settings_for(nats_server.url))
        yield context
    finally:
        await nc.close()
