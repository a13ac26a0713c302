"""Consuming one pipeline shard: fetch in batches, keep fetched messages alive, settle each once.

Every fetched message is tracked until it is settled (ack, nak or term). While tracked it gets an
`in_progress()` heartbeat every AckWait/3 (three chances before AckWait ends), so long work (a slow warehouse, a
destination retried for hours) never triggers a redelivery while this process lives. On close,
what was not settled is handed back with a nak so another worker gets it at once.

On a limits-retention EVENTS stream (the default) acked and termed messages are then removed in
bulk by a Pruner (see pruning.py); on a WorkQueue stream each ack removes its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from nats.aio.msg import Msg
from nats.errors import MsgAlreadyAckdError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy
from nats.js.errors import ServiceUnavailableError

from krenalis.stream.layout import STREAM, consumer_name, ensure_consumer, subject
from krenalis.stream.pruning import Pruner

__all__ = ["Delivery", "PipelineConsumer"]

log = logging.getLogger("krenalis.stream")

HEARTBEATS_PER_ACK_WAIT = 3


class Delivery:
    """One fetched message; settle it exactly once with ack(), nak() or term()."""

    __slots__ = ("msg", "_consumer", "settled")

    def __init__(self, msg: Msg, consumer: PipelineConsumer) -> None:
        self.msg = msg
        self._consumer = consumer
        self.settled = False

    @property
    def data(self) -> bytes:
        return self.msg.data

    @property
    def headers(self) -> dict[str, str]:
        return self.msg.headers or {}

    @property
    def stream_seq(self) -> int:
        return _stream_seq(self.msg.reply)

    @property
    def num_delivered(self) -> int:
        return self.msg.metadata.num_delivered

    @property
    def stored_at(self) -> datetime:
        """When the message entered the stream (the start of its retry window)."""
        return self.msg.metadata.timestamp

    async def ack(self) -> None:
        if self._settle(done=True):
            await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        if self._settle(done=False):
            await self.msg.nak(delay=delay)

    async def term(self, reason: str = "") -> None:
        """Never redeliver; the message is removed like an acked one."""
        if self._settle(done=True):
            # nats-py's term() takes no reason; the server accepts "+TERM <reason>" (2.10+).
            payload = b"+TERM " + reason.encode()[:512] if reason else b"+TERM"
            await self.msg._client.publish(self.msg.reply, payload)
            self.msg._ackd = True

    def _settle(self, done: bool) -> bool:
        if self.settled:
            return False
        self.settled = True
        self._consumer._untrack(self, done)
        return True


def _stream_seq(reply: str) -> int:
    """The stream sequence in a JetStream ack subject, without building nats-py's whole
    Metadata (a date and five integers: it showed in the worker's profile, once per event).
    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...` has 9 tokens; the form with
    `<domain>.<account hash>` after ACK has 11 or 12, and the sequence two tokens later."""
    tokens = reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


class PipelineConsumer:
    """The durable pull consumer of one pipeline shard, with heartbeats for tracked messages."""

    def __init__(
        self, js: JetStreamContext, pipeline: str, shard: int = 0, *, ack_wait: float = 30.0
    ) -> None:
        self.js = js
        self.pipeline = pipeline
        self.shard = shard
        self.ack_wait = ack_wait
        self.name = consumer_name(pipeline, shard)
        self._sub = None
        self._tracked: dict[int, Delivery] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = False
        self._last_heartbeat_error = ""
        self._leaderless = False
        self.pruner: Pruner | None = None
        self._pruning: asyncio.Task[None] | None = None

    async def start(self, create: bool = True) -> None:
        """Create (or update) the durable consumer and bind to it; with create=False, bind only
        (NotFoundError if it is gone: a removed pipeline must not get its consumer back)."""
        if create:
            await ensure_consumer(self.js, self.pipeline, self.shard, self.ack_wait)
        else:
            await self.js.consumer_info(STREAM, self.name)
        self._sub = await self.js.pull_subscribe_bind(self.name, stream=STREAM)
        self._heartbeat = asyncio.create_task(self._heartbeats(), name=f"heartbeat-{self.name}")
        stream = await self.js.stream_info(STREAM)
        if stream.config.retention == RetentionPolicy.LIMITS:
            self.pruner = Pruner(self.js, self.name, subject(self.pipeline, self.shard))
            self._pruning = asyncio.create_task(self.pruner.run(), name=f"prune-{self.name}")

    @property
    def in_flight(self) -> int:
        """Messages fetched and not settled yet."""
        return len(self._tracked)

    async def fetch(self, batch: int, timeout: float = 1.0) -> list[Delivery]:
        """Up to `batch` messages, waiting at most `timeout`; [] when none came or closing."""
        if self._closing or self._sub is None:
            return []
        try:
            msgs = await self._sub.fetch(batch, timeout=timeout)
        except (TimeoutError, NatsTimeoutError):
            return []
        except (ServiceUnavailableError, NoRespondersError):
            # No leader for this consumer right now (a cluster node died, an election runs):
            # fetch again later. What this worker holds stays held, heartbeats go on.
            if not self._leaderless:
                self._leaderless = True
                log.warning("The consumer has no leader; retrying.", extra={"consumer": self.name})
            await asyncio.sleep(timeout)
            return []
        if self._leaderless:
            self._leaderless = False
            log.info("The consumer has a leader again.", extra={"consumer": self.name})
        deliveries = [Delivery(m, self) for m in msgs]
        for d in deliveries:
            self._tracked[id(d)] = d
        if self._closing:  # closed while fetching: hand them back at once
            await self._nak_all()
            return []
        return deliveries

    def _untrack(self, delivery: Delivery, done: bool = False) -> None:
        self._tracked.pop(id(delivery), None)
        if done and self.pruner is not None:
            self.pruner.settled(delivery.stream_seq)

    async def _heartbeats(self) -> None:
        interval = self.ack_wait / HEARTBEATS_PER_ACK_WAIT
        while True:
            await asyncio.sleep(interval)
            for delivery in list(self._tracked.values()):
                await self._beat(delivery)

    async def _beat(self, delivery: Delivery) -> None:
        if delivery.settled:
            return
        try:
            await delivery.msg.in_progress()
        except MsgAlreadyAckdError:
            self._untrack(delivery)
        except Exception as exc:  # a disconnect: the next beat retries; AckWait is 3 beats long
            text = str(exc) or type(exc).__name__
            if text != self._last_heartbeat_error:
                self._last_heartbeat_error = text
                log.warning(
                    "Cannot notify NATS that a message is still being processed.",
                    extra={"consumer": self.name, "error": text},
                )

    async def close(self) -> None:
        """Stop fetching and heartbeats, and nak what was not settled so it is redelivered now."""
        self._closing = True
        for task in (self._heartbeat, self._pruning):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.pruner is not None:
            # Remove what was acked last, unless NATS is away. Before the naks: a purge drops the
            # consumer's queued redeliveries (they would wait for AckWait instead).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pruner.flush(), 2.0)
        await self._nak_all()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _nak_all(self) -> None:
        for delivery in list(self._tracked.values()):
            with contextlib.suppress(Exception):
                await delivery.nak()
