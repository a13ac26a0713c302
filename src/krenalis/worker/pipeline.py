"""The pipeline worker: fetch -> batch -> sink -> ack / retry / dead-letter.

One worker consumes one pipeline shard. It is the only place where a sink's outcomes become
NATS acknowledgements:
- Delivered: ack (the message leaves EVENTS);
- Retry: keep the message (heartbeats stop NATS from redelivering it) and try again after an
  exponential backoff with jitter (1 s doubling to 5 min, or the sink's Retry-After), until the
  pipeline's retry window (default 4 h, counted from when the event entered the stream) ends;
- Rejected, or the window ended: store a dead letter in EVENTS_DLQ, then term the message.

Per-user order: once an event of a user waits for a retry, that user's later events wait behind
it, so a destination never sees a user's events out of order. Other users are not held up.

Transform steps: a pipeline with a ``transform:`` list runs each fetched batch through its own
transform process (:mod:`krenalis.transforms.process`) before holding it, once, in fetch order
(a retried event is not transformed again). An event the steps drop is acked and counted as
filtered; one they fail goes to the dead letters with the reason; one they fan out is held as
several events that are acked together, once the sink took them all.

When the consumer turns out to have been made again (see consumer.py), the events fetched from
the old one are dropped without a word to NATS: the new consumer delivers them again, or they
went with the old stream.

While `krenalis tail` watches the pipeline, each outcome is also told to it (``tail``, see
:mod:`krenalis.worker.tail`), once per round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime

from nats.js import JetStreamContext

from krenalis import metrics
from krenalis.backoff import retry_delay
from krenalis.errors import InvalidEvent
from krenalis.events import StoredEvent
from krenalis.sinks.base import Delivered, Outcome, Rejected, Retry, Sink, reader_of
from krenalis.stream.consumer import Delivery, PipelineConsumer
from krenalis.stream.deadletters import dead_letter
from krenalis.transforms.process import TransformProcess
from krenalis.worker.held import (
    Held,
    WorkerSettings,
    combined,
    count_delivered,
    due_batch,
    forget_settled,
    recovered,
)
from krenalis.worker.tail import WorkerTail

__all__ = ["PipelineWorker", "WorkerSettings"]

log = logging.getLogger("krenalis.worker")

#: Seconds the start-up check of a sink may take (it never holds the worker up for longer).
SINK_CHECK_TIMEOUT = 5.0


class PipelineWorker:
    """Runs one pipeline shard until stopped."""

    def __init__(
        self,
        js: JetStreamContext,
        pipeline: str,
        sink: Sink,
        *,
        shard: int = 0,
        settings: WorkerSettings | None = None,
        create_consumer: bool = True,
        transform: TransformProcess | None = None,
        tail: WorkerTail | None = None,
    ) -> None:
        self.js = js
        self.tail = tail
        self.pipeline = pipeline
        self.shard = shard
        self.sink = sink
        self._read = reader_of(sink)
        self.transform = transform
        self.settings = settings or WorkerSettings()
        self.consumer = PipelineConsumer(js, pipeline, shard, ack_wait=self.settings.ack_wait)
        self.held: list[Held] = []
        self.last_delivery: float | None = None
        self.last_error = ""
        self._stopping = asyncio.Event()
        self._started_once = False
        self._create_consumer = create_consumer
        self._failing_reason = ""
        #: Set by the fetcher when it added events (or failed): the writer looks again.
        self._arrived = asyncio.Event()
        self._fetch_error: BaseException | None = None
        #: Events fetched and being transformed (counted as held for the back-pressure).
        self._transforming = 0
        #: The consumer generation the held events were checked against.
        self._generation: datetime | None = None

    async def run(self) -> None:
        if self._stopping.is_set():  # stopped before it ran: do not (re)create the consumer
            return
        # Only the first start creates the consumer: after a crash it may be gone because the
        # pipeline was removed meanwhile, and must stay gone.
        await self.consumer.start(create=self._create_consumer and not self._started_once)
        if not self._started_once:
            await self._check_sink()
        self._started_once = True
        if self.transform is not None:
            await self.transform.start()  # steps that do not load: the supervisor retries
        log.info("Worker started.", extra={"pipeline": self.pipeline, "shard": self.shard})
        # The next events are fetched while the current batch is written (the fetch and the
        # sink's commit each wait on another server; one after the other they halved delivery).
        self._fetch_error = None  # a failure of an earlier run was raised by that run
        self._transforming = 0
        fetcher = asyncio.create_task(self._fetch_loop(), name=f"fetch-{self.consumer.name}")
        try:
            while not self._stopping.is_set():
                await self.step()
        finally:
            # Stopping: let the current fetch end. A crash: no need to wait.
            await _finish(fetcher, self.settings.batch_max_wait + 2.0 if self.stopping else 0.0)
            await self.consumer.close()  # hands back what was not settled
            if self.transform is not None:
                await self.transform.close()
            metrics.IN_FLIGHT.labels(self.pipeline).set(0)
            log.info("Worker stopped.", extra={"pipeline": self.pipeline, "shard": self.shard})

    async def _check_sink(self) -> None:
        """Say once, at start, when the destination cannot work (a wrong host, a warehouse that
        refuses the login): the worker still runs, retrying each batch until it can."""
        try:
            await asyncio.wait_for(self.sink.healthcheck(), SINK_CHECK_TIMEOUT)
        except Exception as exc:
            self.last_error = str(exc) or type(exc).__name__
            log.warning(
                "The destination does not answer yet; events wait and are retried.",
                extra={"pipeline": self.pipeline, "error": self.last_error},
            )

    def stop(self) -> None:
        """Finish the batch being written, then stop (the rest is redelivered)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """Whether stop() was called."""
        return self._stopping.is_set()

    async def sleep_unless_stopped(self, seconds: float) -> bool:
        """Wait `seconds`, or less if stop() is called meanwhile; return whether it was."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    def reset(self) -> None:
        """Forget the fetched events and bind a new consumer (after a crash: the old one is
        closed and what it held is redelivered)."""
        self.consumer = PipelineConsumer(
            self.js, self.pipeline, self.shard, ack_wait=self.settings.ack_wait
        )
        self.held = []

    async def step(self) -> None:
        """One round: write what is due and settle the outcomes, or wait for events to come
        (from the fetcher) or for the next retry to be due."""
        if self._fetch_error is not None:
            raise self._fetch_error
        if self.consumer.generation != self._generation:
            self._drop_stale()
        self._arrived.clear()  # before looking: an arrival from now on wakes the wait below
        batch = due_batch(self.held, self.settings.batch_max_events)
        if batch:
            outcomes = await self._write(batch)
            await self._settle(batch, outcomes)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), self._wait_for_next_due())
        metrics.IN_FLIGHT.labels(self.pipeline).set(len(self.held))
        if self.tail is not None:
            await self.tail.flush()

    def _drop_stale(self) -> None:
        """Forget the events an older consumer generation delivered (the consumer has already
        stopped tracking them, and sends nothing for them)."""
        self._generation = self.consumer.generation
        self.held = [h for h in self.held if not h.delivery.stale]

    async def _fetch_loop(self) -> None:
        """Keep up to max_held events fetched, until stopped; a failure goes to step().

        With steps, the next batch is fetched while the transform process works on the
        previous one (one batch at a time, so the order is kept)."""
        transforming: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                deliveries = await self._fetch()
                if transforming is not None:
                    await transforming
                    transforming = None
                if self.transform is None or not deliveries:
                    await self._hold(deliveries)
                    continue
                self._transforming = len(deliveries)
                transforming = asyncio.create_task(self._transformed(deliveries))
            if transforming is not None:
                await transforming
        except Exception as exc:
            self._fetch_error = exc
            self._arrived.set()
        finally:
            if transforming is not None and not transforming.done():
                transforming.cancel()  # the worker crashed or gave up waiting: NATS redelivers

    async def _fetch(self) -> list[Delivery]:
        held = len(self.held) + self._transforming
        room = min(self.settings.batch_max_events, self.settings.max_held - held)
        if room <= 0:  # the sink is behind or failing: this is the back-pressure
            await asyncio.sleep(0.1)
            return []
        return await self.consumer.fetch(room, timeout=self.settings.batch_max_wait)

    async def _hold(self, deliveries: list[Delivery]) -> None:
        read = self._read
        for delivery in deliveries:
            try:
                event = read(delivery.msg.data)
            except InvalidEvent as exc:
                await self._dead_letter(Held(delivery, [], ""), f"invalid event data: {exc}")
                continue
            self.held.append(Held(delivery, [event], event.user))
        if deliveries:
            self._arrived.set()

    async def _transformed(self, deliveries: list[Delivery]) -> None:
        """Hold what the steps made of each delivery; ack the dropped, dead-letter the failed."""
        assert self.transform is not None
        items = [(d.data, d.stored_at.timestamp()) for d in deliveries]
        results = await self.transform.run(items)
        for delivery, result in zip(deliveries, results, strict=True):
            if isinstance(result, str):
                metrics.FAILED.labels(self.pipeline).inc()
                await self._dead_letter(Held(delivery, [], ""), result)
                continue
            user, outputs, dropped_by = result
            if not outputs:
                await delivery.ack()
                metrics.FILTERED.labels(self.pipeline).inc()
                self._tell("filtered", delivery.data, step=dropped_by)
                continue
            try:
                events = [self._read(data) for data in outputs]
            except InvalidEvent as exc:
                metrics.FAILED.labels(self.pipeline).inc()
                await self._dead_letter(
                    Held(delivery, [], user), f"the steps made an invalid event: {exc}"
                )
                continue
            self.held.append(Held(delivery, events, user))
        self._transforming = 0
        self._arrived.set()

    def _wait_for_next_due(self) -> float:
        """How long the writer may wait for new events: until the next retry is due, at most
        the batch wait."""
        waits = [h.not_before for h in self.held if h.not_before]
        if len(waits) < len(self.held):
            return 0.05  # something is due now: only pick up what is already there
        if not waits:
            return self.settings.batch_max_wait
        return max(0.05, min(self.settings.batch_max_wait, min(waits) - time.monotonic()))

    async def _write(self, batch: list[Held]) -> list[Outcome]:
        """One outcome per held message (see _combined for one the steps fanned out)."""
        events = [event for held in batch for event in held.events]
        try:
            outcomes = await self.sink.write(events)
        except Exception as exc:  # a sink that raises means "retry them all"
            reason = str(exc) or type(exc).__name__
            return [Retry(reason)] * len(batch)
        if len(outcomes) != len(events):
            return [Retry("the sink answered for a different number of events")] * len(batch)
        if len(events) == len(batch):
            return outcomes
        return combined(batch, outcomes)

    async def _settle(self, batch: list[Held], outcomes: list[Outcome]) -> None:
        done: set[int] = set()
        delivered: list[StoredEvent] = []
        acks: list[Delivery] = []
        for held, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Delivered):
                acks.append(held.delivery)
                delivered.extend(held.events)
                done.add(id(held))
                self._tell("delivered", held.events)
            elif isinstance(outcome, Rejected):
                metrics.FAILED.labels(self.pipeline).inc()
                await self._dead_letter(held, outcome.reason)
                done.add(id(held))
            elif await self._schedule_retry(held, outcome):
                done.add(id(held))
        await self.consumer.ack_all(acks)
        forget_settled(self.held, batch, done)
        if delivered:
            count_delivered(self.pipeline, delivered)
        if recovered(batch, outcomes):
            self._due_now()
        self._note_health(outcomes)

    def _due_now(self) -> None:
        """The sink took a retried event and failed none: the outage is over, so events waiting
        out their backoff go now instead of minutes later (a Retry-After is still honoured)."""
        for held in self.held:
            if not held.sink_wait:
                held.not_before = 0.0

    async def _schedule_retry(self, held: Held, outcome: Retry) -> bool:
        """Plan the next attempt; dead-letter and return True once the window has passed."""
        held.attempts += 1
        held.last_reason = outcome.reason
        age = time.time() - held.delivery.stored_at.timestamp()
        if age >= self.settings.retry_window:
            reason = f"retry window of {self.settings.retry_window:g}s ended: {outcome.reason}"
            await self._dead_letter(held, reason)
            return True
        delay = outcome.after if outcome.after is not None else retry_delay(held.attempts)
        held.not_before = time.monotonic() + delay
        held.sink_wait = outcome.after is not None
        metrics.RETRIED.labels(self.pipeline).inc()
        self._tell("retried", held.events, reason=outcome.reason, attempts=held.attempts,
                   next_in=round(delay, 3))  # fmt: skip
        return False

    async def _dead_letter(self, held: Held, reason: str) -> None:
        delivery = held.delivery
        if not await self.consumer.still_current(delivery):
            return  # an older generation's: redelivered by the new consumer, or gone
        await dead_letter(
            self.js,
            pipeline=self.pipeline,
            shard=self.shard,
            data=delivery.data,
            reason=reason,
            attempts=max(held.attempts, 1),
            first_attempt=delivery.stored_at,
            stream_seq=delivery.stream_seq,
            generation=delivery.generation_id,
        )
        await delivery.term(reason)
        metrics.DEAD_LETTERED.labels(self.pipeline).inc()
        self._tell("dead-lettered", held.events or delivery.data, reason=reason)
        log.warning(
            "Event dead-lettered.",
            extra={"pipeline": self.pipeline, "reason": reason, "seq": delivery.stream_seq},
        )

    def _tell(self, outcome: str, events: list[StoredEvent] | bytes, **details: object) -> None:
        """An outcome for `krenalis tail`, while one watches this pipeline."""
        if self.tail is not None and self.tail.on:
            self.tail.note(outcome, events, **details)

    def _note_health(self, outcomes: list[Outcome]) -> None:
        """Log once when deliveries start failing (or the reason changes) and once on recovery."""
        retry = next((o for o in outcomes if isinstance(o, Retry)), None)
        if any(isinstance(o, Delivered) for o in outcomes):
            self.last_delivery = time.time()
        if retry is not None and retry.reason != self._failing_reason:
            self._failing_reason = self.last_error = retry.reason
            log.warning(
                "Deliveries are failing; retrying.",
                extra={"pipeline": self.pipeline, "reason": retry.reason},
            )
        elif retry is None and self._failing_reason and outcomes:
            self._failing_reason = ""
            log.info("Deliveries recovered.", extra={"pipeline": self.pipeline})


async def _finish(task: asyncio.Task[None], timeout: float) -> None:
    """Let the fetcher end its current fetch (what it gets is then handed back with the rest);
    cancel it if that takes too long."""
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), timeout)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
