"""The transform process: a real child per worker, its time limits, kills and replacements."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest
from helpers_transforms import pipeline_with, wire

from krenalis.errors import TransformLoadError
from krenalis.events import encode_event
from krenalis.transforms.process import TOTALS, TransformProcess

FUNCTIONS = """
import os, sys, time

print("this goes to stderr, not into a frame")

def ok(event):
    print("printing from a step is harmless")
    event["properties"]["ok"] = True
    return event

def stubborn(event):
    if event["messageId"] != "bad":
        return event
    while True:  # swallows the time limit's exception: only a kill stops it
        try:
            time.sleep(5)
        except BaseException:
            pass

def crash(event):
    if event["messageId"] == "bad":
        os._exit(7)
    return event

def pid(event):
    event["properties"]["pid"] = os.getpid()
    return event
"""


@pytest.fixture
def code(tmp_path: Path) -> Path:
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    return tmp_path


def process(code: Path, steps: str) -> TransformProcess:
    pipeline = pipeline_with(steps)
    return TransformProcess(pipeline.id, pipeline.source, pipeline.transform, code)


def items(*ids: str) -> list[tuple[bytes, float]]:
    return [(encode_event(wire(i)), 1.0) for i in ids]


def delivered(result) -> list[str]:
    return [json.loads(data)["messageId"] for data in result[1]]


async def test_events_go_through_the_child_in_order_with_per_step_figures(code):
    proc = process(code, "      - python: fns.py:ok\n      - mask_ip\n")
    TOTALS.clear()
    await proc.start()
    try:
        results = await proc.run(items(*(f"m{i}" for i in range(500))))
    finally:
        await proc.close()
    assert [delivered(r) for r in results] == [[f"m{i}"] for i in range(500)]
    assert TOTALS[("p", "1:python fns.py:ok")][:4] == [500, 500, 0, 0]
    assert TOTALS[("p", "2:mask_ip")][:4] == [500, 500, 0, 0]
    assert proc.files == [(str(code / "fns.py"), *_stamp(code / "fns.py"))]


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


async def test_a_step_that_ignores_its_limit_is_killed_and_the_rest_goes_on(code):
    proc = process(
        code,
        "      - python: fns.py:stubborn\n        timeout: 100ms\n      - python: fns.py:pid\n",
    )
    await proc.start()
    try:
        first = await proc.run(items("a"))
        started = time.monotonic()
        results = await proc.run(items("b", "bad", "c"))
        took = time.monotonic() - started
    finally:
        await proc.close()
    assert delivered(results[0]) == ["b"] and delivered(results[2]) == ["c"]
    assert results[1] == (
        "a step did not stop at its time limit (nothing for 1.3s): its transform process was "
        "killed and replaced"
    )
    assert took < 5
    old_pid = json.loads(first[0][1][0])["properties"]["pid"]
    new_pid = json.loads(results[2][1][0])["properties"]["pid"]
    assert old_pid != new_pid and not psutil.pid_exists(old_pid)


async def test_a_child_that_dies_fails_only_the_event_it_was_on(code):
    proc = process(code, "      - python: fns.py:crash\n")
    await proc.start()
    try:
        results = await proc.run(items("a", "bad", "c"))
    finally:
        await proc.close()
    assert delivered(results[0]) == ["a"] and delivered(results[2]) == ["c"]
    assert results[1] == "the transform process exited with code 7 while running this event"


async def test_steps_that_do_not_load_name_the_step(code):
    proc = process(code, "      - mask_ip\n      - python: fns.py:nothing\n")
    with pytest.raises(TransformLoadError) as caught:
        await proc.start()
    assert caught.value.step.index == 1 and caught.value.step.line == 10
    assert (
        str(caught.value)
        == "transform[1] (python fns.py:nothing): fns.py has no function 'nothing'"
    )


async def test_a_module_that_never_finishes_importing_is_stopped(code, monkeypatch):
    monkeypatch.setattr("krenalis.transforms.process.LOAD_TIMEOUT", 1.0)
    (code / "hangs.py").write_text("while True:\n    pass\n")
    proc = process(code, "      - python: hangs.py:f\n")
    with pytest.raises(TransformLoadError, match="loading the steps took longer than 1s"):
        await proc.start()


async def test_the_child_dies_with_its_parent(code, tmp_path):
    """A worker killed with SIGKILL leaves no transform process behind (PR_SET_PDEATHSIG)."""
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(f"""
import asyncio, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from helpers_transforms import pipeline_with
from krenalis.transforms.process import TransformProcess
from pathlib import Path

async def main():
    p = pipeline_with("      - python: fns.py:ok\\n")
    proc = TransformProcess(p.id, p.source, p.transform, Path({str(code)!r}))
    await proc.start()
    print(proc._proc.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
""")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert psutil.pid_exists(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the transform process outlived its parent"
        time.sleep(0.05)
    assert os.getpid() != child
