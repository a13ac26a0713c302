"""Consuming one pipeline shard: fetch in batches, keep fetched messages alive, settle each once.

Every fetched message is tracked until it is settled (ack, nak or term). While tracked it gets an
`in_progress()` heartbeat every AckWait/3 (three chances before AckWait ends), so long work (a slow warehouse, a
destination retried for hours) never triggers a redelivery while this process lives. On close,
what was not settled is handed back with a nak so another worker gets it at once.

On a limits-retention EVENTS stream (the default) acked and termed messages are then removed in
bulk by a Pruner (see pruning.py); on a WorkQueue stream each ack removes its message.

Generations. A consumer can be made again under the same name: a memory-storage server restarts
empty and `serve` restores the layout, or an operator deletes and recreates it. An ack names the
consumer and the stream sequence only, so an ack from before would settle whatever the new
consumer holds at that sequence. Each delivery therefore carries the generation of the consumer
that delivered it (the consumer's `created` time), and a settle of an older generation than the
consumer's current one sends nothing. The generation is read with the consumer's state: twice a
second while anything is held or settled (the read the pruner needs anyway), before a fetch after
a reconnection or a failed fetch, and before heartbeats and dead letters after a reconnection.
Between a reconnection and that read, settles wait in memory: they go out once the consumer is
known to be the same one, and are dropped if it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime, timedelta

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, RetentionPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError

from krenalis.stream.client import lean_fetch, lean_next_msg, publish_many
from krenalis.stream.layout import STREAM, consumer_name, ensure_consumer, subject
from krenalis.stream.pruning import Pruner

__all__ = ["Delivery", "PipelineConsumer"]

log = logging.getLogger("krenalis.stream")

HEARTBEATS_PER_ACK_WAIT = 3
#: Seconds between two reads of the consumer's state while something is held or settled.
WATCH_INTERVAL = 0.5
#: Seconds a read of the consumer's state may take: during a cluster election it gets no answer,
#: and fetching and settling wait for it after a reconnection (JetStream's default is 5 s).
READ_TIMEOUT = 2.0
#: Seconds to learn whether a consumer that did not answer a fetch was deleted (a deleted one's
#: state answers at once; one without a leader does not answer).
DELETED_TIMEOUT = 0.5

ACK = b"+ACK"
NAK = b"-NAK"
PROGRESS = b"+WPI"
TERM = b"+TERM"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Delivery:
    """One fetched message; settle it exactly once with ack(), nak() or term()."""

    __slots__ = ("msg", "_consumer", "settled", "generation")

    def __init__(self, msg: Msg, consumer: PipelineConsumer, generation: datetime) -> None:
        self.msg = msg
        self._consumer = consumer
        self.settled = False
        #: When the consumer that delivered this message was created.
        self.generation = generation

    @property
    def data(self) -> bytes:
        return self.msg.data

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

    @property
    def stale(self) -> bool:
        """Whether the consumer was made again (or is gone) since this message was delivered:
        settling it would settle another message, so nothing is sent for it."""
        return self.generation != self._consumer.generation

    @property
    def generation_id(self) -> str:
        """The generation as a short token (microseconds since 1970 of the consumer's creation),
        for ids derived from the stream sequence, which starts again in a new generation."""
        return str((self.generation - _EPOCH) // _MICROSECOND)

    async def ack(self) -> None:
        if self._settle(done=True):
            await self._consumer._send(self, ACK)

    async def nak(self, delay: float | None = None) -> None:
        if self._settle(done=False):
            payload = NAK
            if delay:  # as nats-py's nak(delay) writes it
                payload += b" " + json.dumps({"delay": int(delay * 1e9)}).encode()
            await self._consumer._send(self, payload)

    async def term(self, reason: str = "") -> None:
        """Never redeliver; the message is removed like an acked one."""
        if self._settle(done=True):
            # The server accepts "+TERM <reason>" (2.10+); nats-py's term() takes no reason.
            payload = TERM + b" " + reason.encode()[:512] if reason else TERM
            await self._consumer._send(self, payload)

    def _settle(self, done: bool) -> bool:
        """Mark the delivery settled; True if the settle is to be sent."""
        return bool(self._consumer._settle_all([self], done))


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
        # Settles are published on the client directly, and its reconnection count tells
        # whether the server may have changed since the generation was last read.
        self._nc = js._nc
        self.pipeline = pipeline
        self.shard = shard
        self.ack_wait = ack_wait
        self.name = consumer_name(pipeline, shard)
        self._sub = None
        self._tracked: dict[int, Delivery] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_error = ""
        self._leaderless = False
        self.pruner: Pruner | None = None
        #: When the consumer this process is bound to was created; None while it does not exist.
        self.generation: datetime | None = None
        #: The client's reconnection count when the generation was last read (None: read again).
        self._confirmed_at: int | None = None
        #: Settles made while the generation was not confirmed: sent once it is, if unchanged.
        self._deferred: list[tuple[Delivery, bytes]] = []
        #: One read of the consumer's state at a time, so an older answer never wins.
        self._reading = asyncio.Lock()

    async def start(self, create: bool = True) -> None:
        """Create (or update) the durable consumer and bind to it; with create=False, bind only
        (NotFoundError if it is gone: a removed pipeline must not get its consumer back)."""
        if create:
            await ensure_consumer(self.js, self.pipeline, self.shard, self.ack_wait)
        reconnects = self._reconnects()
        info = await self.js.consumer_info(STREAM, self.name)
        self.generation = info.created
        self._confirmed_at = reconnects
        self._sub = await self.js.pull_subscribe_bind(self.name, stream=STREAM)
        lean_next_msg(self._sub._sub)
        self._heartbeat = asyncio.create_task(self._heartbeats(), name=f"heartbeat-{self.name}")
        stream = await self.js.stream_info(STREAM)
        if stream.config.retention == RetentionPolicy.LIMITS:
            self.pruner = Pruner(
                self.js, self.name, subject(self.pipeline, self.shard), created=self.generation
            )
        self._watch_task = asyncio.create_task(self._watch(), name=f"watch-{self.name}")

    @property
    def in_flight(self) -> int:
        """Messages fetched and not settled yet."""
        return len(self._tracked)

    async def fetch(self, batch: int, timeout: float = 1.0) -> list[Delivery]:
        """Up to `batch` messages, waiting at most `timeout`; [] when none came or closing."""
        if self._closing or self._sub is None:
            return []
        # After a reconnection or a failed fetch, learn which consumer answers before fetching:
        # a delivery must carry the generation of the consumer that made it.
        if not self._confirmed() and await self._look() is None:
            await asyncio.sleep(timeout)
            return []
        generation = self.generation
        try:
            msgs = await lean_fetch(self._sub, batch, timeout)
        except (TimeoutError, NatsTimeoutError):
            return []
        except (ServiceUnavailableError, NoRespondersError):
            # No leader for this consumer right now (a cluster node died, an election runs), or
            # no consumer at all (deleted: its state says which, and _gone tells): fetch again
            # later. What this worker holds stays held, heartbeats go on once it is confirmed.
            self._confirmed_at = None
            if not self._leaderless:
                if await self._deleted():
                    await self._look()  # it tells that the consumer is gone, and forgets it
                else:
                    self._leaderless = True
                    log.warning(
                        "The consumer has no leader; retrying.", extra={"consumer": self.name}
                    )
            await asyncio.sleep(timeout)
            return []
        if self._leaderless:
            self._leaderless = False
            log.info("The consumer has a leader again.", extra={"consumer": self.name})
        if generation != self.generation:
            # Made again while fetching: these may be the old consumer's. Unacked, they are
            # redelivered by the new one after AckWait.
            return []
        deliveries = [Delivery(m, self, generation) for m in msgs]
        for d in deliveries:
            self._tracked[id(d)] = d
        if self._closing:  # closed while fetching: hand them back at once
            await self._nak_all()
            return []
        return deliveries

    async def still_current(self, delivery: Delivery) -> bool:
        """Whether `delivery` belongs to the consumer as it is now, reading the consumer's state
        first after an unchecked reconnection (for what is published outside the consumer, such
        as dead letters, which cannot wait like settles do)."""
        if not delivery.stale and not self._confirmed():
            await self._look()
        return not delivery.stale

    def _confirmed(self) -> bool:
        """Connected, and no reconnection since the generation was last read."""
        return self._nc.is_connected and self._nc.stats["reconnects"] == self._confirmed_at

    def _reconnects(self) -> int:
        return self._nc.stats["reconnects"]

    async def ack_all(self, deliveries: list[Delivery]) -> None:
        """Ack each delivery as :meth:`Delivery.ack` does, in one write to the connection
        rather than one publish each (nats-py's publish per ack showed in the worker's
        profile: bench/RESULTS.md, "Performance")."""
        to_send = self._settle_all(deliveries)
        if not to_send:
            return
        if not self._confirmed():
            self._deferred.extend((d, ACK) for d in to_send)
            return
        await publish_many(
            self._nc, [b"PUB %s 4\r\n+ACK\r\n" % d.msg.reply.encode() for d in to_send]
        )

    def _settle_all(self, deliveries: list[Delivery], done: bool = True) -> list[Delivery]:
        """Mark the deliveries not settled yet as settled (`done`: acked or termed, for the
        pruner; else nak'd) and forget them, in one pass for a batch (a call per event showed
        in the worker's profile); return those of the current generation, whose settle is to be
        sent (an older generation's would settle another message)."""
        tracked, generation = self._tracked, self.generation
        to_send = []
        for d in deliveries:
            if d.settled:
                continue
            d.settled = True
            tracked.pop(id(d), None)
            if d.generation == generation:
                to_send.append(d)
        if done and to_send and self.pruner is not None:
            self.pruner.settled([d.stream_seq for d in to_send])
        return to_send

    async def _send(self, delivery: Delivery, payload: bytes) -> None:
        if self._confirmed():
            await self._nc.publish(delivery.msg.reply, payload)
        else:  # the server may have a new consumer of this name: wait until we know
            self._deferred.append((delivery, payload))

    async def _send_deferred(self) -> None:
        sends, self._deferred = self._deferred, []
        for delivery, payload in sends:
            if not delivery.stale:
                with contextlib.suppress(Exception):  # closed meanwhile: AckWait redelivers
                    await self._nc.publish(delivery.msg.reply, payload)

    async def _look(self) -> ConsumerInfo | None:
        """Read the consumer's state and follow its generation; None when it does not exist or
        NATS does not answer (logged once per reason)."""
        if not self._nc.is_connected:
            return None
        try:
            info = await self._read_state()
        except Exception as exc:
            self._warn_once("Cannot read the consumer's state; retrying.", exc)
            return None
        self._last_error = ""
        if info is not None and self._confirmed():
            await self._send_deferred()
        return info

    async def _read_state(self) -> ConsumerInfo | None:
        async with self._reading:
            reconnects = self._reconnects()
            try:
                info = await self.js.consumer_info(STREAM, self.name, timeout=READ_TIMEOUT)
            except NotFoundError:
                self._gone()
                return None
            self._follow(info.created)
            if self._reconnects() == reconnects:  # else this may be the server from before
                self._confirmed_at = reconnects
            return info

    async def _deleted(self) -> bool:
        """Whether the consumer's state says at once that it does not exist (a consumer
        without a leader gives no answer: False after a short wait)."""
        try:
            await self.js.consumer_info(STREAM, self.name, timeout=DELETED_TIMEOUT)
        except NotFoundError:
            return True
        except Exception:  # no answer, no connection: not known to be gone
            return False
        return False

    def _follow(self, created: datetime) -> None:
        """Adopt the consumer's generation; what was delivered by an older one is dropped."""
        if created == self.generation:
            return
        dropped = self._drop_all()
        self.generation = created
        if self.pruner is not None:
            self.pruner.forget(created)  # never delete by an old generation's sequences
        log.warning(
            "The consumer was made again: what was fetched from the old one is dropped.",
            extra={"consumer": self.name, "created": created.isoformat(), "dropped": dropped},
        )

    def _gone(self) -> None:
        """The consumer does not exist: what it delivered can no longer be settled."""
        self._confirmed_at = None
        if self.generation is None:
            return
        dropped = self._drop_all()
        self.generation = None
        if self.pruner is not None:
            self.pruner.forget(None)
        log.warning(
            "The consumer does not exist; waiting for it.",
            extra={"consumer": self.name, "dropped": dropped},
        )

    def _drop_all(self) -> int:
        """Forget every tracked delivery and deferred settle, sending nothing: their messages
        are gone with the old stream, or the new consumer delivers them again."""
        dropped = len(self._tracked)
        for delivery in self._tracked.values():
            delivery.settled = True
        self._tracked.clear()
        self._deferred.clear()
        return dropped

    async def _watch(self) -> None:
        """Read the consumer's state every WATCH_INTERVAL while something is held or settled:
        to notice a consumer made again, and to prune what was settled (one read for both)."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            pruning = self.pruner is not None and self.pruner.dirty
            if not (pruning or self._tracked or self._deferred):
                continue
            info = await self._look()
            if info is not None and pruning and self.pruner is not None:
                await self.pruner.prune_logged(info)

    async def _heartbeats(self) -> None:
        interval = self.ack_wait / HEARTBEATS_PER_ACK_WAIT
        while True:
            await asyncio.sleep(interval)
            if self._tracked and not self._confirmed():
                await self._look()
            for delivery in list(self._tracked.values()):
                await self._beat(delivery)

    async def _beat(self, delivery: Delivery) -> None:
        if delivery.settled or delivery.stale or not self._confirmed():
            return
        try:
            await self._nc.publish(delivery.msg.reply, PROGRESS)
        except Exception as exc:  # a disconnect: the next beat retries; AckWait is 3 beats long
            self._warn_once("Cannot notify NATS that a message is still being processed.", exc)

    def _warn_once(self, message: str, exc: BaseException) -> None:
        text = str(exc) or type(exc).__name__
        if text != self._last_error:
            self._last_error = text
            log.warning(message, extra={"consumer": self.name, "error": text})

    async def close(self) -> None:
        """Stop fetching and heartbeats, and nak what was not settled so it is redelivered now."""
        self._closing = True
        for task in (self._heartbeat, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if (self._deferred or self._tracked) and not self._confirmed():
            # Settles made since a reconnection go out if the consumer is still the same one.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._look(), 2.0)
        if self.pruner is not None and self.generation is not None:
            # Remove what was acked last, unless NATS is away. Before the naks: a purge drops the
            # consumer's queued redeliveries (they would wait for AckWait instead).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pruner.flush(), 2.0)
        await self._nak_all()
        if self._sub is not None:
            await self._release(self._sub._sub)

    async def _release(self, sub: Subscription) -> None:
        """Unsubscribe, handing back what came after the last fetch ended.

        A fetch that times out on our side may leave its pull request open on the server for a
        moment longer; a message delivered meanwhile waits in the subscription's queue for the
        next fetch. A closing consumer has no next fetch: without this, such a message would
        stay unacked until AckWait, holding the ack floor (and the stream's pruning) back."""
        with contextlib.suppress(Exception):
            await self._nc._send_unsubscribe(sub._id)
            await self._nc.flush(timeout=READ_TIMEOUT)  # the server has sent all it will send
        queue = sub._pending_queue
        while not queue.empty():
            msg = queue.get_nowait()
            queue.task_done()
            if msg.data and msg.reply and self._confirmed():  # a stream message, not a status
                with contextlib.suppress(Exception):
                    await self._nc.publish(msg.reply, NAK)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    async def _nak_all(self) -> None:
        for delivery in list(self._tracked.values()):
            with contextlib.suppress(Exception):
                await delivery.nak()
