"""The one small contract every sink (warehouse, webhook, file, ...) implements.

A sink receives a batch of events (decoded JSON objects, as the collector published them) and
answers, per event, one of three outcomes. The worker turns outcomes into NATS acks: a sink
knows nothing about NATS.

- ``Delivered``: committed (transaction committed, 2xx received, file fsynced) -> ack.
- ``Retry``: a transient failure (connection lost, timeout, 408/429/5xx) -> try again later,
  after ``after`` seconds if the sink knows (``Retry-After``), else the worker's backoff.
- ``Rejected``: a permanent failure (constraint violation, other 4xx) -> dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Delivered", "Event", "Outcome", "Rejected", "Retry", "Sink", "DELIVERED"]

Event = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delivered:
    """The sink committed the event."""


@dataclass(frozen=True, slots=True)
class Retry:
    """A transient failure: the event should be tried again."""

    reason: str
    after: float | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A permanent failure: trying again would not help."""

    reason: str


Outcome = Delivered | Retry | Rejected

DELIVERED = Delivered()


class Sink(Protocol):
    """Where a pipeline's events end up."""

    async def write(self, events: list[Event]) -> list[Outcome]:
        """Write a batch; return one outcome per event, in the same order.

        Raising an exception means "every event of the batch: Retry(str(exc))".
        """
        ...

    async def healthcheck(self) -> None:
        """Raise if the sink cannot work right now (for status and start-up checks)."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...
