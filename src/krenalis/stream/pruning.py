"""Removing what a pipeline shard has finished with from a limits-retention EVENTS stream.

On a WorkQueue stream every ack deletes its message, and with `sync_interval: always` each of
those deletes is written and fsynced on its own: about 5-6k a second on a 2-core VM,
which capped end-to-end delivery (bench/RESULTS.md). EVENTS is therefore created with limits
retention, and the messages a consumer has settled are removed in bulk instead: twice a second
the consumer's ack floor (every message of its subject at or below it is acked or termed, by
whichever process) is read and the subject is purged up to it, one write for thousands of
messages (about 27k removed/s against 6k, same server, same disk).

A message that waits for a retry holds the ack floor back while later ones are acked. Those
later ones are then deleted one by one once they have waited STRAGGLER_AFTER seconds above the
floor, so a retry that lasts hours does not keep hours of processed events on disk.

An EVENTS stream created with WorkQueue retention (by an earlier version, or by Krenalis's Go
implementation) cannot be changed to limits retention; there acks delete, and nothing here runs.

The consumer (consumer.py) drives the pruner: the read of the consumer's state that tells it
whether the consumer was made again is also the one the pruner works from. A consumer made again
starts over, and the sequences remembered from before are forgotten (`forget`): deleting by them
would delete another pipeline's messages, or the new ones that took the same sequences.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from krenalis.stream.layout import STREAM

__all__ = ["Pruner"]

log = logging.getLogger("krenalis.stream")

STRAGGLER_AFTER = 5.0
#: Individual deletes in flight at once.
DELETE_WINDOW = 64


class Pruner:
    """Purges one consumer's subject up to the consumer's ack floor, and deletes stragglers."""

    def __init__(
        self, js: JetStreamContext, consumer: str, subject: str, created: datetime | None = None
    ) -> None:
        self.js = js
        self.consumer = consumer
        self.subject = subject
        self.floor = 0
        #: (when, stream sequence) of messages this process settled, oldest first.
        self._settled: list[tuple[float, int]] = []
        self._dirty = False
        self._last_error = ""
        self._straggling = False
        #: When the consumer was created: a consumer made again (a memory-storage server that
        #: restarted empty) starts over at sequence 1, and what we remember means nothing there.
        self._consumer_created = created

    @property
    def dirty(self) -> bool:
        """Whether something was settled (or left above the floor) since the last prune."""
        return self._dirty

    def settled(self, seqs: list[int]) -> None:
        """Messages were acked or termed: each may go once the ack floor passes it."""
        now = time.monotonic()
        self._settled.extend([(now, seq) for seq in seqs])
        self._dirty = True

    def forget(self, created: datetime | None) -> None:
        """The consumer was made again at `created` (None: it is gone): the sequences of the old
        one mean nothing now."""
        self.floor, self._settled, self._dirty = 0, [], False
        self._consumer_created = created

    async def prune_logged(self, info: ConsumerInfo | None = None) -> None:
        """prune(), with a failure logged once (NATS down, an election): retried next round."""
        try:
            await self.prune(info)
        except Exception as exc:
            self._dirty = True
            text = str(exc) or type(exc).__name__
            if text != self._last_error:
                self._last_error = text
                log.warning(
                    "Cannot remove processed events from the stream; retrying.",
                    extra={"consumer": self.consumer, "error": text},
                )
            return
        self._last_error = ""

    async def flush(self, attempts: int = 10) -> None:
        """The last prune of a closing consumer: acks are applied by the server a moment after
        they are sent, so look a few times until this process's settled messages are gone
        (they may also stay above a floor another process holds)."""
        for _ in range(attempts):
            await self.prune_logged()
            if not self._settled:
                return
            await asyncio.sleep(0.05)

    async def prune(self, info: ConsumerInfo | None = None) -> int:
        """Remove settled messages, from `info` (the consumer's state, read now if not given);
        return how many of this process's settled ones went."""
        self._dirty = False
        if info is None:
            info = await self.js.consumer_info(STREAM, self.consumer)
        if self._consumer_created != info.created:
            if self._consumer_created is not None:
                self.forget(info.created)  # never delete by an old stream's sequences
            self._consumer_created = info.created
        floor = info.ack_floor.stream_seq or 0
        if floor > self.floor:
            await self.js.purge_stream(STREAM, subject=self.subject, seq=floor + 1)
            self.floor = floor
            if self._straggling:
                self._straggling = False
                log.info("The ack floor moves again.", extra={"consumer": self.consumer})
        before = len(self._settled)
        self._settled = [(at, seq) for at, seq in self._settled if seq > floor]
        await self._delete_stragglers(delivered=info.delivered.stream_seq or 0)
        if self._settled:
            self._dirty = True  # come back for them
        return before - len(self._settled)

    async def _delete_stragglers(self, delivered: int) -> None:
        cutoff = time.monotonic() - STRAGGLER_AFTER
        # Only sequences this consumer has delivered: a message is deleted by sequence alone.
        old = [seq for at, seq in self._settled if at <= cutoff and seq <= delivered]
        if not old:
            return
        if not self._straggling:
            self._straggling = True
            log.info(
                "A retried event holds the ack floor: deleting processed events one by one.",
                extra={"consumer": self.consumer, "ack_floor": self.floor},
            )
        for start in range(0, len(old), DELETE_WINDOW):
            await asyncio.gather(*(self._delete(seq) for seq in old[start : start + DELETE_WINDOW]))
        gone = set(old)
        self._settled = [(at, seq) for at, seq in self._settled if seq not in gone]

    async def _delete(self, seq: int) -> None:
        with contextlib.suppress(NotFoundError):  # already purged, or deleted by another process
            await self.js.delete_msg(STREAM, seq)
