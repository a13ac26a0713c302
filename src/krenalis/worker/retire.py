"""Finishing retirements: the consumers of removed pipelines (and dropped shards) go only once
nothing can reach them and nothing is left in them.

A retirement is stored with the revision that removes the pipeline (see
:mod:`krenalis.workspace.apply`). Meanwhile the workers deliver its backlog ("drain") or move
it to EVENTS_DLQ ("discard", through :class:`DiscardSink`). Any process that runs workers
checks, every second, each retirement of the current revision; once

- every process that routes events (collectors, serve) runs that revision or a later one, and
  has no request in flight that was routed by an older one (so no new copy can arrive), and
- the shards' consumers hold nothing (no event pending, none in flight),

it deletes those consumers, purges what is left on their subjects (acked copies not pruned
yet), and stores a revision without the retirement. Several processes may race to do it:
deleting is idempotent and the revision is stored with compare-and-set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime

from nats.aio.client import Client
from nats.js import JetStreamContext

from krenalis.errors import RevisionConflict
from krenalis.runtime.service import list_processes
from krenalis.sinks.base import Event, Outcome, Rejected
from krenalis.stream.layout import remove_pipeline
from krenalis.workspace.apply import backlog
from krenalis.workspace.store import Retirement, Revision, WorkspaceStore, now, who

__all__ = [
    "DISCARD_REASON",
    "INTERVAL",
    "DiscardSink",
    "Retirer",
    "every_round",
    "old_enough",
    "routed_by",
]

log = logging.getLogger("krenalis.worker")

DISCARD_REASON = "pipeline removed"
#: Seconds between two looks at the retirements.
INTERVAL = 1.0
#: Seconds a revision must have been stored before its retirements may finish, on top of the
#: processes' own reports: a collector that has not registered yet gets this long to do so.
GRACE = 2.0


class DiscardSink:
    """The sink of a discarded pipeline: every event goes to the dead letters, with a reason
    that says why, so that it can be replayed (`krenalis dlq replay`)."""

    async def write(self, events: list[Event]) -> list[Outcome]:
        return [Rejected(DISCARD_REASON)] * len(events)

    async def healthcheck(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class Retirer:
    """Runs until cancelled, finishing the retirements it can (see the module docstring)."""

    def __init__(self, nc: Client, js: JetStreamContext, store: WorkspaceStore) -> None:
        self.nc = nc
        self.js = js
        self.store = store

    async def run(self) -> None:
        await every_round(self.step, "Cannot finish retirements yet; retrying.")

    async def step(self) -> None:
        revision = await self.store.current()
        if revision is None or not revision.retired or not old_enough(revision):
            return
        if not await routed_by(self.nc, revision):
            return
        for retirement in revision.retired:
            if await backlog(self.js, retirement.pipeline, retirement.shards) == 0:
                await self._finish(retirement, revision)
                return  # the revision changed: look again next round

    async def _finish(self, retirement: Retirement, revision: Revision) -> None:
        await remove_pipeline(self.js, retirement.pipeline, retirement.shards)
        rest = tuple(r for r in revision.retired if r != retirement)
        origin = f'retired pipeline "{retirement.pipeline}" shards {list(retirement.shards)}'
        after = replace(revision, number=0, origin=origin, applied_at=now(), applied_by=who(),
                        retired=rest)  # fmt: skip
        with contextlib.suppress(RevisionConflict):  # another process finished it first
            stored = await self.store.store(after, revision.number)
            log.info(
                "Pipeline retired: its consumers are removed.",
                extra={
                    "pipeline": retirement.pipeline,
                    "shards": list(retirement.shards),
                    "mode": retirement.mode,
                    "revision": stored.number,
                },
            )


async def routed_by(nc: Client, revision: Revision) -> bool:
    """Whether every process that routes events runs `revision` or a later one, with no
    request routed by an older one still publishing."""
    processes = await list_processes(nc)
    return all(p.revision >= revision.number for p in processes if p.routes)


async def every_round(step: Callable[[], Awaitable[None]], warning: str) -> None:
    """Run `step` every INTERVAL seconds until cancelled. A failure (NATS away, an election)
    is tried again next round, and logged once per reason."""
    last_error = ""
    while True:
        await asyncio.sleep(INTERVAL)
        try:
            await step()
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            if error != last_error:
                last_error = error
                log.warning(warning, extra={"error": error})


def old_enough(revision: Revision) -> bool:
    """Whether `revision` was stored GRACE seconds ago at least (a process that started
    meanwhile has registered)."""
    try:
        stored = datetime.fromisoformat(revision.applied_at.replace("Z", "+00:00"))
    except ValueError:
        return True
    return (datetime.now(stored.tzinfo) - stored).total_seconds() >= GRACE
