"""What a pipeline worker tells `krenalis tail`: each event's outcome (delivered, retried,
dead-lettered, or filtered by a transform step), one message per batch, only while a tail
watches the pipeline (:mod:`krenalis.stream.tail`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from krenalis.events import StoredEvent
from krenalis.stream.tail import TailInterest, outcomes_subject, publish

__all__ = ["WorkerTail"]

#: Outcomes kept for the next message at most (a tail that asks for more than a batch a
#: flush can carry loses the rest, never slows the worker).
MAX_BUFFERED = 5000


class _Summary(msgspec.Struct):
    messageId: str = ""  # noqa: N815 (the event's own key)
    type: str = ""
    event: str | None = None


_summary = msgspec.json.Decoder(_Summary).decode


class WorkerTail:
    """One pipeline shard's outcomes, buffered until the worker's next round."""

    def __init__(self, interest: TailInterest, pipeline: str, source: str, shard: int) -> None:
        self.interest = interest
        self.pipeline = pipeline
        self.source = source
        self.shard = shard
        self._buffer: list[dict[str, Any]] = []

    @property
    def on(self) -> bool:
        """Whether a tail watches this pipeline (a clock read while nobody tails)."""
        return self.interest.active and self.interest.wants_pipeline(self.pipeline, self.source)

    def note(self, outcome: str, events: list[StoredEvent] | bytes, **details: Any) -> None:
        """An outcome of a message: its events as held, or its stream bytes."""
        if len(self._buffer) >= MAX_BUFFERED:
            return
        for about in _about(events):
            self._buffer.append({"outcome": outcome, **about, **details})

    async def flush(self) -> None:
        if not self._buffer:
            return
        record = {"kind": "outcomes", "time": _now(), "pipeline": self.pipeline,
                  "source": self.source, "shard": self.shard, "outcomes": self._buffer}  # fmt: skip
        self._buffer = []
        await publish(self.interest.nc, outcomes_subject(self.pipeline), record)


def _about(events: list[StoredEvent] | bytes) -> list[dict[str, Any]]:
    datas = [events] if isinstance(events, bytes) else [e.data for e in events]
    return [_summarized(data) for data in datas]


def _summarized(data: bytes) -> dict[str, Any]:
    try:
        summary = _summary(data)
    except msgspec.DecodeError:
        return {"messageId": "", "type": "", "event": None}
    return {"messageId": summary.messageId, "type": summary.type, "event": summary.event}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
