"""`krenalis status`: the EVENTS stream and, per pipeline, what waits, what is in flight, what
failed; then every Krenalis process and the workspace revision it runs.

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
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from krenalis.config import Settings
from krenalis.errors import CommandError, WorkspaceError
from krenalis.ops._common import (
    connected,
    dead_letter_counts,
    human_bytes,
    nats_urls,
    storage_of,
)
from krenalis.runtime.service import ProcessInfo, list_processes
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import STREAM, consumer_name, list_pipeline_consumers
from krenalis.workspace.load import parse_workspace
from krenalis.workspace.model import Workspace
from krenalis.workspace.store import Revision, WorkspaceStore

__all__ = ["collect", "status", "watch"]

_COUNTS = ("pending", "in_flight", "redelivered", "dead_letters")


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
    processes = await list_processes(conn.nc)
    return {
        "time": _now(),
        "stream": stream,
        "dead_letters": sum(dead.values()),
        "pipelines": _pipelines(workspace, revision, consumers, dead),
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
    try:
        info = await js.stream_info(STREAM)
    except NotFoundError:
        return {"name": STREAM, "exists": False}
    return {
        "name": STREAM,
        "exists": True,
        "messages": info.state.messages,
        "bytes": info.state.bytes,
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


def render(snapshot: dict[str, Any]) -> Group:
    """The snapshot as a headline and a table, for people."""
    if "error" in snapshot:
        return Group(Text(f"{snapshot['time']}  {snapshot['error']}", style="red"))
    stream = snapshot["stream"]
    if stream["exists"]:
        replicas = stream["replicas"]
        leader = f", leader {stream['leader']}" if stream["leader"] else ""
        headline = (
            f"{STREAM}: {stream['messages']:,} messages, {human_bytes(stream['bytes'])}, "
            f"{replicas} replica{'s' if replicas != 1 else ''}, {stream['storage']} storage{leader}"
        )
    else:
        headline = f"{STREAM}: not created yet; `krenalis serve` creates it"
    parts: list[Any] = [
        Text(f"{headline}. Dead letters: {snapshot['dead_letters']:,}. ({snapshot['time']})")
    ]
    workspace = snapshot["workspace"]
    if workspace["revision"] is not None:
        parts.append(Text(f"Workspace: revision {workspace['revision']}, applied "
                          f"{workspace['applied_at']} from {workspace['origin']}."))  # fmt: skip
    if workspace["error"]:
        parts.append(Text(f"Workspace not loaded: {workspace['error']}", style="yellow"))
    if snapshot["pipelines"]:
        parts.append(_table(snapshot))
    if snapshot.get("steps"):
        parts.append(_steps_table(snapshot["steps"]))
    else:
        parts.append(Text("No pipelines: no consumer on EVENTS and none in the workspace."))
    parts.append(_processes(snapshot["processes"], workspace["revision"]))
    return Group(*parts)


def _processes(processes: list[dict[str, Any]], current: int | None) -> Any:
    if not processes:
        return Text("No Krenalis process answers on this NATS.")
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0, 0, 1))
    for title in ("Process", "Host", "PID", "Up", "Revision", "Pipelines"):
        table.add_column(title, no_wrap=title != "Pipelines")
    for p in processes:
        revision = str(p["revision"])
        if current is not None and p["revision"] != current:
            revision = f"[yellow]{revision}[/yellow]"
        table.add_row(
            p["role"], escape(p["host"]), str(p["pid"]), _duration(p["uptime"]), revision,
            escape(", ".join(p["pipelines"])) or "-",
        )  # fmt: skip
    return table


def _table(snapshot: dict[str, Any]) -> Table:
    now = datetime.fromisoformat(snapshot["time"])
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0, 0, 1))
    table.add_column("Pipeline", no_wrap=True)  # ids stay whole; the state column wraps
    table.add_column("State")
    # Two-line headers keep the table within 80 columns.
    for title in ("Pending", "In\nflight", "Redelivered", "Dead\nletters", "Last\ndelivery"):
        table.add_column(title, justify="right", no_wrap=True)
    for row in snapshot["pipelines"]:
        counts = [f"{row[key]:,}" for key in _COUNTS]
        if row["dead_letters"]:
            counts[-1] = f"[red]{counts[-1]}[/red]"
        state = row["state"]
        if state in ("no consumer yet", "not in workspace"):
            state = f"[yellow]{state}[/yellow]"
        table.add_row(row["pipeline"], state, *counts, _ago(row["last_delivery"], now))
    return table


def _steps_table(steps: list[dict[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0, 0, 1))
    table.add_column("Pipeline", no_wrap=True)
    table.add_column("Transform step")
    for title in ("In", "Out", "Dropped", "Failed", "us/event"):
        table.add_column(title, justify="right", no_wrap=True)
    for row in steps:
        failed = f"{row['failed']:,}"
        if row["failed"]:
            failed = f"[red]{failed}[/red]"
        per_event = "-" if row["us_per_event"] is None else f"{row['us_per_event']:,.1f}"
        table.add_row(escape(row["pipeline"]), escape(row["step"]), f"{row['in']:,}",
                      f"{row['out']:,}", f"{row['dropped']:,}", failed, per_event)  # fmt: skip
    return table


def _ago(when: str | None, now: datetime) -> str:
    if when is None:
        return "never"
    return _duration(int((now - datetime.fromisoformat(when)).total_seconds())) + " ago"


def _duration(seconds: int) -> str:
    seconds = max(0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
