"""What a step function gets besides the event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["Context"]


@dataclass(frozen=True, slots=True)
class Context:
    """The second argument of a step function ``def enrich(event, context)``.

    ``source`` and ``pipeline`` are ids from the workspace; ``stored_at`` is the event's time
    in the stream (seconds since the epoch, when the collector stored it).
    """

    source: str
    pipeline: str
    stored_at: float = 0.0

    @property
    def stored_time(self) -> datetime:
        """``stored_at`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.stored_at, UTC)
