"""How a process follows the workspace: the current revision in NATS, and its local file.

Every process reads the workspace from the `KRENALIS_WORKSPACE` bucket and looks again every
second, so a change reaches every process of the deployment within about a second, with no
signal. It reads the current revision rather than holding a watch open: a plain read has
nothing to rebuild after a reconnection or a server that lost its state, and one small read a
second per process costs NATS nothing measurable.

A process that has a local workspace file (serve with its embedded NATS, or any process given
`--workspace FILE` / KRENALIS_WORKSPACE) applies it at start and whenever it changes, through the
same checks as `krenalis workspace apply` (:mod:`krenalis.workspace.apply`): a change that would
drop pending events is refused and logged with what to do, never applied implicitly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.js import JetStreamContext

from krenalis.config import Settings
from krenalis.errors import RevisionConflict, WorkspaceError
from krenalis.workspace.apply import apply_plan, plan_change
from krenalis.workspace.load import parse_workspace
from krenalis.workspace.model import Workspace
from krenalis.workspace.store import Revision, WorkspaceStore

__all__ = ["Follower", "read_file"]

log = logging.getLogger("krenalis.workspace")

#: Seconds between two reads of the current revision (and of the local file's stamp).
INTERVAL = 1.0

Use = Callable[[Revision, Workspace], Awaitable[None]]


def read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = f"cannot read the workspace file: {exc.strerror or exc}"
        raise WorkspaceError(str(path), None, reason) from None
    except UnicodeDecodeError:
        raise WorkspaceError(str(path), None, "the workspace file is not UTF-8 text") from None


class Follower:
    """Calls `use` with each new revision this process can read; applies the local file."""

    def __init__(
        self,
        js: JetStreamContext,
        settings: Settings,
        store: WorkspaceStore,
        local: Path | None,
        use: Use,
    ) -> None:
        self.js = js
        self.settings = settings
        self.store = store
        self.local = local
        self.use = use
        self.revision: Revision | None = None
        self._stamp: tuple[float, int] | None = None
        self._refused: int | None = None  # the revision this process could not read
        self._last_error = ""

    async def start(self) -> tuple[Revision, Workspace]:
        """Apply the local file, then wait for a revision this process can read (a local file
        that is not valid stops the start: WorkspaceError)."""
        if self.local is not None:
            await self.apply_local("start", strict=True)
        waiting = False
        while True:
            revision = await self.store.current()
            if revision is not None:
                workspace = self._read(revision)
                if workspace is not None:
                    self.revision = revision
                    return revision, workspace
            elif not waiting:
                waiting = True
                log.warning(
                    "No workspace in NATS yet; waiting. Apply one with "
                    "`krenalis workspace apply FILE` (or start with --workspace FILE).",
                    extra={"bucket": "KRENALIS_WORKSPACE"},
                )
            await asyncio.sleep(INTERVAL)

    async def run(self) -> None:
        """Until cancelled: apply the local file when it changes, use each new revision."""
        while True:
            await asyncio.sleep(INTERVAL)
            try:
                await self.step()
            except Exception as exc:  # NATS away: the next round asks again
                self._log_once(str(exc) or type(exc).__name__)

    async def step(self) -> None:
        if self.local is not None and _stamp(self.local) != self._stamp:
            await self.apply_local("the file changed")
        revision = await self.store.current()
        if revision is None or self.revision is None or revision.number == self.revision.number:
            return
        if revision.number == self._refused:
            return
        workspace = self._read(revision)
        if workspace is not None:
            self.revision = revision
            await self.use(revision, workspace)
        self._last_error = ""

    def _read(self, revision: Revision) -> Workspace | None:
        """The revision's workspace with this process's environment; None (logged once) if a
        variable it needs is missing here, or the text is not valid any more."""
        try:
            return parse_workspace(revision.text, f"workspace revision {revision.number}")
        except WorkspaceError as exc:
            if self._refused != revision.number:
                self._refused = revision.number
                log.error(
                    "This process cannot use the new workspace revision; keeping its current one.",
                    extra={"revision": revision.number, "error": str(exc)},
                )
            return None

    async def apply_local(self, why: str, strict: bool = False) -> None:
        """Apply the local file as `krenalis workspace apply` would, refusing to drop events."""
        assert self.local is not None
        self._stamp = _stamp(self.local)
        try:
            text = read_file(self.local)
            plan = await plan_change(self.js, self.store, text, str(self.local))
        except WorkspaceError as exc:
            if strict:
                raise
            log.error("Workspace file not applied.", extra={"why": why, "error": str(exc)})
            return
        if plan.unchanged:
            return
        if plan.refused:
            for reason in plan.refused:
                log.error("Workspace file not applied.", extra={"why": why, "error": reason})
            return
        try:
            stored = await apply_plan(self.js, self.settings, self.store, plan)
        except RevisionConflict as exc:
            log.warning("Workspace file not applied.", extra={"why": why, "error": str(exc)})
            return
        log.info(
            "Workspace file applied.",
            extra={
                "why": why,
                "revision": stored.number,
                "changes": "; ".join(map(str, plan.changes)),
            },
        )

    def _log_once(self, error: str) -> None:
        if error != self._last_error:
            self._last_error = error
            log.warning("Cannot read the workspace from NATS; retrying.", extra={"error": error})


def _stamp(path: Path) -> tuple[float, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime, stat.st_size)
