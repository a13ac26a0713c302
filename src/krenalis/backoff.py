"""The one exponential backoff with jitter, for every retry loop (connections, publishing,
restarting a crashed worker, and retrying a sink).

The jitter spreads retries of many clients over time so that a recovering server is not hit by
all of them at once; half the delay is kept so that a retry never comes too soon.
"""

from __future__ import annotations

import asyncio
import random

__all__ = ["Backoff", "jittered_delay", "retry_delay"]

#: A pipeline's retries: 1 s doubling to 5 min.
RETRY_BASE = 1.0
RETRY_CAP = 300.0


def jittered_delay(base: float, cap: float, attempt: int) -> float:
    """Seconds before retry number `attempt` (1, 2, ...): random in [d/2, d], where
    d = base * 2 ** (attempt - 1), at most `cap`."""
    ceiling = min(cap, base * 2 ** min(attempt - 1, 60))
    return random.uniform(ceiling / 2, ceiling)


def retry_delay(attempt: int) -> float:
    """Seconds before a pipeline retries an event for the `attempt`-th time: 1 s doubling to
    5 min, jittered."""
    return jittered_delay(RETRY_BASE, RETRY_CAP, attempt)


class Backoff:
    """Delays for a retry loop: the first is zero (try at once), then base * 2, base * 4, ...
    up to `cap`, each jittered."""

    def __init__(self, base: float = 0.01, cap: float = 900.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        attempt = self.attempt
        self.attempt += 1
        return 0.0 if attempt == 0 else jittered_delay(self.base, self.cap, attempt + 1)

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        self.attempt = 0
