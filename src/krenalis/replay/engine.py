"""Replaying a source's archive into a pipeline: `krenalis replay` and a new pipeline's backfill.

Each archive copy the pipeline's filter and consent rule take (and the replay's extra filter,
if any) is published on the pipeline's subject, on the shard its user goes to
(:func:`krenalis.pipelines.routing.shard_of`), as the stream's bytes: the pipeline's workers
deliver it as any other event, with their transform steps, retries and dead letters (the steps
run there, never here, so nothing is transformed twice). A copy keeps the event's messageId,
so the warehouse's upsert and the webhooks' Idempotency-Key make a second replay change
nothing; its `Nats-Msg-Id` is `replay/<replay id>/<messageId>/<pipeline>`, so a replay that
dies and is resumed (`--resume ID`) stores the copies it was publishing once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client

from krenalis.errors import InvalidEvent
from krenalis.events import decode_event, user_key
from krenalis.pipelines.filters import Filter
from krenalis.pipelines.routing import admission, shard_of
from krenalis.replay.reader import ArchivedEvent, ArchiveReader, legacy_copies
from krenalis.replay.state import ReplayState, ReplayStore
from krenalis.stream.layout import ARCHIVE_STREAM, subject
from krenalis.stream.publisher import OutMessage, Publisher, message_id
from krenalis.workspace.model import Pipeline

__all__ = ["Progress", "Replay", "replay_message_id"]

#: Copies published at once (an atomic batch).
CHUNK = 500
#: Seconds between two checkpoints while reading copies that do not match.
CHECKPOINT_EVERY = 1.0


def replay_message_id(replay_id: str, event_message_id: str, pipeline: str) -> str:
    """The `Nats-Msg-Id` of a replay copy."""
    return f"replay/{replay_id}/{message_id(event_message_id, pipeline)}"


@dataclass
class Progress:
    """What a replay did so far; `total` is the most it will read (fewer with `until`)."""

    state: ReplayState
    total: int
    unreadable: int
    started: float

    @property
    def rate(self) -> float:
        """Archive copies read per second since this run began."""
        elapsed = time.monotonic() - self.started
        return self.state.read / elapsed if elapsed > 0 else 0.0


class Replay:
    """One run of a replay (a new one, or one resumed from its checkpoint)."""

    def __init__(
        self,
        nc: Client,
        state: ReplayState,
        pipeline: Pipeline,
        *,
        extra: Filter | None = None,
        store: ReplayStore | None = None,
        revision: int = 0,
        rate: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.state = state
        self.pipeline = pipeline
        # None: a dry run, nothing published and nothing recorded.
        self.store = store
        self.revision = revision
        self.publisher = Publisher(nc, deadline=30.0)
        self.rate = rate
        self.on_progress = on_progress or (lambda _: None)
        self.admit = _combined(admission(pipeline.filter, pipeline.consents), extra)
        self.progress = Progress(state, 0, 0, time.monotonic())
        self._chunk: list[OutMessage] = []
        self._published_here = 0
        self._last_checkpoint = time.monotonic()

    async def run(self) -> ReplayState:
        """Read, filter, publish until the end; the state as last recorded (`done`). What an
        earlier version archived in EVENTS is read first (it is older), then EVENTS_ARCHIVE."""
        state = self.state
        if state.stream != ARCHIVE_STREAM and not await legacy_copies(self.js, state.source):
            self._next_part()
        while True:
            next_seq = await self._read_part()
            if state.stream == ARCHIVE_STREAM:
                break
            await self._flush(next_seq)  # the checkpoint counts in this stream's sequences
            self._next_part()
        state.done = True
        await self._flush(next_seq)
        return state

    def _next_part(self) -> None:
        state = self.state
        state.stream, state.next_seq, state.end_seq = ARCHIVE_STREAM, 0, 0

    async def _read_part(self) -> int:
        """Read the archive in `state.stream` to its end; the sequence to read on from."""
        state = self.state
        reader = ArchiveReader(
            self.js, state.source, stream=state.stream, since=_time(state.since),
            until=_time(state.until) if state.until is not None else None,
            start_seq=state.next_seq, end_seq=state.end_seq,
        )  # fmt: skip
        try:
            await reader.open()
            state.end_seq = reader.end_seq
            if self.store is not None:  # claims the replay before publishing anything
                self.revision = await self.store.update(state, self.revision)
            self.progress.total = state.read + reader.total
            self.on_progress(self.progress)
            async for item in reader.events():
                self._take(item)
                if len(self._chunk) >= self._chunk_size() or self._checkpoint_due():
                    await self._flush(item.seq + 1)
        finally:
            await reader.close()
        return max(reader.last_seq + 1, state.next_seq)

    def _take(self, item: ArchivedEvent) -> None:
        self.state.read += 1
        try:
            event = decode_event(item.data)
        except InvalidEvent:
            self.progress.unreadable += 1
            return
        if self.admit is not None and not self.admit(event):
            return
        self.state.matched += 1
        if self.store is None:
            return  # a dry run counts
        shard = shard_of(user_key(event), self.pipeline.shards)
        replay_id = replay_message_id(self.state.id, event["messageId"], self.pipeline.id)
        self._chunk.append(OutMessage(subject(self.pipeline.id, shard), item.data, replay_id))

    def _chunk_size(self) -> int:
        if self.rate is None:
            return CHUNK
        return max(1, min(CHUNK, int(self.rate / 4)))

    def _checkpoint_due(self) -> bool:
        return time.monotonic() - self._last_checkpoint >= CHECKPOINT_EVERY

    async def _flush(self, next_seq: int) -> None:
        """Publish the chunk, then record how far the replay got."""
        chunk, self._chunk = self._chunk, []
        state = self.state
        if chunk:
            acks = await self.publisher.publish(chunk)
            duplicates = sum(1 for ack in acks if ack.duplicate)
            state.duplicates += duplicates
            state.published += len(chunk) - duplicates
            self._published_here += len(chunk)
        state.next_seq = next_seq
        if self.store is not None:
            self.revision = await self.store.update(state, self.revision)
        self._last_checkpoint = time.monotonic()
        self.on_progress(self.progress)
        await self._pace()

    async def _pace(self) -> None:
        """With a rate: wait until the copies published so far fit in it."""
        if self.rate is None or not self._published_here:
            return
        ahead = self._published_here / self.rate - (time.monotonic() - self.progress.started)
        if ahead > 0:
            await asyncio.sleep(ahead)


def _combined(
    pipeline_test: Callable[[dict], bool] | None, extra: Filter | None
) -> Callable[[dict], bool] | None:
    if extra is None:
        return pipeline_test
    if pipeline_test is None:
        return extra.test
    extra_test = extra.test
    return lambda event: pipeline_test(event) and extra_test(event)


def _time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
