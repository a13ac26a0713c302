"""Reading a source's archive in order, from a time or a sequence, with an ordered consumer.

An ordered consumer is an ephemeral push consumer, in memory, that nats-py makes again by
itself when it misses a message (a reconnection, a server restart), from the sequence after
the last one it delivered: what it delivers comes in stream order, once, and nothing of the
archive is acked or removed by reading it. The reader stops at the stream's last sequence at
the start (events arriving meanwhile are routed live) or at the `until` time.

A reader reads one stream: EVENTS_ARCHIVE, or EVENTS for what an earlier version archived there
(:func:`legacy_copies` says whether any is left; the replay reads it first).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from krenalis.stream.layout import (
    ARCHIVE_STREAM,
    STREAM,
    archive_subject,
    legacy_archive_subject,
)

__all__ = ["ArchivedEvent", "ArchiveReader", "legacy_copies"]

#: Seconds without a message before the reader looks whether the archive has more.
IDLE = 2.0


@dataclass(frozen=True, slots=True)
class ArchivedEvent:
    """One archive copy: its stream sequence, when it was stored, the event's bytes."""

    seq: int
    stored_at: datetime
    data: bytes


async def legacy_copies(js: JetStreamContext, source: str) -> int:
    """The copies of the source's archive an earlier version left in EVENTS."""
    subject = legacy_archive_subject(source)
    try:
        info = await js.stream_info(STREAM, subjects_filter=subject)
    except NotFoundError:
        return 0
    return (info.state.subjects or {}).get(subject, 0)


class ArchiveReader:
    """The archive of ``source`` in ``stream`` from ``start_seq`` (if above 0) or ``since``,
    to ``end_seq`` and ``until``. ``total`` is known once :meth:`open` returned: the copies it
    will read at most (fewer with ``until``)."""

    def __init__(
        self,
        js: JetStreamContext,
        source: str,
        *,
        stream: str = ARCHIVE_STREAM,
        since: datetime,
        until: datetime | None = None,
        start_seq: int = 0,
        end_seq: int = 0,
    ) -> None:
        self.js = js
        self.stream = stream
        legacy = stream != ARCHIVE_STREAM
        self.subject = legacy_archive_subject(source) if legacy else archive_subject(source)
        self.since = since
        self.until = until
        self.start_seq = start_seq
        self.end_seq = end_seq
        self.total = 0
        self.last_seq = start_seq - 1 if start_seq else 0
        self._sub: nats.js.JetStreamContext.PushSubscription | None = None

    async def open(self) -> None:
        if not self.end_seq:
            self.end_seq = (await self.js.stream_info(self.stream)).state.last_seq
        config = ConsumerConfig(opt_start_seq=self.start_seq or None)
        policy = DeliverPolicy.BY_START_SEQUENCE
        if not self.start_seq:
            config.opt_start_time = self.since.astimezone(UTC).isoformat()
            policy = DeliverPolicy.BY_START_TIME
        self._sub = await self.js.subscribe(
            self.subject, stream=self.stream, ordered_consumer=True, deliver_policy=policy,
            config=config, pending_msgs_limit=20_000,
        )  # fmt: skip
        info = await self._sub.consumer_info()
        self.total = (info.delivered.consumer_seq or 0) + (info.num_pending or 0)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def events(self) -> AsyncIterator[ArchivedEvent]:
        """Each copy in order, until the end (see the class docstring)."""
        assert self._sub is not None, "open() first"
        if not self.total:
            return
        while True:
            try:
                msg = await self._sub.next_msg(timeout=IDLE)
            except nats.errors.TimeoutError:
                if await self._nothing_left():
                    return
                continue
            meta = msg.metadata
            seq = meta.sequence.stream
            if seq > self.end_seq or (self.until is not None and meta.timestamp > self.until):
                return
            self.last_seq = seq
            yield ArchivedEvent(seq, meta.timestamp, msg.data)
            if seq >= self.end_seq or not meta.num_pending:
                return

    async def _nothing_left(self) -> bool:
        """Whether no archive copy is left between the last one read and the end (they may
        have expired since the consumer counted them)."""
        try:
            following = await self.js.get_msg(
                self.stream, seq=self.last_seq + 1, subject=self.subject, next=True
            )
        except NotFoundError:
            return True
        return (following.seq or 0) > self.end_seq
