"""`krenalis serve`: everything in one process."""

from __future__ import annotations

import logging

from krenalis.config import Settings
from krenalis.runtime import StreamRuntime, wait_for_signal

__all__ = ["serve"]

log = logging.getLogger("krenalis")


async def serve(settings: Settings) -> int:
    runtime = StreamRuntime(settings, name="krenalis-serve")
    try:
        await runtime.start()
        log.info("Krenalis is ready; press Ctrl+C to stop.")
        sig = await wait_for_signal()
        log.info("Stopping.", extra={"signal": sig})
    finally:
        await runtime.stop()
    return 0
