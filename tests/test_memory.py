"""The garbage collector's settings of a long-running process (runtime/memory.py)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_settling_freezes_start_up_and_collects_less_often() -> None:
    # In a process of its own: the test run keeps its own collector as it is.
    code = (
        "import gc, json\n"
        "from krenalis.runtime.memory import settle_garbage_collector as settle\n"
        "before = (gc.get_threshold(), gc.get_freeze_count())\n"
        "settle()\n"
        "print(json.dumps([before, (gc.get_threshold(), gc.get_freeze_count())]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    (threshold, frozen), (threshold_after, frozen_after) = json.loads(out.stdout)
    assert frozen == 0
    assert threshold_after == [100_000, *threshold[1:]]  # the older generations as they were
    assert frozen_after > 1000  # the modules, classes and objects start-up made
