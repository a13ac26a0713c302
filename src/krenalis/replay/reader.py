"""Reading a source's archive in order, from a time or a sequence, with an ordered consumer.

An ordered consumer is an ephemeral push consumer, in memory, that nats-py makes again by
itself when it misses a message (a reconnection, a server restart), from the sequence after
the last one it delivered: what it delivers comes in stream order, once, and nothing of the
archive is acked or removed by reading it. The reader stops at the stream's last sequence at
the start (events arriving meanwhile are routed live) or at the `until` time.
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

from krenalis.stream.layout import STREAM, archive_subject

__all__ = ["ArchivedEvent", "ArchiveReader"]

#: Seconds without a message before the reader looks whether the archive has more.
IDLE = 2.0


@dataclass(frozen=True, slots=True)
class ArchivedEvent:
    """One archive copy: its stream sequence, when it was stored, the event's bytes."""

    seq: int
    stored_at: datetime
    data: bytes


class ArchiveReader:
    """The archive of ``source`` from ``start_seq`` (if above 0) or ``since``, to ``end_seq``
    and ``until``. ``total`` is known once :meth:`open` returned: the copies it will read at
    most (fewer with ``until``)."""

    def __init__(
        self,
        js: JetStreamContext,
        source: str,
        *,
        since: datetime,
        until: datetime | None = None,
        start_seq: int = 0,
        end_seq: int = 0,
    ) -> None:
        self.js = js
        self.subject = archive_subject(source)
        self.since = since
        self.until = until
        self.start_seq = start_seq
        self.end_seq = end_seq
        self.total = 0
        self.last_seq = start_seq - 1 if start_seq else 0
        self._sub: nats.js.JetStreamContext.PushSubscription | None = None

    async def open(self) -> None:
        if not self.end_seq:
            self.end_seq = (await self.js.stream_info(STREAM)).state.last_seq
        config = ConsumerConfig(opt_start_seq=self.start_seq or None)
        policy = DeliverPolicy.BY_START_SEQUENCE
        if not self.start_seq:
            config.opt_start_time = self.since.astimezone(UTC).isoformat()
            policy = DeliverPolicy.BY_START_TIME
        self._sub = await self.js.subscribe(
            self.subject, stream=STREAM, ordered_consumer=True, deliver_policy=policy,
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
                STREAM, seq=self.last_seq + 1, subject=self.subject, next=True
            )
        except NotFoundError:
            return True
        return (following.seq or 0) > self.end_seq
