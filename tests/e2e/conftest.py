"""End-to-end fixtures: `krenalis` processes around a real nats-server and PostgreSQL.

`deployment` gives a working directory (for krenalis.yaml and the data directory) and starts
`krenalis serve|collector|worker` children pointed at the test's nats-server. Every child is
stopped by its PID at the end, even when the test fails, and its log is printed (pytest shows
it for failed tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from e2e_support import Deployment
from nats.js import JetStreamContext

from fixtures.nats_servers import settings_for
from krenalis.runtime.nats_server import EmbeddedNats
from krenalis.stream.layout import ensure_streams


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
