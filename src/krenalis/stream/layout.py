"""The JetStream layout: the stream and consumer names of Krenalis's Go implementation
(github.com/krenalis/krenalis), so either can run on the same NATS.

- Stream `EVENTS`, subjects `events.v1.>`. A message leaves the stream once its pipeline's
  consumer has acked it, which is what "removed only after processing is complete" means. The
  Go implementation uses WorkQueue retention, where each ack deletes its message; with fsync on
  every write that is one fsync per event, so new streams use limits retention and the
  consumers remove what they acked in bulk (`pruning.py`). An existing WorkQueue stream is kept
  as it is (NATS cannot change it), and works as there. Discard policy `new`: if someone sets a
  size limit, a full stream refuses new events (503) instead of dropping unprocessed ones.
- One subject and one durable pull consumer per pipeline and shard:
  `events.v1.<pipeline>.<shard>` consumed by `EVENTS_<pipeline>_<shard>`; exactly one consumer
  per subject (WorkQueue streams enforce it; the pruning relies on it).
- Each source's archive, a copy of every event it sent, is in a stream of its own,
  `EVENTS_ARCHIVE` (subjects `archive.v1.<source>`, limits retention), each copy expiring by
  its own TTL (`Nats-TTL`, hence `allow_msg_ttl`): see `archive.py`. The server stores into
  each stream in series, so two streams take a request's copies in parallel. Earlier versions
  kept the archive in EVENTS, under `events.v1._archive.<source>`: what is left there is read
  until its TTL ends (no pipeline id starts with "_", so no pipeline's subject, consumer or
  purge ever touches it).
- Dead letters live in their own stream, `EVENTS_DLQ` (subjects `dlq.v1.>`, limits retention).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Collection, Mapping

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StoreCompression,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from krenalis.backoff import Backoff
from krenalis.config import Settings

__all__ = [
    "ARCHIVE_PREFIX",
    "ARCHIVE_STREAM",
    "DLQ_STREAM",
    "LEGACY_ARCHIVE_PREFIX",
    "STREAM",
    "archive_stream_config",
    "archive_subject",
    "consumer_name",
    "dlq_stream_config",
    "ensure_consumer",
    "ensure_pipelines",
    "ensure_stream",
    "ensure_streams",
    "legacy_archive_subject",
    "list_pipeline_consumers",
    "remove_pipeline",
    "restore_if_lost",
    "stream_config",
    "subject",
]

log = logging.getLogger("krenalis.stream")

STREAM = "EVENTS"
SUBJECT_PREFIX = "events.v1"
ARCHIVE_STREAM = "EVENTS_ARCHIVE"
#: Where sources' archives are: `archive.v1.<source>`, in ARCHIVE_STREAM.
ARCHIVE_PREFIX = "archive.v1"
#: Where earlier versions kept them, in EVENTS: `events.v1._archive.<source>`.
LEGACY_ARCHIVE_PREFIX = f"{SUBJECT_PREFIX}._archive"
DLQ_STREAM = "EVENTS_DLQ"
DLQ_PREFIX = "dlq.v1"
#: Dead letters are kept this long (Jitsu keeps 7 days; we keep 30).
DLQ_MAX_AGE = 30 * 24 * 3600.0
#: Messages one consumer may have delivered and not yet acked (a worker's in-memory window).
MAX_ACK_PENDING = 20_000


def subject(pipeline: str, shard: int = 0) -> str:
    return f"{SUBJECT_PREFIX}.{pipeline}.{shard}"


def archive_subject(source: str) -> str:
    return f"{ARCHIVE_PREFIX}.{source}"


def legacy_archive_subject(source: str) -> str:
    return f"{LEGACY_ARCHIVE_PREFIX}.{source}"


def consumer_name(pipeline: str, shard: int = 0) -> str:
    return f"{STREAM}_{pipeline}_{shard}"


def dlq_subject(pipeline: str) -> str:
    return f"{DLQ_PREFIX}.{pipeline}"


def stream_config(settings: Settings) -> StreamConfig:
    compression = StoreCompression.S2 if settings.nats_compression == "s2" else None
    return StreamConfig(
        name=STREAM,
        subjects=[f"{SUBJECT_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
        storage=StorageType.MEMORY if settings.nats_storage == "memory" else StorageType.FILE,
        num_replicas=settings.nats_replicas,
        compression=compression,
        duplicate_window=settings.nats_duplicate_window,
        # Atomic batch publish (nats-server 2.12+): one fsync per request's copies.
        allow_atomic=True,
        # Archive copies of earlier versions expire by their own Nats-TTL (2.11+; once on, it
        # cannot be turned off).
        allow_msg_ttl=True,
    )


def archive_stream_config(settings: Settings) -> StreamConfig:
    """The archives' stream: EVENTS' storage and durability, each copy kept until its TTL."""
    return dataclasses.replace(
        stream_config(settings),
        name=ARCHIVE_STREAM,
        subjects=[f"{ARCHIVE_PREFIX}.>"],
        # Nothing reads it by consuming: an operator's size limit, if any, drops the oldest
        # copies rather than refusing events.
        discard=DiscardPolicy.OLD,
    )


def dlq_stream_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=DLQ_STREAM,
        subjects=[f"{DLQ_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.MEMORY if settings.nats_storage == "memory" else StorageType.FILE,
        num_replicas=settings.nats_replicas,
        max_age=DLQ_MAX_AGE,
    )


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """Create or update EVENTS, EVENTS_ARCHIVE and EVENTS_DLQ, waiting as long as JetStream
    is unavailable."""
    await ensure_stream(js, stream_config(settings))
    await ensure_stream(js, archive_stream_config(settings))
    await ensure_stream(js, dlq_stream_config(settings))


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Update the stream, or create it when missing; retry with backoff, log each new reason once."""
    backoff = Backoff(base=0.05, cap=10.0)
    last_reason = ""
    while True:
        await backoff.wait()
        try:
            created = await _update_or_create(js, config)
        except (APIError, TimeoutError, ConnectionError) as exc:
            reason = _unavailable_reason(exc)
            if reason != last_reason:
                log.warning(
                    "Cannot create or update the %s stream; retrying.",
                    config.name,
                    extra={"reason": reason},
                )
                last_reason = reason
            continue
        if last_reason:
            log.info("JetStream became available.")
        if created:
            log.info("%s stream has been created.", config.name)
        return


