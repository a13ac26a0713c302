"""Dead letters: events a pipeline gave up on, kept in EVENTS_DLQ with the reason.

A dead letter is the event's message bytes on `dlq.v1.<pipeline>` with headers saying why,
after how many attempts and since when. It is stored (PubAck) before the event is removed
from EVENTS, so a crash in between leaves a duplicate at worst, never a loss; the same
`Nats-Msg-Id` makes the second copy a duplicate the stream drops.

That id is `dlq/<pipeline>/<shard>/<generation>/<stream sequence>`: a consumer made again (a
memory-storage server restarted empty, a consumer recreated by hand) delivers new messages under
sequences already used, and without its generation a new dead letter would be taken for an old
one still in the duplicate window and dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from krenalis.stream.layout import DLQ_PREFIX, DLQ_STREAM, dlq_subject, subject
from krenalis.stream.publisher import message_id

__all__ = ["DeadLetter", "dead_letter", "list_dead_letters", "replay", "purge"]

H_PIPELINE = "Krenalis-Pipeline"
H_REASON = "Krenalis-Reason"
H_ATTEMPTS = "Krenalis-Attempts"
H_FIRST = "Krenalis-First-Attempt"
H_SHARD = "Krenalis-Shard"


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    pipeline: str
    shard: int
    reason: str
    attempts: int
    first_attempt: str
    data: bytes

    @property
    def message_id(self) -> str:
        try:
            return str(json.loads(self.data).get("messageId", ""))
        except (ValueError, AttributeError):
            return ""


async def dead_letter(
    js: JetStreamContext,
    *,
    pipeline: str,
    shard: int,
    data: bytes,
    reason: str,
    attempts: int,
    first_attempt: datetime,
    stream_seq: int,
    generation: str,
) -> None:
    """Store one dead letter (awaiting its PubAck); `generation` is the consumer's that
    delivered the event (`Delivery.generation_id`), `stream_seq` the event's sequence."""
    headers = {
        H_PIPELINE: pipeline,
        H_SHARD: str(shard),
        H_REASON: reason.replace("\r", " ").replace("\n", " ")[:1000],
        H_ATTEMPTS: str(attempts),
        H_FIRST: first_attempt.isoformat(),
        "Nats-Msg-Id": f"dlq/{pipeline}/{shard}/{generation}/{stream_seq}",
    }
    await js.publish(dlq_subject(pipeline), data, headers=headers, timeout=10)


def _from_raw(raw: RawStreamMsg) -> DeadLetter:
    headers = raw.headers or {}
    return DeadLetter(
        seq=raw.seq or 0,
        pipeline=headers.get(H_PIPELINE, (raw.subject or "").removeprefix(DLQ_PREFIX + ".")),
        shard=int(headers.get(H_SHARD, "0") or 0),
        reason=headers.get(H_REASON, ""),
        attempts=int(headers.get(H_ATTEMPTS, "0") or 0),
        first_attempt=headers.get(H_FIRST, ""),
        data=raw.data or b"",
    )


async def list_dead_letters(
    js: JetStreamContext,
    pipeline: str | None = None,
    limit: int = 1000,
    start_seq: int | None = None,
) -> list[DeadLetter]:
    """Dead letters in stream order (from `start_seq`), optionally of one pipeline."""
    info = await js.stream_info(DLQ_STREAM)
    found: list[DeadLetter] = []
    seq = max(info.state.first_seq, start_seq or 0)
    filter_subject = dlq_subject(pipeline) if pipeline else f"{DLQ_PREFIX}.>"
    while len(found) < limit and seq <= info.state.last_seq:
        try:
            raw = await js.get_msg(DLQ_STREAM, seq=seq, subject=filter_subject, next=True)
        except NotFoundError:
            break
        found.append(_from_raw(raw))
        seq = (raw.seq or seq) + 1
    return found


async def get_dead_letter(js: JetStreamContext, seq: int) -> DeadLetter:
    return _from_raw(await js.get_msg(DLQ_STREAM, seq=seq))


async def replay(js: JetStreamContext, letter: DeadLetter) -> None:
    """Put the event back into EVENTS for its pipeline, then remove the dead letter."""
    retry_id = message_id(letter.message_id or f"dlq-{letter.seq}", letter.pipeline)
    await js.publish(
        subject(letter.pipeline, letter.shard),
        letter.data,
        headers={"Nats-Msg-Id": f"{retry_id}/replay-{letter.seq}"},
        timeout=10,
    )
    await js.delete_msg(DLQ_STREAM, letter.seq)


async def purge(js: JetStreamContext, pipeline: str | None = None) -> int:
    """Delete dead letters (of one pipeline, or all); return how many."""
    before = (await js.stream_info(DLQ_STREAM)).state.messages
    await js.purge_stream(DLQ_STREAM, subject=dlq_subject(pipeline) if pipeline else None)
    return before - (await js.stream_info(DLQ_STREAM)).state.messages
