"""The live tail's protocol: who is watching, and where collectors and workers tell them.

`krenalis tail` announces its interest every second on a core NATS subject (a heartbeat:
which sources, which pipelines), and at once when a process that just started asks (so that
it does not miss a second of events). Every collector and worker process subscribes to those
announcements (:class:`TailInterest`) and, only while a fresh one exists (the last within
:data:`EXPIRY` seconds), publishes what the tail asked for on core NATS subjects: requests
with their accepted and rejected events (collectors, one message per request), and the
outcomes of the events (workers, one message per batch). While nobody tails, a process holds
one idle subscription and checks one number per request or batch: nothing to measure
(bench/RESULTS.md, "Live tail"). Core NATS, not JetStream: nothing is stored, a tail that
cannot keep up loses lines, never slows a collector.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = [
    "EXPIRY",
    "HEARTBEAT",
    "HELLO_SUBJECT",
    "INTEREST_SUBJECT",
    "Interest",
    "UNKNOWN_SOURCE",
    "TailInterest",
    "events_subject",
    "outcomes_subject",
    "publish",
]

#: Seconds between two announcements of a tail.
HEARTBEAT = 1.0
#: Seconds an announcement lasts: a tail that stopped (or lost NATS) costs nothing after it.
EXPIRY = 3.0
INTEREST_SUBJECT = "krenalis.tail.v1.interest"
#: Where a process that just started asks the tails to announce themselves now.
HELLO_SUBJECT = "krenalis.tail.v1.hello"
_EVENTS = "krenalis.tail.v1.events"
_OUTCOMES = "krenalis.tail.v1.outcomes"
#: Where requests refused as a whole go, when their source is not known.
UNKNOWN_SOURCE = "_unknown"

_encode = msgspec.json.Encoder().encode


def events_subject(source: str) -> str:
    """Where collectors publish a source's requests (`*` in place of the source: all)."""
    return f"{_EVENTS}.{source}"


def outcomes_subject(pipeline: str) -> str:
    """Where workers publish a pipeline's outcomes (`*`: all)."""
    return f"{_OUTCOMES}.{pipeline}"


class Interest(msgspec.Struct, frozen=True):
    """One tail's announcement: its id, and the sources and pipelines it shows (empty: all)."""

    id: str
    sources: tuple[str, ...] = ()
    pipelines: tuple[str, ...] = ()
    #: True in the last announcement of a tail that stops: forget it at once.
    bye: bool = False

    def wants_source(self, source: str) -> bool:
        return not self.sources or source in self.sources

    def wants_pipeline(self, pipeline: str, source: str) -> bool:
        return self.wants_source(source) and (not self.pipelines or pipeline in self.pipelines)


_decode_interest = msgspec.json.Decoder(Interest).decode


@dataclass
class _Watcher:
    interest: Interest
    until: float


class TailInterest:
    """The tails watching now, as their announcements say (see the module docstring)."""

    def __init__(self) -> None:
        self._watchers: dict[str, _Watcher] = {}
        #: monotonic() before which some announcement is fresh: the one number checked per
        #: request while nobody tails.
        self.until = 0.0
        self._sub: Subscription | None = None
        self.nc: Client | None = None

    async def start(self, nc: Client) -> TailInterest:
        self.nc = nc
        self._sub = await nc.subscribe(INTEREST_SUBJECT, cb=self._on_announcement)
        with contextlib.suppress(Exception):  # no tail, or NATS away: nothing to learn now
            await nc.publish(HELLO_SUBJECT, b"")
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    @property
    def active(self) -> bool:
        """Whether some tail is watching (cheap: a clock read and a comparison)."""
        return time.monotonic() < self.until

    def wants_source(self, source: str) -> bool:
        return self.active and any(w.interest.wants_source(source) for w in self._fresh())

    def wants_pipeline(self, pipeline: str, source: str) -> bool:
        return self.active and any(
            w.interest.wants_pipeline(pipeline, source) for w in self._fresh()
        )

    def _fresh(self) -> list[_Watcher]:
        now = time.monotonic()
        return [w for w in self._watchers.values() if w.until > now]

    async def _on_announcement(self, msg: Msg) -> None:
        try:
            interest = _decode_interest(msg.data)
        except msgspec.DecodeError:
            return  # not one of ours
        if interest.bye:
            self._watchers.pop(interest.id, None)
        else:
            self._watchers[interest.id] = _Watcher(interest, time.monotonic() + EXPIRY)
        now = time.monotonic()
        self._watchers = {k: w for k, w in self._watchers.items() if w.until > now}
        self.until = max((w.until for w in self._watchers.values()), default=0.0)


async def publish(nc: Client | None, subject: str, record: Any) -> None:
    """Send a record to the tails (core NATS: no answer awaited, nothing stored); a failure
    (NATS away) costs the record only."""
    if nc is None:
        return
    with contextlib.suppress(Exception):
        await nc.publish(subject, _encode(record))
