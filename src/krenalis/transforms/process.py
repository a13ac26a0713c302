"""The worker's side of its transform process: start it, feed it batches, stop what hangs.

**Why a process.** A step is arbitrary code: it may loop for ever, block in a C call, leak
memory or crash the interpreter. Python cannot stop a thread, and a step run in the worker's
own event loop would stop the heartbeats and the writes of the pipeline while it runs. So each
worker with steps runs them in a child process of its own (:mod:`krenalis.transforms.child`),
started when the worker starts, and one pipeline's steps never slow another's. The events go
as the stream's bytes and come back as JSON: the worker decodes what comes back instead of
what it fetched, so its own work per event hardly changes, and the steps run on another core.

**Time limits.** The child stops a step that passes its limit itself (a timer signal raises
inside it; see :mod:`krenalis.transforms.chain`), so the usual runaway loop costs its limit
and nothing else. What the child cannot stop, this side does: the child reports results at
least every 10 ms of work, and if nothing comes for the sum of the steps' limits plus
:data:`GRACE`, the child is killed (SIGKILL), the event it was on goes to the dead letters, and
a new child takes the rest of the batch. A child that dies (a segfault, ``os._exit``) is
replaced the same way. Which event it was on, the child writes before each one into a few
bytes of memory shared with the worker (no system call): events it ran without reporting them
are run again by the new child, so only the culprit fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import pickle
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import msgspec

from krenalis.errors import TransformLoadError
from krenalis.transforms.chain import Result
from krenalis.transforms.frames import (
    HEAD_SIZE,
    PROGRESS,
    Chunk,
    Init,
    Ready,
    Refused,
    frame,
    length_of,
)
from krenalis.transforms.spec import Step

__all__ = [
    "GRACE",
    "LOAD_TIMEOUT",
    "TOTALS",
    "TransformProcess",
    "load_stamps_changed",
    "step_totals",
]

#: Seconds past the steps' own limits before a silent child is killed.
GRACE = 1.0
#: Seconds a child may take to import the functions and open the databases.
LOAD_TIMEOUT = 30.0
#: Each step's figures in this process since it started: (pipeline, step label) ->
#: [in, out, dropped, failed, seconds], summed over shards and restarts (for `status`).
TOTALS: dict[tuple[str, str], list[float]] = {}

_encode_batch = msgspec.msgpack.Encoder().encode
_decode_chunk = msgspec.msgpack.Decoder(Chunk).decode
_decode_answer = msgspec.msgpack.Decoder(Ready | Refused).decode


class TransformProcess:
    """The child process that runs one pipeline's steps for one worker."""

    def __init__(self, pipeline: str, source: str, steps: tuple[Step, ...], base: Path) -> None:
        self.pipeline = pipeline
        self.source = source
        self.steps = steps
        self.base = base
        #: The files of the Python functions, with (mtime_ns, size) as loaded.
        self.files: list[tuple[str, int, int]] = []
        self.hard_limit = sum(step.spec.limit for step in steps) + GRACE
        self._proc: asyncio.subprocess.Process | None = None
        self._labels = [step.label for step in steps]
        self._progress_file = tempfile.TemporaryFile()  # noqa: SIM115 (lives with self)
        self._progress_file.truncate(PROGRESS.size)
        self._progress = mmap.mmap(self._progress_file.fileno(), PROGRESS.size)

    async def start(self) -> None:
        """Start the child and load the steps; TransformLoadError if they cannot be."""
        fd = self._progress_file.fileno()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "krenalis.transforms.child", str(os.getpid()), str(fd),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, pass_fds=(fd,),
        )  # fmt: skip
        init = Init(self.steps, str(self.base.resolve()), self.source, self.pipeline)
        try:
            await self._send(pickle.dumps(init))
            body = await asyncio.wait_for(self._read(), LOAD_TIMEOUT)
        except TimeoutError:
            await self.close()
            raise TransformLoadError(
                None, f"loading the steps took longer than {LOAD_TIMEOUT:g}s (does a module "
                "run for ever when imported?)",
            ) from None  # fmt: skip
        if body is None:
            raise TransformLoadError(None, f"the transform process {await self._ended()} "
                                     "while loading the steps (its error is in the log above)")  # fmt: skip
        answer = _decode_answer(body)
        if isinstance(answer, Refused):
            await self.close()
            raise TransformLoadError(self.steps[answer.index], answer.reason)
        self.files = [tuple(f) for f in answer.files]  # type: ignore[misc]

    async def run(self, items: Sequence[tuple[bytes, float]]) -> list[Result]:
        """One result per item, in order (see :data:`krenalis.transforms.chain.Result`); a
        child killed or dead on an event fails that event, and a new child goes on."""
        results: list[Result] = []
        culprits: dict[int, str] = {}  # position -> why the child was lost on it
        while len(results) < len(items):
            start = len(results)
            if start in culprits:
                results.append(culprits.pop(start))
                continue
            if self._proc is None:
                await self.start()
            end = min(culprits, default=len(items))
            lost = await self._run_some(items[start:end], results)
            if lost is not None:
                reason, at = lost
                culprits[start + at] = reason
        return results

    async def _run_some(
        self, items: Sequence[tuple[bytes, float]], results: list[Result]
    ) -> tuple[str, int] | None:
        """Send ``items``, collect their results; if the child was lost, why and on which of
        them (the events before it that it ran without reporting are run again)."""
        PROGRESS.pack_into(self._progress, 0, 0)
        reported = len(results)
        try:
            await self._send(_encode_batch(items))
        except (BrokenPipeError, ConnectionResetError):
            await self._ended()
            return None  # it died between batches: nothing of this batch was run yet
        while True:
            try:
                body = await asyncio.wait_for(self._read(), self.hard_limit)
            except TimeoutError:
                await self.close()
                reason = (
                    f"a step did not stop at its time limit (nothing for {self.hard_limit:g}s): "
                    "its transform process was killed and replaced"
                )
                return reason, self._lost_at(len(results) - reported)
            if body is None:
                ended = await self._ended()
                reason = f"the transform process {ended} while running this event"
                return reason, self._lost_at(len(results) - reported)
            chunk = _decode_chunk(body)
            results.extend(chunk.results)
            self._count(chunk.stats)
            if chunk.done:
                return None

    def _lost_at(self, reported: int) -> int:
        """The position, in the batch sent, of the event the lost child was running (at
        least the first one it had not reported)."""
        return max(reported, int(PROGRESS.unpack_from(self._progress, 0)[0]))

    def _count(self, stats: list[list[float]]) -> None:
        for label, (events_in, events_out, dropped, failed, seconds) in zip(
            self._labels, stats, strict=True
        ):
            if not events_in:
                continue
            _add_metrics(self.pipeline, label, events_in, events_out, dropped, failed, seconds)
            total = TOTALS.setdefault((self.pipeline, label), [0, 0, 0, 0, 0.0])
            for i, value in enumerate((events_in, events_out, dropped, failed, seconds)):
                total[i] += value

    async def _send(self, body: bytes) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(frame(body))
        await self._proc.stdin.drain()

    async def _read(self) -> bytes | None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            head = await self._proc.stdout.readexactly(HEAD_SIZE)
            return await self._proc.stdout.readexactly(length_of(head))
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None

    async def _ended(self) -> str:
        """Wait for the dead child; how it ended, in words."""
        proc, self._proc = self._proc, None
        if proc is None:
            return "ended"
        code = await proc.wait()
        return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"

    async def close(self) -> None:
        """Stop the child: the end of its input, then SIGKILL if it does not go at once."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 1.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def step_totals() -> list[list[object]]:
    """:data:`TOTALS` as [pipeline, step, in, out, dropped, failed, seconds] rows (for the
    service registry, so that `krenalis status` shows them)."""
    return [[pipeline, step, *figures] for (pipeline, step), figures in sorted(TOTALS.items())]


def _add_metrics(pipeline: str, step: str, events_in: float, events_out: float,
                 dropped: float, failed: float, seconds: float) -> None:  # fmt: skip
    # Imported here, not with the module: `workspace apply` imports this module through the
    # CLI, and prometheus_client must not be imported before `serve` has chosen where metrics
    # live (see krenalis.cli; tests/test_cli.py checks it).
    from krenalis import metrics

    events = metrics.STEP_EVENTS
    events.labels(pipeline, step, "in").inc(events_in)
    if events_out:
        events.labels(pipeline, step, "out").inc(events_out)
    if dropped:
        events.labels(pipeline, step, "dropped").inc(dropped)
    if failed:
        events.labels(pipeline, step, "failed").inc(failed)
    metrics.STEP_SECONDS.labels(pipeline, step).inc(seconds)


def load_stamps_changed(files: list[tuple[str, int, int]]) -> bool:
    """Whether a function's file changed since it was loaded (or is gone)."""
    for path, mtime, size in files:
        try:
            stat = os.stat(path)
        except OSError:
            return True
        if (stat.st_mtime_ns, stat.st_size) != (mtime, size):
            return True
    return False
