"""The workspace as cluster state: revisions in a JetStream key-value bucket.

Every process of a deployment (serve, collectors, workers, on any machine) reads the same
workspace from the bucket `KRENALIS_WORKSPACE` and follows it as it changes; people change it
on purpose with `krenalis workspace apply`, which checks the file, shows what changes and
stores a new revision with compare-and-set, so that two operators cannot overwrite each other
silently. The bucket keeps the last 64 revisions (`history`, `rollback`).

A revision holds the file's text as written: `${VAR}` references stay unexpanded in NATS and
each process expands them with its own environment. It also holds the pipelines being retired
(removed, or shards dropped) until their backlog is delivered or dead-lettered (see
:mod:`krenalis.worker.retire`), and the backfills of new pipelines until they ran (see
:mod:`krenalis.worker.backfill`).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import socket
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue

from krenalis.config import Settings
from krenalis.errors import RevisionConflict

__all__ = ["BUCKET", "Backfill", "Retirement", "Revision", "WorkspaceStore", "now", "who"]

log = logging.getLogger("krenalis.workspace")

BUCKET = "KRENALIS_WORKSPACE"
KEY = "workspace"
#: Revisions kept: the most a JetStream key-value bucket keeps per key.
HISTORY = 64


class Retirement(msgspec.Struct, frozen=True):
    """Shards of a pipeline that no collector routes to any more, kept until their backlog is
    gone: delivered by their worker ("drain") or moved to EVENTS_DLQ ("discard").

    ``text`` is the workspace text in which the pipeline was last defined: the draining worker
    builds its sink from it, since the pipeline may be gone from the current one.
    """

    pipeline: str
    shards: tuple[int, ...]
    mode: str
    text: str


class Backfill(msgspec.Struct, frozen=True):
    """A new pipeline's backfill, waiting to run: its source's archive from ``since`` (epoch
    seconds: when the pipeline was added, less its ``backfill``) is replayed into it once, as
    the replay ``id`` (its record in the KRENALIS_REPLAYS bucket)."""

    pipeline: str
    id: str
    since: float


class _Stored(msgspec.Struct, frozen=True):
    text: str
    origin: str = ""
    applied_at: str = ""
    applied_by: str = ""
    retired: tuple[Retirement, ...] = ()
    backfills: tuple[Backfill, ...] = ()


@dataclass(frozen=True)
class Revision:
    """One stored version of the workspace. ``number`` is the bucket's revision number."""

    number: int
    text: str
    origin: str = ""
    applied_at: str = ""
    applied_by: str = ""
    retired: tuple[Retirement, ...] = field(default_factory=tuple)
    backfills: tuple[Backfill, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        stored = _Stored(self.text, self.origin, self.applied_at, self.applied_by, self.retired,
                         self.backfills)  # fmt: skip
        return msgspec.json.encode(stored)

    @classmethod
    def decode(cls, number: int, data: bytes) -> Revision:
        stored = msgspec.json.decode(data, type=_Stored)
        return cls(number, stored.text, stored.origin, stored.applied_at, stored.applied_by,
                   stored.retired, stored.backfills)  # fmt: skip

    def retirements_of(self, pipeline: str) -> list[Retirement]:
        return [r for r in self.retired if r.pipeline == pipeline]


def who() -> str:
    """user@host, for a revision's `applied_by`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class WorkspaceStore:
    """The bucket of one deployment; `open()` makes it when it does not exist yet."""

    def __init__(self, js: JetStreamContext, settings: Settings) -> None:
        self.js = js
        self.settings = settings
        self._kv: KeyValue | None = None

    async def open(self) -> WorkspaceStore:
        try:
            self._kv = await self.js.key_value(BUCKET)
        except BucketNotFoundError:
            self._kv = await self.js.create_key_value(self._config())
            log.info("Workspace bucket created.", extra={"bucket": BUCKET})
        return self

    def _config(self) -> KeyValueConfig:
        memory = self.settings.nats_storage == "memory"
        return KeyValueConfig(
            bucket=BUCKET,
            description="Krenalis workspace: sources, destinations and pipelines",
            history=HISTORY,
            replicas=self.settings.nats_replicas,
            storage=StorageType.MEMORY if memory else StorageType.FILE,
        )

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("WorkspaceStore.open() has not been called")
        return self._kv

    async def current(self) -> Revision | None:
        try:
            entry = await self.kv.get(KEY)
        except KeyNotFoundError:
            return None
        return Revision.decode(entry.revision or 0, entry.value or b"")

    async def get(self, number: int) -> Revision | None:
        try:
            entry = await self.kv.get(KEY, revision=number)
        except KeyNotFoundError:
            return None
        return Revision.decode(entry.revision or 0, entry.value or b"")

    async def history(self) -> list[Revision]:
        """The revisions the bucket still holds, oldest first."""
        try:
            entries = await self.kv.history(KEY)
        except NoKeysError:
            return []
        return [Revision.decode(e.revision or 0, e.value or b"") for e in entries if e.value]

    async def restore(self, revision: Revision) -> None:
        """Put `revision` back into a bucket the server lost (memory storage restarted), unless
        another process did first."""
        await self.open()
        if await self.current() is None:
            with contextlib.suppress(RevisionConflict):
                await self.store(revision, 0)
                log.warning(
                    "Restored the workspace: the NATS server had lost it.",
                    extra={"revision": revision.number},
                )

    async def store(self, revision: Revision, expected: int) -> Revision:
        """Store `revision` if the current one is still `expected` (0: none yet)."""
        try:
            if expected:
                number = await self.kv.update(KEY, revision.encode(), last=expected)
            else:
                number = await self.kv.create(KEY, revision.encode())
        except KeyWrongLastSequenceError:
            raise RevisionConflict(
                "the workspace changed while this change was prepared (another apply stored a "
                "new revision); look at `krenalis workspace diff FILE` and apply again"
            ) from None
        return replace(revision, number=number)
