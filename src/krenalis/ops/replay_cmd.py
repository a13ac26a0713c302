"""`krenalis replay`: send a source's archived events again, into one pipeline.

The replay itself is :mod:`krenalis.replay.engine`; this command checks what it is asked,
shows a progress bar (archived events read, matched, published, rate, time left) and ends with
a summary. A replay is recorded as it goes (KRENALIS_REPLAYS), so one that was stopped or
crashed goes on with `--resume ID`, publishing nothing twice.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from krenalis.config import Settings, parse_duration
from krenalis.errors import CommandError, ReplayTaken
from krenalis.ops._common import connected, nats_urls, read_filter, stored_workspace
from krenalis.pipelines.filters import Filter
from krenalis.replay.engine import Progress as ReplayProgress
from krenalis.replay.engine import Replay
from krenalis.replay.state import LEASE, ReplayState, ReplayStore, owner, stalled
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import list_pipeline_consumers
from krenalis.workspace.model import Pipeline, Workspace

__all__ = ["parse_time", "replay"]

_FOR_NEW = ("source", "since", "until", "filter", "to")


def replay(settings: Settings, args: argparse.Namespace) -> int:
    _check_arguments(args)
    if args.rate is not None and args.rate <= 0:
        raise CommandError("--rate must be a number of events per second above 0", 2)
    urls = nats_urls(settings)

    async def main() -> ReplayState:
        async with connected(settings, urls) as conn:
            return await _replay(conn, settings, args)

    state = asyncio.run(main())
    print(_summary(state, dry_run=args.dry_run))
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    if args.resume:
        given = [f"--{name}" for name in _FOR_NEW if getattr(args, name)]
        if given or args.dry_run:
            raise CommandError(
                f"--resume goes on with the replay as it was started: leave out "
                f"{', '.join(given) or '--dry-run'}", 2,
            )  # fmt: skip
        return
    if not args.to or not args.since:
        raise CommandError("say which events and where: --since TIME --to PIPELINE "
                           "(or --resume ID to go on with a replay)", 2)  # fmt: skip


def parse_time(value: str, option: str) -> float:
    """Epoch seconds of an ISO 8601 time (UTC unless it says otherwise: 2026-11-20T00:00Z,
    2026-11-20) or of a duration before now (2d, 90m)."""
    try:
        return time.time() - parse_duration(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option} {value!r} is neither a time (2026-11-20T00:00Z, "
                           "2026-11-20) nor a duration before now (2d, 90m)", 2) from None  # fmt: skip
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


async def _replay(
    conn: NatsConnection, settings: Settings, args: argparse.Namespace
) -> ReplayState:
    workspace = await stored_workspace(conn.js, settings)
    store = await ReplayStore(conn.js, settings).open()
    if args.resume:
        state, revision = await _resumed(store, args.resume)
        if state.done:
            return state
    else:
        state, revision = _new(args), 0
    pipeline = await _target(conn, workspace, state.pipeline)
    state.source = state.source or pipeline.source
    extra: Filter | None = read_filter(state.filter)[1] if state.filter else None
    if not args.dry_run and not args.resume:
        revision = await store.create(state) or 0
    if not args.dry_run:
        Console(stderr=True).print(f"Replay [bold]{state.id}[/bold]: if it stops, go on with "
                                   f"`krenalis replay --resume {state.id}`.")  # fmt: skip
    with _ProgressBar(state) as bar:
        run = Replay(
            conn.nc, state, pipeline, extra=extra, store=None if args.dry_run else store,
            revision=revision,
            rate=args.rate, on_progress=bar.update,
        )  # fmt: skip
        try:
            return await run.run()
        except ReplayTaken as exc:
            raise CommandError(str(exc)) from None


def _new(args: argparse.Namespace) -> ReplayState:
    since = parse_time(args.since, "--since")
    until = parse_time(args.until, "--until") if args.until else None
    if until is not None and until <= since:
        raise CommandError("--until must be later than --since", 2)
    text = read_filter(args.filter)[0] if args.filter else None
    return ReplayState(id=uuid.uuid4().hex[:12], source=args.source or "", pipeline=args.to,
                       since=since, until=until, filter=text, owner=owner())  # fmt: skip


async def _resumed(store: ReplayStore, replay_id: str) -> tuple[ReplayState, int]:
    found = await store.get(replay_id)
    if found is None:
        raise CommandError(f"no replay {replay_id!r} is recorded (records are kept 30 days)")
    state, revision = found
    if state.done:
        return state, revision
    if state.owner != owner() and not stalled(state):
        idle = time.time() - state.heartbeat
        raise CommandError(f"replay {replay_id} is running in {state.owner} (its last checkpoint "
                           f"was {idle:.0f}s ago); resume it once that process stopped, or "
                           f"{LEASE:g}s after its last checkpoint")  # fmt: skip
    state.owner = owner()
    try:
        return state, await store.update(state, revision)
    except ReplayTaken as exc:
        raise CommandError(str(exc)) from None


async def _target(conn: NatsConnection, workspace: Workspace, pipeline_id: str) -> Pipeline:
    """The pipeline to replay into, with a consumer for each of its shards."""
    pipeline = workspace.pipelines.get(pipeline_id)
    if pipeline is None:
        known = ", ".join(workspace.pipelines) or "none"
        raise CommandError(f"--to: no pipeline {pipeline_id!r} in the stored workspace "
                           f"(pipelines: {known})", 2)  # fmt: skip
    shards = (await list_pipeline_consumers(conn.js)).get(pipeline.id, set())
    missing = sorted(set(range(pipeline.shards)) - shards)
    if missing:
        raise CommandError(f"pipeline {pipeline.id} has no consumer for shards {missing}: "
                           "the copies would wait for nobody (is a worker process running "
                           "the current workspace?)")  # fmt: skip
    return pipeline


class _ProgressBar:
    """Read, matched, published, rate and time left, on a terminal; nothing elsewhere."""

    def __init__(self, state: ReplayState) -> None:
        console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]Replaying[/bold]"), BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} read"),
            TextColumn("[cyan]{task.fields[matched]:,} matched"),
            TextColumn("[green]{task.fields[published]:,} published"),
            TextColumn("{task.fields[rate]:,.0f}/s"), TimeRemainingColumn(),
            console=console, transient=True, disable=not console.is_terminal,
        )  # fmt: skip
        self.task = self.progress.add_task("replay", total=None, matched=0, published=0, rate=0)
        self.state = state

    def __enter__(self) -> _ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def update(self, progress: ReplayProgress) -> None:
        state = progress.state
        self.progress.update(
            self.task, total=max(progress.total, state.read), completed=state.read,
            matched=state.matched, published=state.published, rate=progress.rate,
        )  # fmt: skip


def _summary(state: ReplayState, *, dry_run: bool) -> str:
    since = _shown(state.since)
    until = _shown(state.until) if state.until is not None else "the start of the replay"
    if dry_run:
        return (f"Dry run: {state.read:,} archived events of source {state.source} from {since} "
                f"to {until} read, {state.matched:,} would be replayed into pipeline "
                f"{state.pipeline}. Nothing was published.")  # fmt: skip
    already = f" ({state.duplicates:,} were stored already)" if state.duplicates else ""
    return (f"Replay {state.id}: {state.read:,} archived events of source {state.source} from "
            f"{since} to {until} read, {state.matched:,} matched, {state.published:,} published "
            f"into pipeline {state.pipeline}{already}.")  # fmt: skip


def _shown(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