async def _update_or_create(js: JetStreamContext, config: StreamConfig) -> bool:
    try:
        current = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return True
    if current.config.retention != config.retention:
        # NATS cannot change a stream's retention to or from WorkQueue: keep the existing one.
        log.info(
            "Keeping the existing stream's retention.",
            extra={"stream": config.name, "retention": _value(current.config.retention)},
        )
        config = dataclasses.replace(config, retention=current.config.retention)
    await js.update_stream(config)
    return False


def _value(enum: object) -> object:
    return getattr(enum, "value", enum)


def _unavailable_reason(exc: BaseException) -> str:
    # No responders on $JS.API (503): no JetStream server answers, yet.
    if isinstance(exc, ServiceUnavailableError):
        return "JetStream not enabled; waiting for availability"
    if isinstance(exc, APIError) and exc.err_code == 10039:
        return "JetStream not enabled for this account; waiting for availability"
    if isinstance(exc, APIError):
        return f"{exc.description} (code {exc.err_code})"
    return str(exc) or type(exc).__name__


async def ensure_consumer(js: JetStreamContext, pipeline: str, shard: int, ack_wait: float) -> None:
    """Create the pipeline shard's durable consumer, or update its settings (idempotent)."""
    await js.add_consumer(
        STREAM,
        ConsumerConfig(
            durable_name=consumer_name(pipeline, shard),
            name=consumer_name(pipeline, shard),
            filter_subject=subject(pipeline, shard),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=-1,
            max_ack_pending=MAX_ACK_PENDING,
            max_waiting=512,
        ),
    )


