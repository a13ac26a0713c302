"""Workers (one PipelineWorker per enabled pipeline shard) in-process, against a real nats-server.

`apply(workspace)` starts, stops and restarts workers as the workspace changes; a worker that
crashes is restarted with a backoff, and stopping it never waits for that backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from e2e_support import WRITE_KEY, file_events, wait_for, wire_event
from nats.js import JetStreamContext

from fixtures.nats_servers import settings_for
from krenalis.events import encode_event
from krenalis.stream.layout import DLQ_STREAM, STREAM, consumer_name, ensure_streams, subject
from krenalis.worker.pool import Workers
from krenalis.workspace.load import parse_workspace
from krenalis.workspace.model import Workspace


def workspace(out: Path, *pipelines: str) -> Workspace:
    text = f"""\
sources:
  web:
    write_key: "{WRITE_KEY}"
destinations:
  archive:
    type: file
    path: "{out}"
pipelines:
"""
    for name in pipelines:
        text += f"  {name}:\n    source: web\n    to: archive\n    batch: {{max_wait: 100ms}}\n"
    return parse_workspace(text)


async def publish(js: JetStreamContext, pipeline: str, *message_ids: str) -> None:
    for message_id in message_ids:
        await js.publish(subject(pipeline), encode_event(wire_event(message_id)))


async def consumers(js: JetStreamContext) -> set[str]:
    return {c.name for c in await js.consumers_info(STREAM)}


async def test_apply_starts_stops_and_keeps_workers(js, tmp_path):
    out = tmp_path / "out"
    workers = Workers(js, ack_wait=30.0, warehouse_dsn=None)
    try:
        await workers.apply(workspace(out, "p1"))
        assert set(workers.running) == {("p1", 0)}
        first = workers.running[("p1", 0)]
        await publish(js, "p1", "e1", "e2")
        await wait_for(lambda: len(file_events(out)) == 2, what="p1's events")

        await workers.apply(workspace(out, "p1", "p2"))
        assert set(workers.running) == {("p1", 0), ("p2", 0)}
        assert workers.running[("p1", 0)] is first  # unchanged pipelines keep their worker
        await publish(js, "p2", "e3")
        await wait_for(lambda: len(file_events(out)) == 3, what="p2's event")

        await workers.apply(workspace(out, "p2"))
        assert set(workers.running) == {("p2", 0)}
        assert first.task.done()
    finally:
        await workers.stop_all()
    assert workers.running == {}
    assert sorted(e["messageId"] for e in file_events(out)) == ["e1", "e2", "e3"]


async def test_a_crash_looping_worker_stops_at_once_and_stays_stopped(js, tmp_path, caplog):
    """A worker that keeps crashing is restarted with a growing backoff; stopping it (pipeline
    removed, process shutting down) must not wait for that backoff, nor start it once more."""
    caplog.set_level(logging.ERROR, logger="krenalis.worker")
    out = tmp_path / "out"
    workers = Workers(js, ack_wait=30.0, warehouse_dsn=None)
    # Undecodable data must be dead-lettered, but the dead-letter stream is gone: each attempt
    # fails, the worker crashes, is restarted, gets the message again, and crashes again.
    await js.delete_stream(DLQ_STREAM)
    await js.publish(subject("p1"), b"not an event")
    try:
        await workers.apply(workspace(out, "p1"))
        await wait_for(
            lambda: sum("Worker crashed" in r.getMessage() for r in caplog.records) >= 2,
            timeout=20,
            what="two crashes",
        )
        # As `krenalis serve` does when a pipeline is removed: delete its consumer, then stop it.
        await js.delete_consumer(STREAM, consumer_name("p1"))
        started = time.monotonic()
        await workers.apply(workspace(out))
        # The restart backoff is 2-3 s by now; stopping must not wait for it.
        assert time.monotonic() - started < 1.5, "stopping waited for the restart backoff"
        await asyncio.sleep(1.5)
        assert await consumers(js) == set(), "the stopped worker came back"
    finally:
        await workers.stop_all()


async def test_a_crashed_worker_recovers_once_the_cause_is_gone(js, nats_server, tmp_path, caplog):
    """The crash comes from the fetch side (the dead-letter stream is missing when undecodable
    data arrives); once the stream is back, the restarted worker must work normally."""
    caplog.set_level(logging.ERROR, logger="krenalis.worker")
    out = tmp_path / "out"
    workers = Workers(js, ack_wait=30.0, warehouse_dsn=None)
    await js.delete_stream(DLQ_STREAM)
    await js.publish(subject("p1"), b"not an event")
    await publish(js, "p1", "after")
    try:
        await workers.apply(workspace(out, "p1"))
        await wait_for(lambda: "Worker crashed" in caplog.text, timeout=20, what="a crash")
        await ensure_streams(js, settings_for(nats_server.url))  # EVENTS_DLQ is back
        await wait_for(lambda: len(file_events(out)) == 1, timeout=20, what="the valid event")
        assert (await js.stream_info(DLQ_STREAM)).state.messages == 1
    finally:
        await workers.stop_all()


async def test_a_worker_whose_consumer_was_deleted_does_not_recreate_it(js, tmp_path):
    """Another process removed the pipeline (deleted its consumer) before this one reloaded:
    the worker waits for its stop, it never brings the consumer back."""
    workers = Workers(js, ack_wait=30.0, warehouse_dsn=None)
    await workers.apply(workspace(tmp_path / "out", "gone"))
    await wait_for(lambda: consumers_are(js, {consumer_name("gone")}), what="the consumer")
    await js.delete_consumer(STREAM, consumer_name("gone"))
    await asyncio.sleep(3.0)  # the worker fetches on meanwhile
    assert await consumers(js) == set()
    started = time.monotonic()
    await workers.apply(workspace(tmp_path / "out"))  # the reload that removes it
    assert time.monotonic() - started < 5
    assert await consumers(js) == set()


async def consumers_are(js: JetStreamContext, expected: set[str]) -> bool:
    return await consumers(js) == expected


async def test_workers_that_do_not_manage_the_layout_never_create_consumers(js, tmp_path, caplog):
    """`serve`'s worker process: serve creates consumers; a worker starting after the pipeline
    was removed waits (and says so) instead of bringing its consumer back."""
    workers = Workers(js, ack_wait=30.0, warehouse_dsn=None, create_consumers=False)
    with caplog.at_level(logging.WARNING, logger="krenalis.worker"):
        await workers.apply(workspace(tmp_path / "out", "removed"))
        await wait_for(lambda: "consumer is gone" in caplog.text, what="the warning", timeout=10)
    assert await consumers(js) == set()
    await workers.apply(workspace(tmp_path / "out"))
    assert workers.running == {}
