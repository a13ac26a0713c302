"""How `krenalis status` shows its snapshot to people: a headline, the pipelines, the
transform steps, the sources' archives and the processes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich import box
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from krenalis.ops._common import human_bytes
from krenalis.stream.layout import ARCHIVE_STREAM, STREAM

__all__ = ["render"]

_COUNTS = ("pending", "in_flight", "redelivered", "dead_letters")


def render(snapshot: dict[str, Any]) -> Group:
    """The snapshot as a headline and a table, for people."""
    if "error" in snapshot:
        return Group(Text(f"{snapshot['time']}  {snapshot['error']}", style="red"))
    stream = snapshot["stream"]
    if stream["exists"]:
        replicas = stream["replicas"]
        leader = f", leader {stream['leader']}" if stream["leader"] else ""
        headline = (
            f"{STREAM} and {ARCHIVE_STREAM}: {stream['messages']:,} messages "
            f"({stream['pipeline_copies']:,} for pipelines, {stream['archive_copies']:,} "
            f"archived), {human_bytes(stream['bytes'])}, "
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
    else:
        parts.append(Text("No pipelines: no consumer on EVENTS and none in the workspace."))
    if snapshot.get("steps"):
        parts.append(_steps_table(snapshot["steps"]))
    if snapshot.get("archives"):
        parts.append(_archives_table(snapshot["archives"]))
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


def _archives_table(archives: list[dict[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0, 0, 1))
    table.add_column("Source", no_wrap=True)
    for title in ("Keeps", "Archived", "Size (about)", "From", "To"):
        table.add_column(title, justify="right", no_wrap=True)
    for row in archives:
        retention = row["retention"]
        keeps = "-" if retention is None else ("off" if not retention else _duration(retention))
        table.add_row(escape(row["source"]), keeps, f"{row['messages']:,}",
                      human_bytes(row["approx_bytes"]), _clock(row["first"]),
                      _clock(row["last"]))  # fmt: skip
    return table


def _clock(when: str | None) -> str:
    return "-" if when is None else when.replace("T", " ")[:19]


def _ago(when: str | None, now: datetime) -> str:
    if when is None:
        return "never"
    return _duration(int((now - datetime.fromisoformat(when)).total_seconds())) + " ago"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
