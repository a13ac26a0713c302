"""Exponential backoff with full jitter, as the original's tools/backoff."""

from __future__ import annotations

import asyncio
import random

__all__ = ["Backoff"]


class Backoff:
    """Delays for a retry loop: the first is zero, then random in [d/2, d) with d = base * 2**n, capped."""

    def __init__(self, base: float = 0.01, cap: float = 900.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        attempt = self.attempt
        self.attempt += 1
        if attempt == 0:
            return 0.0
        ceiling = min(self.cap, self.base * 2 ** min(attempt, 60))
        return random.uniform(ceiling / 2, ceiling)

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        self.attempt = 0
