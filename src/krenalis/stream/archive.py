"""Each source's archive: a copy of every event it sent, kept in EVENTS_ARCHIVE for a while.

The collector stores, beside the pipelines' copies of a request (and while they are stored
into EVENTS), one archive copy of each accepted event on `archive.v1.<source>` in
EVENTS_ARCHIVE, whether a pipeline takes the event or not: a pipeline created later can be
given the past (`backfill`), and `krenalis replay` can send events again. The request is
answered 200 once both are stored. Each copy carries `Nats-TTL`: the stream removes it by itself
when the source's retention ends (`archive: 7d` in the workspace, the default). Nothing
consumes or purges the archive; `status` shows each archive's size and the time it spans.

Earlier versions kept the archive in EVENTS, on `events.v1._archive.<source>`. What is left
there is an archive's older part until its TTL ends: spans and counts take both, and a replay
reads it first (:mod:`krenalis.replay.reader`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from krenalis.stream.layout import (
    ARCHIVE_PREFIX,
    ARCHIVE_STREAM,
    LEGACY_ARCHIVE_PREFIX,
    STREAM,
    archive_subject,
)
from krenalis.stream.publisher import OutMessage, header_safe

__all__ = [
    "ArchiveSpan",
    "archive_copy",
    "archive_target",
    "archive_message_id",
    "archive_spans",
    "stream_counts",
]

#: Messages read per source to estimate its archive's bytes (the server counts messages per
#: subject, not bytes).
SAMPLES = 5
#: What the file store adds to a message besides its subject, headers and data (record
#: header, sequence, timestamp, checksum), in bytes.
RECORD_OVERHEAD = 30


def archive_message_id(source: str, event_message_id: str) -> str:
    """The archive copy's Nats-Msg-Id: scoped to the source, as messageIds are."""
    return header_safe(event_message_id) + archive_target(source, 1)[1]


def archive_target(source: str, ttl: float) -> tuple[str, str, int]:
    """Where a source's archive copies go: (subject, what follows the messageId in their
    Nats-Msg-Id, TTL in whole seconds, at least one)."""
    return archive_subject(source), f"/_archive.{source}", max(1, math.ceil(ttl))


def archive_copy(source: str, data: bytes, event_message_id: str, ttl: float) -> OutMessage:
    """The archive copy of an event of `source`, kept `ttl` seconds."""
    subject, suffix, seconds = archive_target(source, ttl)
    return OutMessage(subject, data, header_safe(event_message_id) + suffix, seconds)


@dataclass(frozen=True)
class ArchiveSpan:
    """What a source's archive holds: its copies, the time they span, their bytes (about:
    estimated from a few of them)."""

    source: str
    messages: int
    first: datetime | None
    last: datetime | None
    approx_bytes: int


#: Where archives are: (stream, subject prefix), the older (an earlier version's) first.
PLACES = ((STREAM, LEGACY_ARCHIVE_PREFIX), (ARCHIVE_STREAM, ARCHIVE_PREFIX))


async def stream_counts(js: JetStreamContext) -> tuple[int, int]:
    """(pipelines' copies in EVENTS, archive copies in EVENTS_ARCHIVE and left in EVENTS)."""
    info = await js.stream_info(STREAM, subjects_filter=f"{LEGACY_ARCHIVE_PREFIX}.*")
    legacy = sum((info.state.subjects or {}).values())
    try:
        archived = (await js.stream_info(ARCHIVE_STREAM)).state.messages
    except NotFoundError:  # an EVENTS made by an earlier version, before serve ran this one
        archived = 0
    return info.state.messages - legacy, legacy + archived


async def archive_spans(js: JetStreamContext) -> dict[str, ArchiveSpan]:
    """Every source's archive, by source id (none: an empty mapping)."""
    found: list[ArchiveSpan] = []
    for stream, prefix in PLACES:
        try:
            info = await js.stream_info(stream, subjects_filter=f"{prefix}.*")
        except NotFoundError:
            continue
        counts = info.state.subjects or {}
        spans = await asyncio.gather(
            *(
                _span(js, stream, subj, subj.removeprefix(prefix + "."), n)
                for subj, n in counts.items()
            )
        )
        found += [span for span in spans if span is not None]
    merged: dict[str, ArchiveSpan] = {}
    for span in found:  # the older part first
        older = merged.get(span.source)
        merged[span.source] = span if older is None else _joined(older, span)
    return merged


def _joined(older: ArchiveSpan, newer: ArchiveSpan) -> ArchiveSpan:
    return ArchiveSpan(
        newer.source,
        older.messages + newer.messages,
        older.first,
        newer.last,
        older.approx_bytes + newer.approx_bytes,
    )


async def _span(
    js: JetStreamContext, stream: str, subject: str, source: str, count: int
) -> ArchiveSpan | None:
    try:
        first = await js.get_msg(stream, seq=1, subject=subject, next=True)
        last = await js.get_last_msg(stream, subject)
    except NotFoundError:  # expired meanwhile
        return None
    samples = [first, last] + await _samples(js, stream, subject, first.seq or 0, last.seq or 0)
    mean = sum(_stored_size(m) for m in samples) / len(samples)
    return ArchiveSpan(source, count, first.time, last.time, round(mean * count))


async def _samples(
    js: JetStreamContext, stream: str, subject: str, first: int, last: int
) -> list[RawStreamMsg]:
    """A few copies spread between the first and the last (copies differ in size)."""
    step = (last - first) // (SAMPLES + 1)
    if step <= 0:
        return []
    found = []
    for n in range(1, SAMPLES + 1):
        with contextlib.suppress(NotFoundError):
            found.append(await js.get_msg(stream, seq=first + n * step, subject=subject, next=True))
    return found


def _stored_size(msg: RawStreamMsg) -> int:
    headers = len(base64.b64decode(msg.hdrs)) if msg.hdrs else 0  # nats-py keeps them base64
    return len(msg.subject or "") + headers + len(msg.data or b"") + RECORD_OVERHEAD