async def list_pipeline_consumers(js: JetStreamContext) -> dict[str, set[int]]:
    """Pipeline -> shards that have a consumer on EVENTS."""
    found: dict[str, set[int]] = {}
    for info in await _consumers(js):
        name = info.name or ""
        pipeline, _, shard = name[len(STREAM) + 1 :].rpartition("_")
        if name.startswith(STREAM + "_") and pipeline and shard.isdigit():
            found.setdefault(pipeline, set()).add(int(shard))
    return found


async def _consumers(js: JetStreamContext) -> list[ConsumerInfo]:
    """Every consumer of EVENTS (the API pages by 256)."""
    found: list[ConsumerInfo] = []
    while True:
        page = await js.consumers_info(STREAM, offset=len(found) or None)
        found.extend(page)
        if len(page) < 256:
            return found


async def remove_pipeline(
    js: JetStreamContext, pipeline: str, shards: Collection[int] | None = None
) -> int:
    """Delete the consumers of these shards of a pipeline (default: all it has) and purge
    their subjects. Only a retirement calls it, once nothing pending is left (see
    krenalis.worker.retire): what it purges are copies already processed and not pruned yet.

    Returns how many messages were purged.
    """
    if shards is None:
        shards = (await list_pipeline_consumers(js)).get(pipeline, set())
    before = await _pipeline_messages(js, pipeline)
    for shard in shards:
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(STREAM, consumer_name(pipeline, shard))
        await js.purge_stream(STREAM, subject=subject(pipeline, shard))
    purged = before - await _pipeline_messages(js, pipeline)
    log.info(
        "Removed the consumers of a retired pipeline.",
        extra={"pipeline": pipeline, "shards": sorted(shards), "purged": purged},
    )
    return purged


async def _pipeline_messages(js: JetStreamContext, pipeline: str) -> int:
    """Messages on the pipeline's subjects (not the whole stream's: archive copies expire
    meanwhile)."""
    info = await js.stream_info(STREAM, subjects_filter=f"{SUBJECT_PREFIX}.{pipeline}.*")
    return sum((info.state.subjects or {}).values())


async def ensure_pipelines(
    js: JetStreamContext, shards: Mapping[str, int], ack_wait: float
) -> None:
    """A consumer for every shard of every pipeline in `shards` (pipeline id -> shard count)."""
    for pipeline, count in shards.items():
        for shard in range(count):
            await ensure_consumer(js, pipeline, shard, ack_wait)


async def restore_if_lost(
    js: JetStreamContext, settings: Settings, shards: Mapping[str, int]
) -> bool:
    """Put EVENTS, EVENTS_ARCHIVE, EVENTS_DLQ and the pipelines' consumers back if the server
    lost them (a memory-storage server that restarted, a stream deleted by hand); True if it
    had to."""
    if not await _stream_missing(js):
        return False
    await ensure_streams(js, settings)
    await ensure_pipelines(js, shards, settings.nats_ack_wait)
    log.warning(
        "Restored the stream layout after a reconnection: the NATS server had lost it.",
        extra={"stream": STREAM, "pipelines": len(shards)},
    )
    return True


async def _stream_missing(js: JetStreamContext, patience: float = 60.0) -> bool:
    """Whether EVENTS or EVENTS_ARCHIVE is gone, once JetStream answers (it may still be
    starting); False if it does not answer within `patience` (the next reconnection asks
    again)."""
    backoff = Backoff(base=0.2, cap=5.0)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(patience):
            while True:
                try:
                    await js.stream_info(STREAM)
                    await js.stream_info(ARCHIVE_STREAM)
                    return False
                except NotFoundError:
                    return True
                except Exception:  # not ready yet, or down again
                    await backoff.wait()
    return False
