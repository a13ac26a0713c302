"""Running new pipelines' backfills: their source's archive replayed into them, once.

`apply` stores a pending :class:`~krenalis.workspace.store.Backfill` with the revision that
adds a pipeline with ``backfill: 2d``. Every process that runs workers looks, every second, at
the pending backfills of the current revision; once every process that routes events runs
that revision (so the live copies reach the new pipeline, and the archive holds every event
before that moment), one of them runs the backfill as a replay (:mod:`krenalis.replay`):

- exactly one runs it: the first to create the replay's record in KRENALIS_REPLAYS (a
  create that fails when the key exists) owns it, and every checkpoint it writes after is a
  compare-and-set;
- if the owner dies, its record stops moving; after ``LEASE`` seconds (at once if it ran on
  the same machine) another process takes it over (compare-and-set again: one wins) and
  resumes from the last checkpoint, the copies in flight then being stored once (same
  `Nats-Msg-Id`);
- once the replay is done, a revision without the backfill is stored (compare-and-set; on
  a conflict the next round tries again, seeing the record done).

The backfill reads the archive up to the moment it starts; events after it reach the
pipeline live. An event of those few seconds may arrive both ways: the warehouse's upsert and
the webhooks' Idempotency-Key make that harmless.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace

from nats.aio.client import Client

from krenalis.config import Settings
from krenalis.errors import RevisionConflict, WorkspaceError
from krenalis.replay.engine import Replay
from krenalis.replay.state import ReplayState, ReplayStore, ReplayTaken, owner, stalled
from krenalis.worker.retire import every_round, old_enough, routed_by
from krenalis.workspace.load import parse_workspace
from krenalis.workspace.model import Workspace
from krenalis.workspace.store import Backfill, Revision, WorkspaceStore, now, who

__all__ = ["Backfiller"]

log = logging.getLogger("krenalis.worker")


class Backfiller:
    """Runs until cancelled, running the pending backfills (see the module docstring)."""

    def __init__(self, nc: Client, store: WorkspaceStore, settings: Settings) -> None:
        self.nc = nc
        self.store = store
        self.settings = settings
        self.replays = ReplayStore(nc.jetstream(), settings)

    async def run(self) -> None:
        await self.replays.open()
        await every_round(self.step, "Cannot run backfills yet; retrying.")

    async def step(self) -> None:
        revision = await self.store.current()
        if revision is None or not revision.backfills or not old_enough(revision):
            return
        if not await routed_by(self.nc, revision):
            return
        for backfill in revision.backfills:
            if await self._run(backfill, revision):
                await self._finish(backfill, revision)
                return  # the revision changed: look again next round

    async def _run(self, backfill: Backfill, revision: Revision) -> bool:
        """Run the backfill if this process may; whether it is done."""
        found = await self.replays.get(backfill.id)
        if found is not None and found[0].done:
            return True
        claimed = await self._claim(backfill, revision, found)
        if claimed is None:
            return False
        state, record = claimed
        pipeline = _workspace(revision).pipelines[backfill.pipeline]
        log.info("Backfilling a new pipeline from its source's archive.",
                 extra={"pipeline": pipeline.id, "replay": state.id, "from_seq": state.next_seq})  # fmt: skip
        replay = Replay(
            self.nc, state, pipeline, store=self.replays, revision=record,
        )  # fmt: skip
        try:
            done = await replay.run()
        except ReplayTaken:
            return False
        log.info("Backfill done.", extra={"pipeline": pipeline.id, "read": done.read,
                 "matched": done.matched, "published": done.published})  # fmt: skip
        return True

    async def _claim(
        self, backfill: Backfill, revision: Revision, found: tuple[ReplayState, int] | None
    ) -> tuple[ReplayState, int] | None:
        """(The state, its record's revision) if this process now owns the backfill."""
        if found is None:
            pipeline = _workspace(revision).pipelines[backfill.pipeline]
            state = ReplayState(id=backfill.id, source=pipeline.source, pipeline=pipeline.id,
                                since=backfill.since, until=time.time(), owner=owner())  # fmt: skip
            record = await self.replays.create(state)
            return None if record is None else (state, record)
        state, record = found
        if not stalled(state):
            return None  # its owner is at work
        log.warning("Taking over a backfill whose process stopped.",
                    extra={"pipeline": backfill.pipeline, "owner": state.owner})  # fmt: skip
        state.owner = owner()
        with contextlib.suppress(ReplayTaken):
            return state, await self.replays.update(state, record)
        return None

    async def _finish(self, backfill: Backfill, revision: Revision) -> None:
        rest = tuple(b for b in revision.backfills if b != backfill)
        origin = f'backfilled pipeline "{backfill.pipeline}"'
        after = replace(revision, number=0, origin=origin, applied_at=now(), applied_by=who(),
                        backfills=rest)  # fmt: skip
        with contextlib.suppress(RevisionConflict):  # another process finished it first
            await self.store.store(after, revision.number)


def _workspace(revision: Revision) -> Workspace:
    try:
        return parse_workspace(revision.text, f"revision {revision.number}", environ={},
                               unset=set())  # fmt: skip
    except WorkspaceError as exc:  # stored texts were checked: this is not expected
        raise RuntimeError(f"the stored workspace does not load: {exc}") from None
