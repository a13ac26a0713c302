"""The collector under test: a real nats-server, the EVENTS stream, and uvicorn on a loopback port.

`collector` yields a `CollectorHarness` (helpers_collector.py): the base URL, the write key, and
helpers that read back what the collector stored, through pull subscriptions bound to the
pipelines' durable consumers. Everything started here is stopped at the end, even when the test
fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from helpers_collector import WORKSPACE_YAML, CollectorHarness

from krenalis.collector.app import Collector
from krenalis.collector.server import HTTPServer, listening_socket
from krenalis.config import Settings
from krenalis.runtime.nats_server import EmbeddedNats
from krenalis.runtime.processes import free_port
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import ensure_consumer, ensure_streams
from krenalis.workspace.load import parse_workspace


@pytest.fixture
async def collector(
    nats_server: EmbeddedNats, nats_settings: Settings
) -> AsyncIterator[CollectorHarness]:
    workspace = parse_workspace(WORKSPACE_YAML, "collector-test.yaml", environ={})
    conn = NatsConnection(nats_settings, name="collector-test")
    http: HTTPServer | None = None
    harness: CollectorHarness | None = None
    try:
        await conn.connect(timeout=10)
        await ensure_streams(conn.js, nats_settings)
        conn.set_stream_ready()
        for pipeline in workspace.enabled_pipelines():
            for shard in range(pipeline.shards):
                await ensure_consumer(conn.js, pipeline.id, shard, nats_settings.nats_ack_wait)
        app = Collector(conn, workspace)
        sock = listening_socket("127.0.0.1", free_port())
        host, port = sock.getsockname()[:2]
        http = HTTPServer(app, sock)
        try:
            await http.start()
        except BaseException:
            sock.close()
            http = None
            raise
        harness = CollectorHarness(f"http://{host}:{port}", nats_server, conn, workspace, app, http)
        yield harness
    finally:
        if http is not None:
            await asyncio.wait_for(http.stop(), 35)
            http.sock.close()
        if harness is not None:
            await harness.unsubscribe()
        try:
            await asyncio.wait_for(conn.close(), 10)
        except Exception:  # the server is gone: closing is all that is left
            with contextlib.suppress(Exception):
                await conn.nc.close()
