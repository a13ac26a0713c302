"""The garbage collector's settings for a long-running process (serve, collector, worker).

Python's cycle collector runs a pass every 700 new container objects, and every tenth pass of a
pass looks through everything older. A worker makes several objects per event (the message, the
delivery, the stored event, the held entry, the row's Struct) and keeps up to 10,000 events
fetched, so those passes cost about 8 us per event, a sixth of its CPU (`python -m bench.drain`:
753 passes and 0.48 s of 2.9 s; bench/RESULTS.md, "Performance"). Once the process has started:

- :func:`gc.freeze` moves what start-up made (modules, classes, settings, connections) out of
  the collector's sight: it lives as long as the process and is never garbage;
- the first generation's threshold goes from 700 to 100,000, so a pass comes every 100,000
  new objects instead (the older generations keep their ratios of 10). At 20,000, a pass
  still came while a worker's held events (about 50,000 tracked objects) were mid-life:
  0.13-0.16 s of passes per 60,000-event drain, against 0.01 s at 100,000, with the same peak
  RSS (bench/MEASURED.md, "The worker, fourth round").

Cycles are still collected, a little later; the memory this holds back is a few megabytes at
most (bench/RESULTS.md keeps the processes' RSS after a burst).
"""

from __future__ import annotations

import gc

__all__ = ["FIRST_GENERATION_THRESHOLD", "settle_garbage_collector"]

#: New container objects between two passes of the cycle collector (Python's default: 700).
FIRST_GENERATION_THRESHOLD = 100_000


def settle_garbage_collector() -> None:
    """Call once start-up is done: freeze what exists, and collect less often from now on."""
    gc.collect()  # what start-up left as garbage goes now, not frozen with the rest
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(FIRST_GENERATION_THRESHOLD, older, oldest)
