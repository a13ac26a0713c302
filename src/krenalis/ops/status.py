"""`krenalis status`: the EVENTS stream and, per pipeline, what waits, what is in flight, what
failed; each source's archive (its size and the time it spans); then every Krenalis process
and the workspace revision it runs. The shape of the snapshot is drawn by
:mod:`krenalis.ops.status_view`.

Pipelines come from the consumers `EVENTS_<pipeline>_<shard>` (shards are summed), joined with
the workspace stored in NATS, so a pipeline without a consumer yet, one being retired, or a
consumer whose pipeline left the workspace, shows up too. Processes answer the NATS service API
(:mod:`krenalis.runtime.service`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.live import Live

from krenalis.config import Settings
from krenalis.errors import CommandError, WorkspaceError
from krenalis.ops._common import connected, dead_letter_counts, nats_urls, storage_of
from krenalis.ops.status_view import render
from krenalis.runtime.service import ProcessInfo, list_processes
from krenalis.stream.archive import ArchiveSpan, archive_spans, stream_counts
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import ARCHIVE_STREAM, STREAM, consumer_name, list_pipeline_consumers
from krenalis.workspace.load import parse_workspace
from krenalis.workspace.model import Workspace
from krenalis.workspace.store import Revision, WorkspaceStore

__all__ = ["collect", "status", "watch"]


def status(settings: Settings, args: argparse.Namespace) -> int:
    if args.watch is not None and args.watch <= 0:
        raise CommandError("--watch needs a number of seconds greater than 0", 2)
    urls = nats_urls(settings)
    try:
        return asyncio.run(_run(settings, urls, args))
    except KeyboardInterrupt:
        return 0 if args.watch else 130  # Ctrl+C is how a watch ends


async def _run(settings: Settings, urls: tuple[str, ...], args: argparse.Namespace) -> int:
    async with connected(settings, urls) as conn:
        if args.watch is not None:
            await watch(conn, settings, args.watch, as_json=args.json)
            return 0
        snapshot = await collect(conn, settings)
    if args.json:
        print(json.dumps(snapshot, indent=2))
    else:
        Console().print(render(snapshot))
    return 0


async def watch(
    conn: NatsConnection,
    settings: Settings,
    interval: float,
    *,
    as_json: bool = False,
    iterations: int | None = None,
    console: Console | None = None,
) -> None:
    """Refresh every `interval` seconds (for ever, or `iterations` times); JSON: one line each."""
    console = console or Console()
    done = 0
    live = None if as_json else Live(console=console, auto_refresh=False)
    with live or contextlib.nullcontext():
        while iterations is None or done < iterations:
            try:
                snapshot: dict[str, Any] = await collect(conn, settings)
            except (nats.errors.Error, TimeoutError) as exc:
                snapshot = {"time": _now(), "error": f"NATS did not answer ({exc}); retrying"}
            if live is None:
                print(json.dumps(snapshot), flush=True)
            else:
                live.update(render(snapshot), refresh=True)
            done += 1
            if iterations is None or done < iterations:
                await asyncio.sleep(interval)


async def collect(conn: NatsConnection, settings: Settings) -> dict[str, Any]:
    """One snapshot of the stream, the pipelines and the processes, JSON-ready."""
    js = conn.js
    revision, workspace, workspace_info = await _workspace(js, settings)
    stream = await _stream(js)
    consumers = await _consumers(js) if stream["exists"] else {}
    dead = await dead_letter_counts(js)
    archives = await archive_spans(js) if stream["exists"] else {}
    processes = await list_processes(conn.nc)
    return {
        "time": _now(),
        "stream": stream,
        "dead_letters": sum(dead.values()),
        "pipelines": _pipelines(workspace, revision, consumers, dead),
        "archives": _archives(workspace, archives),
        "steps": _steps(processes),
        "workspace": workspace_info,
        "processes": [_process(p) for p in processes],
    }


def _process(p: ProcessInfo) -> dict[str, Any]:
    return {
        "role": p.role,
        "host": p.host,
        "pid": p.pid,
        "uptime": round(p.uptime),
        "revision": p.revision,
        "pipelines": list(p.pipelines),
    }


def _steps(processes: list[ProcessInfo]) -> list[dict[str, Any]]:
    """Each transform step's figures, summed over the processes that run it (since each
    started)."""
    summed: dict[tuple[str, str], list[float]] = {}
    for process in processes:
        for pipeline, step, *figures in process.steps:
            total = summed.setdefault((str(pipeline), str(step)), [0, 0, 0, 0, 0.0])
            for i, value in enumerate(figures[:5]):
                total[i] += float(value)
    rows = []
    for (pipeline, step), (events_in, out, dropped, failed, seconds) in sorted(summed.items()):
        rows.append({
            "pipeline": pipeline, "step": step, "in": int(events_in), "out": int(out),
            "dropped": int(dropped), "failed": int(failed),
            "us_per_event": round(seconds / events_in * 1e6, 1) if events_in else None,
        })  # fmt: skip
    return rows


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def _workspace(
    js: JetStreamContext, settings: Settings
) -> tuple[Revision | None, Workspace | None, dict[str, Any]]:
    """The stored workspace (read as written: this process need not have its secrets)."""
    info: dict[str, Any] = {"revision": None, "loaded": False, "error": None}
    revision = await (await WorkspaceStore(js, settings).open()).current()
    if revision is None:
        info["error"] = "no workspace stored in NATS yet (`krenalis workspace apply FILE`)"
        return None, None, info
    info.update(revision=revision.number, applied_at=revision.applied_at, origin=revision.origin)
    info["retiring"] = [
        {"pipeline": r.pipeline, "shards": list(r.shards), "mode": r.mode} for r in revision.retired
    ]
    try:
        workspace = parse_workspace(revision.text, f"revision {revision.number}", unset=set())
    except WorkspaceError as exc:
        info["error"] = str(exc)
        return revision, None, info
    info["loaded"] = True
    return revision, workspace, info


async def _stream(js: JetStreamContext) -> dict[str, Any]:
    """EVENTS with EVENTS_ARCHIVE (the archive made apart for speed is still its copies)."""
    try:
        info = await js.stream_info(STREAM)
        copies, archived = await stream_counts(js)
    except NotFoundError:
        return {"name": STREAM, "exists": False}
    try:
        archive_bytes = (await js.stream_info(ARCHIVE_STREAM)).state.bytes
    except NotFoundError:  # made by an earlier version; serve creates it
        archive_bytes = 0
    return {
        "name": STREAM,
        "exists": True,
        "messages": copies + archived,
        "pipeline_copies": copies,
        "archive_copies": archived,
        "bytes": info.state.bytes + archive_bytes,
        "replicas": info.config.num_replicas,
        "storage": storage_of(info.config),
        "leader": info.cluster.leader if info.cluster else None,
    }


async def _consumers(js: JetStreamContext) -> dict[str, list[ConsumerInfo]]:
    shards = await list_pipeline_consumers(js)
    names = [(p, consumer_name(p, s)) for p, found in shards.items() for s in sorted(found)]
    infos = await asyncio.gather(
        *(js.consumer_info(STREAM, name) for _, name in names), return_exceptions=True
    )
    found: dict[str, list[ConsumerInfo]] = {}
    for (pipeline, _), info in zip(names, infos, strict=True):
        if isinstance(info, NotFoundError):
            continue  # deleted since it was listed
        if isinstance(info, BaseException):
            raise info
        found.setdefault(pipeline, []).append(info)
    return found


def _pipelines(
    workspace: Workspace | None,
    revision: Revision | None,
    consumers: dict[str, list[ConsumerInfo]],
    dead: dict[str, int],
) -> list[dict[str, Any]]:
    declared = list(workspace.pipelines) if workspace else []
    others = sorted((set(consumers) | set(dead)) - set(declared))
    rows = []
    for pipeline_id in declared + others:
        infos = consumers.get(pipeline_id, [])
        declared_pipeline = workspace.pipelines.get(pipeline_id) if workspace else None
        rows.append(
            {
                "pipeline": pipeline_id,
                "source": declared_pipeline.source if declared_pipeline else None,
                "to": declared_pipeline.to if declared_pipeline else None,
                "state": _state(workspace, revision, pipeline_id, declared_pipeline, infos),
                "consumers": len(infos),
                "pending": sum(i.num_pending or 0 for i in infos),
                "in_flight": sum(i.num_ack_pending or 0 for i in infos),
                "redelivered": sum(i.num_redelivered or 0 for i in infos),
                "dead_letters": dead.get(pipeline_id, 0),
                "last_delivery": _latest(i.delivered for i in infos),
                "last_ack": _latest(i.ack_floor for i in infos),
            }
        )
    return rows


def _archives(workspace: Workspace | None, spans: dict[str, ArchiveSpan]) -> list[dict[str, Any]]:
    """Per source (of the workspace, and any other whose archive is still there): its archive's
    retention, copies, approximate bytes and the stream times of its first and last copy."""
    declared = list(workspace.sources.values()) if workspace else []
    rows = []
    for source_id in [s.id for s in declared] + sorted(set(spans) - {s.id for s in declared}):
        span = spans.get(source_id)
        source = workspace.sources.get(source_id) if workspace else None
        rows.append({
            "source": source_id,
            "retention": source.archive if source is not None else None,
            "messages": span.messages if span else 0,
            "approx_bytes": span.approx_bytes if span else 0,
            "first": span.first.isoformat(timespec="seconds") if span and span.first else None,
            "last": span.last.isoformat(timespec="seconds") if span and span.last else None,
        })  # fmt: skip
    return rows


def _state(
    workspace: Workspace | None,
    revision: Revision | None,
    pipeline_id: str,
    pipeline: Any,
    infos: list[ConsumerInfo],
) -> str:
    retiring = revision.retirements_of(pipeline_id) if revision else []
    if retiring:
        return f"retiring ({retiring[0].mode})"
    if workspace is None:
        return "consumer" if infos else "dead letters only"
    if pipeline is None:
        return "not in workspace" if infos else "removed (dead letters only)"
    if not infos:
        return "no consumer yet"
    return "enabled" if pipeline.enabled else "disabled"


def _latest(sequences: Any) -> str | None:
    times = [s.last_active for s in sequences if s is not None and s.last_active is not None]
    return max(times).isoformat(timespec="seconds") if times else None
