"""What a collector tells `krenalis tail`: each request of a watched source, with its accepted
events (and the pipelines that took or filtered each) and its rejected ones (with the reason),
and requests refused as a whole. Only while a tail watches (:mod:`krenalis.stream.tail`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client

from krenalis.events import Rejection
from krenalis.stream.tail import UNKNOWN_SOURCE, TailInterest, events_subject, publish

__all__ = ["CollectorTail"]

#: Bytes of events per message to the tails (NATS refuses messages past its max_payload, 1 MiB
#: by default; a request of 500 KiB grows when its events are enriched).
CHUNK_BYTES = 256 * 1024
#: A rejected event larger than this is shown without its body.
SHOWN_REJECTED_BYTES = 32 * 1024

_encode = msgspec.json.Encoder().encode


class CollectorTail:
    """The collector's side of the tail: cheap to ask while nobody watches."""

    def __init__(self) -> None:
        self.interest = TailInterest()

    async def start(self, nc: Client) -> None:
        await self.interest.start(nc)

    async def stop(self) -> None:
        await self.interest.stop()

    def wants(self, source: str) -> bool:
        """Whether some tail watches this source (a clock read while nobody tails)."""
        return self.interest.active and self.interest.wants_source(source)

    async def request(
        self,
        source: str,
        path: str,
        routed: list[tuple[bytes, list[str]]],
        rejected: Sequence[Rejection],
        items: Sequence[Any],
        pipelines: list[str],
    ) -> None:
        """A request of `source`: its accepted events, in chunks, then its rejected ones."""
        head = {"kind": "request", "time": _now(), "source": source, "path": path}
        chunk: list[dict[str, Any]] = []
        size = 0
        for data, took in routed:
            filtered = [p for p in pipelines if p not in took]
            chunk.append({"event": msgspec.Raw(data), "pipelines": took, "filtered": filtered})
            size += len(data)
            if size >= CHUNK_BYTES:
                await self._send(source, {**head, "accepted": chunk, "rejected": []})
                chunk, size = [], 0
        shown = [_rejection(r, items) for r in rejected]
        if chunk or shown:
            await self._send(source, {**head, "accepted": chunk, "rejected": shown})

    async def refused(
        self, source: str | None, path: str, status: int, code: str, reason: str
    ) -> None:
        """A request refused as a whole (a wrong write key, a body that is not JSON, a 503)."""
        if source is None and not self.interest.active:
            return
        if source is not None and not self.wants(source):
            return
        record = {"kind": "refused", "time": _now(), "source": source, "path": path,
                  "status": status, "code": code, "reason": reason}  # fmt: skip
        await self._send(source or UNKNOWN_SOURCE, record)

    async def _send(self, source: str, record: dict[str, Any]) -> None:
        await publish(self.interest.nc, events_subject(source), record)


def _rejection(rejection: Rejection, items: Sequence[Any]) -> dict[str, Any]:
    event: Any = None
    if 0 <= rejection.index < len(items):
        with contextlib.suppress(TypeError, ValueError, OverflowError, msgspec.EncodeError):
            encoded = _encode(items[rejection.index])
            if len(encoded) <= SHOWN_REJECTED_BYTES:
                event = msgspec.Raw(encoded)
    return {"index": rejection.index, "reason": rejection.reason, "event": event}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
