"""Each source's archive: a copy of every event it sent, kept in EVENTS for a while.

The collector stores, with the pipelines' copies of a request and in the same atomic batch
(:mod:`krenalis.stream.publisher`), one archive copy of each accepted event on
`events.v1._archive.<source>`, whether a pipeline takes the event or not: a pipeline created
later can be given the past (`backfill`), and `krenalis replay` can send events again. Each
copy carries `Nats-TTL`: the stream removes it by itself when the source's retention ends
(`archive: 7d` in the workspace, the default). No pipeline consumer reads these subjects and
nothing purges them; `status` shows each archive's size and the time it spans.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg, RetentionPolicy
from nats.js.errors import NotFoundError

from krenalis.stream.layout import ARCHIVE_PREFIX, STREAM, archive_subject
from krenalis.stream.publisher import OutMessage, header_safe

__all__ = [
    "ArchiveSpan",
    "archive_copy",
    "archive_possible",
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


async def archive_possible(js: JetStreamContext) -> bool:
    """Whether EVENTS can keep archives: not a WorkQueue stream (made by Krenalis's Go
    implementation or an earlier version), where nothing can read a subject without consuming
    it, and copies nobody consumes would only take disk until their TTL."""
    retention = (await js.stream_info(STREAM)).config.retention
    return getattr(retention, "value", retention) != RetentionPolicy.WORK_QUEUE.value


async def stream_counts(js: JetStreamContext) -> tuple[int, int]:
    """(pipelines' copies, archive copies) in EVENTS, from one answer of the server."""
    info = await js.stream_info(STREAM, subjects_filter=f"{ARCHIVE_PREFIX}.*")
    archived = sum((info.state.subjects or {}).values())
    return info.state.messages - archived, archived


async def archive_spans(js: JetStreamContext) -> dict[str, ArchiveSpan]:
    """Every source's archive in EVENTS, by source id (none: an empty mapping)."""
    try:
        info = await js.stream_info(STREAM, subjects_filter=f"{ARCHIVE_PREFIX}.*")
    except NotFoundError:
        return {}
    counts = info.state.subjects or {}
    spans = await asyncio.gather(*(_span(js, subj, n) for subj, n in counts.items()))
    return {span.source: span for span in spans if span is not None}


async def _span(js: JetStreamContext, subject: str, count: int) -> ArchiveSpan | None:
    source = subject.removeprefix(ARCHIVE_PREFIX + ".")
    try:
        first = await js.get_msg(STREAM, seq=1, subject=subject, next=True)
        last = await js.get_last_msg(STREAM, subject)
    except NotFoundError:  # expired meanwhile
        return None
    samples = [first, last] + await _samples(js, subject, first.seq or 0, last.seq or 0)
    mean = sum(_stored_size(m) for m in samples) / len(samples)
    return ArchiveSpan(source, count, first.time, last.time, round(mean * count))


async def _samples(js: JetStreamContext, subject: str, first: int, last: int) -> list[RawStreamMsg]:
    """A few copies spread between the first and the last (copies differ in size)."""
    step = (last - first) // (SAMPLES + 1)
    if step <= 0:
        return []
    found = []
    for n in range(1, SAMPLES + 1):
        with contextlib.suppress(NotFoundError):
            found.append(await js.get_msg(STREAM, seq=first + n * step, subject=subject, next=True))
    return found


def _stored_size(msg: RawStreamMsg) -> int:
    headers = len(base64.b64decode(msg.hdrs)) if msg.hdrs else 0  # nats-py keeps them base64
    return len(msg.subject or "") + headers + len(msg.data or b"") + RECORD_OVERHEAD
