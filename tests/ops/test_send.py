"""`krenalis send` against a real collector (uvicorn on a loopback port) and a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fixtures.cli import run_cli as _main
from krenalis.collector.app import Collector
from krenalis.collector.server import HTTPServer, listening_socket
from krenalis.config import Settings
from krenalis.events import EVENT_TYPES
from krenalis.ops.send import sample_events
from krenalis.runtime.processes import free_port
from krenalis.stream.archive import stream_counts
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import STREAM, consumer_name, ensure_consumer, ensure_streams
from krenalis.workspace.load import parse_workspace

KEY = "s" * 32
WORKSPACE = f"""\
sources:
  web:
    write_key: "{KEY}"
pipelines:
  web-wh:
    source: web
    to: warehouse
"""


@pytest.fixture
async def collector(nats_settings: Settings) -> AsyncIterator[tuple[str, NatsConnection]]:
    """The collector on a free loopback port, storing into EVENTS; yields (url, connection)."""
    workspace = parse_workspace(WORKSPACE, "send-test.yaml", environ={})
    conn = NatsConnection(nats_settings, name="send-test")
    await conn.connect(timeout=10)
    http: HTTPServer | None = None
    try:
        await ensure_streams(conn.js, nats_settings)
        await ensure_consumer(conn.js, "web-wh", 0, 30.0)
        conn.set_stream_ready()
        sock = listening_socket("127.0.0.1", free_port())
        http = HTTPServer(Collector(conn, workspace), sock)
        await http.start()
        host, port = sock.getsockname()[:2]
        yield f"http://{host}:{port}", conn
    finally:
        if http is not None:
            await asyncio.wait_for(http.stop(), 35)
            http.sock.close()
        with contextlib.suppress(Exception):
            await conn.close()


async def _send(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(_main, ["send", *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def _stored_types(conn: NatsConnection) -> list[str]:
    sub = await conn.js.pull_subscribe_bind(consumer_name("web-wh"), stream=STREAM)
    try:
        msgs = await sub.fetch(100, timeout=1)
        return sorted(json.loads(m.data)["type"] for m in msgs)
    finally:
        await sub.unsubscribe()


async def test_send_delivers_one_event_of_each_type(
    collector: tuple[str, NatsConnection], capsys: pytest.CaptureFixture[str]
) -> None:
    url, conn = collector
    code, out, err = await _send(capsys, "--url", url, "--write-key", KEY)
    assert code == 0, err
    assert "Accepted 6 of 6 events" in out and "stored 6 copies" in out
    for event_type in EVENT_TYPES:
        assert event_type in out
    assert KEY not in out + err
    assert "HTTP Request" not in err  # library log lines stay out of the command's output
    assert await _stored_types(conn) == sorted(EVENT_TYPES)


async def test_send_takes_the_key_of_the_workspace_file(
    collector: tuple[str, NatsConnection], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, conn = collector
    (tmp_path / "krenalis.yaml").write_text(WORKSPACE)
    code, out, err = await _send(capsys, "--url", url, "--count", "3")
    assert code == 0, err
    assert "source 'web'" in err and "Accepted 18 of 18 events" in out
    assert await stream_counts(conn.js) == (18, 18)  # pipeline copies, archive copies


async def test_send_explains_failures(
    collector: tuple[str, NatsConnection], capsys: pytest.CaptureFixture[str]
) -> None:
    url, conn = collector
    code, out, err = await _send(capsys, "--url", url, "--write-key", "x" * 32)
    assert code == 1 and "refused the write key" in err and not out
    code, _, err = await _send(
        capsys, "--url", f"http://127.0.0.1:{free_port()}", "--write-key", KEY
    )
    assert code == 1 and "cannot reach the collector" in err and "Traceback" not in err
    code, _, err = await _send(capsys, "--url", url)  # no key, and no workspace file
    assert code == 2 and "--write-key" in err
    assert await stream_counts(conn.js) == (0, 0)


def test_sample_events_are_unique_and_cover_every_type() -> None:
    events = sample_events(2)
    assert [e["type"] for e in events] == list(EVENT_TYPES) * 2
    assert len({e["messageId"] for e in events}) == 12
