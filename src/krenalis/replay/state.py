"""Where a replay keeps its progress: the JetStream key-value bucket `KRENALIS_REPLAYS`.

A replay writes, after each chunk it published, the archive sequence to read on from and its
counts (a *checkpoint*). `krenalis replay --resume ID` reads it back and goes on from there;
the copies of the chunk that was being published when the replay died are published again
with the same `Nats-Msg-Id` (derived from the replay id and the messageId), so the stream
stores them once. Every write is a compare-and-set on the record's revision: two processes
that run the same replay (two workers taking the same backfill) cannot both go on, the one
whose write fails stops (:class:`ReplayTaken`). A record is kept 30 days.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

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
from krenalis.errors import ReplayTaken
from krenalis.stream.layout import STREAM

__all__ = ["BUCKET", "LEASE", "ReplayState", "ReplayStore", "ReplayTaken", "owner", "stalled"]

BUCKET = "KRENALIS_REPLAYS"
#: Seconds a replay's record is kept after its last write.
KEEP = 30 * 86400.0
#: Seconds a running replay's record may go without a checkpoint (it writes one every second
#: or so) before another process may take it over.
LEASE = 30.0


class ReplayState(msgspec.Struct, kw_only=True):
    """One replay: what it replays, and how far it got."""

    id: str
    source: str
    pipeline: str
    #: Stream times (epoch seconds) of the archive copies to replay; until None: the end.
    since: float
    until: float | None = None
    #: The extra filter as given (YAML or JSON), None for none.
    filter: str | None = None
    #: The stream of the archive being read, which `end_seq` and `next_seq` count in: EVENTS
    #: for the copies an earlier version archived there, read first (skipped when there are
    #: none; a record of an earlier version is always there), then EVENTS_ARCHIVE.
    stream: str = STREAM
    #: The stream's last sequence when the replay began reading it: later copies are not
    #: replayed (events arriving meanwhile are routed live).
    end_seq: int = 0
    #: The archive sequence to read on from (everything before it is published); 0: from `since`.
    next_seq: int = 0
    read: int = 0
    matched: int = 0
    published: int = 0
    duplicates: int = 0
    #: Who runs it (user@host:pid) and when it last wrote (epoch seconds).
    owner: str = ""
    heartbeat: float = 0.0
    done: bool = False


def owner() -> str:
    """This process, as a replay's owner: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def stalled(state: ReplayState) -> bool:
    """Whether another process may take the replay over: its owner wrote no checkpoint for
    LEASE seconds, or it ran on this host and is gone (a replay killed a moment ago can be
    resumed at once)."""
    if time.time() - state.heartbeat >= LEASE:
        return True
    host, _, pid = state.owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class ReplayStore:
    """The bucket of a deployment's replays; `open()` makes it when it does not exist yet."""

    def __init__(self, js: JetStreamContext, settings: Settings) -> None:
        self.js = js
        self.settings = settings
        self._kv: KeyValue | None = None

    async def open(self) -> ReplayStore:
        try:
            self._kv = await self.js.key_value(BUCKET)
        except BucketNotFoundError:
            memory = self.settings.nats_storage == "memory"
            self._kv = await self.js.create_key_value(
                KeyValueConfig(
                    bucket=BUCKET,
                    description="Krenalis replays and backfills: their progress",
                    history=1,
                    ttl=KEEP,
                    replicas=self.settings.nats_replicas,
                    storage=StorageType.MEMORY if memory else StorageType.FILE,
                )
            )
        return self

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("ReplayStore.open() has not been called")
        return self._kv

    async def get(self, replay_id: str) -> tuple[ReplayState, int] | None:
        """The replay's record and its revision, or None."""
        try:
            entry = await self.kv.get(replay_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return msgspec.json.decode(entry.value, type=ReplayState), entry.revision or 0

    async def create(self, state: ReplayState) -> int | None:
        """Store a new record; None if the replay exists already (another process made it)."""
        state.heartbeat = time.time()
        try:
            return await self.kv.create(state.id, msgspec.json.encode(state))
        except KeyWrongLastSequenceError:
            return None

    async def update(self, state: ReplayState, revision: int) -> int:
        """Write the record if it is still at `revision`; ReplayTaken otherwise."""
        state.heartbeat = time.time()
        try:
            return await self.kv.update(state.id, msgspec.json.encode(state), last=revision)
        except KeyWrongLastSequenceError:
            raise ReplayTaken(f"replay {state.id} was taken over by another process") from None

    async def all(self) -> list[ReplayState]:
        """Every replay kept, oldest write first."""
        with contextlib.suppress(NoKeysError):
            found = [await self.get(key) for key in await self.kv.keys()]
            return sorted((s for s, _ in filter(None, found)), key=lambda s: s.heartbeat)
        return []
