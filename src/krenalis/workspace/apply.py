"""Changing the workspace on purpose: check a file, say what changes, and store it.

Every change goes this way, whoever makes it: `krenalis workspace apply` and `rollback`, and
`serve` applying its local file at start or when the file changes. The steps:

1. The file is checked, with file:line errors; variables this process lacks are noted, not
   refused (the processes that use them expand them). The pipelines' transform steps are
   loaded in a throwaway process (:mod:`krenalis.transforms.check`): a function that does not
   import or is not callable, or a GeoIP database that does not open, is refused at its line.
   File paths start at the workspace file's directory (``code_dir``).
2. What changes is computed against the current revision (:mod:`krenalis.workspace.diff`).
3. Pipelines removed (a rename is a removal and an addition) and shards dropped are *retired*,
   never deleted here. If they still hold events (pending or in flight), the change is refused
   unless the operator chose: ``drain`` (no collector routes to them any more, their workers
   deliver the backlog, then they go) or ``discard`` (the backlog moves to EVENTS_DLQ with the
   reason "pipeline removed", where it can be replayed). :mod:`krenalis.worker.retire` finishes
   retirements.
4. A pipeline added with ``backfill: 2d`` gets a pending backfill in the revision (its source's
   archive from two days before now, replayed into it once by a worker process: see
   :mod:`krenalis.worker.backfill`); pending ones of pipelines still there are kept.
5. The consumers of every pipeline shard of the new workspace are created before it is stored,
   so no collector ever routes to a subject nobody consumes.
6. The revision is stored with compare-and-set on the revision read in step 2.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from krenalis.config import Settings
from krenalis.stream.layout import STREAM, consumer_name, ensure_pipelines
from krenalis.transforms.check import check_steps
from krenalis.workspace.diff import Change, diff_texts
from krenalis.workspace.load import parse_workspace
from krenalis.workspace.model import Workspace
from krenalis.workspace.store import Backfill, Retirement, Revision, WorkspaceStore, now, who

__all__ = ["Choice", "Plan", "apply_plan", "backlog", "plan_change"]


class Choice(Enum):
    """What to do with the backlog of pipelines (or shards) a change removes."""

    #: Refuse the change if they hold events.
    REFUSE = "refuse"
    #: Stop routing to them, deliver their backlog, then remove them.
    DRAIN = "drain"
    #: Move their backlog to EVENTS_DLQ ("pipeline removed"), then remove them.
    DISCARD = "discard"


@dataclass
class Plan:
    """A change ready to be stored, or the reasons it cannot be."""

    current: Revision | None
    revision: Revision
    workspace: Workspace
    changes: list[Change]
    retiring: list[tuple[Retirement, int]] = field(default_factory=list)  # with its backlog
    refused: list[str] = field(default_factory=list)
    unset: set[str] = field(default_factory=set)

    @property
    def unchanged(self) -> bool:
        return self.current is not None and self.current.text == self.revision.text


async def plan_change(
    js: JetStreamContext,
    store: WorkspaceStore,
    text: str,
    origin: str,
    *,
    choice: Choice = Choice.REFUSE,
    environ: Mapping[str, str] | None = None,
    code_dir: Path | None = None,
) -> Plan:
    """Check `text` and work out what storing it would change (WorkspaceError if invalid).

    `code_dir` is where the steps' file paths start: by default the directory of `origin`
    when it names a file, else the working directory."""
    unset: set[str] = set()
    workspace = parse_workspace(text, origin, environ=_env(environ), unset=unset)
    await check_steps(workspace, code_dir or _directory_of(origin), origin)
    current = await store.current()
    plan = Plan(
        current=current,
        revision=Revision(0, text, origin, now(), who()),
        workspace=workspace,
        changes=diff_texts(current.text if current else None, text),
        unset=unset,
    )
    if current is not None and not plan.unchanged:
        await _retire(js, plan, current, choice)
    plan.revision = replace(plan.revision, backfills=_backfills(current, workspace))
    return plan


def _directory_of(origin: str) -> Path:
    path = Path(origin)
    return path.parent if path.is_file() else Path.cwd()


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


async def _retire(js: JetStreamContext, plan: Plan, current: Revision, choice: Choice) -> None:
    """Fill in the plan's retirements: removed pipelines and dropped shards, and those still
    in progress from earlier revisions, less what the new workspace uses again."""
    old = _shards_of(current)
    new = {p.id: p.shards for p in plan.workspace.pipelines.values()}
    kept = [r for r in current.retired if _still_retired(r, new)]
    mode = Choice.DISCARD if choice is Choice.DISCARD else Choice.DRAIN
    for pipeline, count in old.items():
        dropped = tuple(range(new.get(pipeline, 0), count))
        if not dropped:
            continue
        retirement = Retirement(pipeline, dropped, mode.value, current.text)
        events = await backlog(js, pipeline, dropped)
        plan.retiring.append((retirement, events))
        if events and choice is Choice.REFUSE:
            plan.refused.append(_refusal(pipeline, dropped, count, new.get(pipeline), events))
    kept += [_trimmed(r, new) for r, _ in plan.retiring]
    plan.revision = replace(plan.revision, retired=tuple(kept))


def _backfills(current: Revision | None, workspace: Workspace) -> tuple[Backfill, ...]:
    """The pending backfills of the pipelines still there, and one for each pipeline added
    with ``backfill`` (a renamed pipeline is a new one)."""
    before = _shards_of(current) if current is not None else {}
    kept = [b for b in (current.backfills if current else ()) if b.pipeline in workspace.pipelines]
    for pipeline in workspace.pipelines.values():
        if pipeline.backfill is not None and pipeline.id not in before:
            replay_id = f"backfill-{pipeline.id}-{uuid.uuid4().hex[:8]}"
            kept.append(Backfill(pipeline.id, replay_id, time.time() - pipeline.backfill))
    return tuple(kept)


def _shards_of(revision: Revision) -> dict[str, int]:
    """Pipeline -> shard count of a stored revision (checked when stored; trusted here)."""
    workspace = parse_workspace(revision.text, "current", environ={}, unset=set())
    return {p.id: p.shards for p in workspace.pipelines.values()}


def _still_retired(retirement: Retirement, new: dict[str, int]) -> bool:
    return bool(_trimmed(retirement, new).shards)


def _trimmed(retirement: Retirement, new: dict[str, int]) -> Retirement:
    """The retirement without the shards the new workspace routes to again."""
    active = new.get(retirement.pipeline, 0)
    shards = tuple(s for s in retirement.shards if s >= active)
    return Retirement(retirement.pipeline, shards, retirement.mode, retirement.text)


def _refusal(pipeline: str, dropped: tuple[int, ...], old: int, new: int | None, n: int) -> str:
    if new is None:
        what = f'pipeline "{pipeline}" is removed (or renamed) but holds {n} events'
    else:
        shards = ", ".join(map(str, dropped))
        what = f'pipeline "{pipeline}" goes from {old} to {new} shards, but shards {shards} hold {n} events'
    return (
        f"{what} (pending or in flight). Choose: --drain (stop routing to it, deliver the "
        "backlog, then remove it) or --discard (move the backlog to EVENTS_DLQ with reason "
        '"pipeline removed", where `krenalis dlq replay` can send it again)'
    )


async def backlog(js: JetStreamContext, pipeline: str, shards: tuple[int, ...]) -> int:
    """Events of these shards not yet acked: waiting, or fetched and in flight."""
    total = 0
    for shard in shards:
        with contextlib.suppress(NotFoundError):
            info = await js.consumer_info(STREAM, consumer_name(pipeline, shard))
            total += (info.num_pending or 0) + (info.num_ack_pending or 0)
    return total


async def apply_plan(
    js: JetStreamContext, settings: Settings, store: WorkspaceStore, plan: Plan
) -> Revision:
    """Make the consumers, then store the plan's revision (RevisionConflict if another apply
    came first). The plan must not be refused."""
    if plan.refused:
        raise ValueError("a refused plan cannot be applied")
    shards = {p.id: p.shards for p in plan.workspace.pipelines.values()}
    await ensure_pipelines(js, shards, settings.nats_ack_wait)
    expected = plan.current.number if plan.current else 0
    return await store.store(plan.revision, expected)
