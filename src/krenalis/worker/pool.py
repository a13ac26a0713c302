"""Running one worker per enabled pipeline shard, and following workspace changes live.

A pipeline with ``transform:`` steps gets a transform process per worker (see
:mod:`krenalis.transforms.process`). Its code is loaded when the worker starts, and again when
a revision changes the pipeline or when the file of one of its functions changes (checked every
second): the new version is loaded in a separate process first, and if it does not load (an
import error, a missing function or database) the running version keeps going and the log
says why, with the step's line in the workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from krenalis.backoff import Backoff
from krenalis.errors import TransformLoadError
from krenalis.sinks.base import Sink
from krenalis.sinks.warehouse import WarehouseSink
from krenalis.stream.tail import TailInterest
from krenalis.transforms.process import TransformProcess, load_stamps_changed
from krenalis.worker.pipeline import PipelineWorker, WorkerSettings
from krenalis.worker.retire import DiscardSink
from krenalis.worker.tail import WorkerTail
from krenalis.workspace.load import parse_workspace
from krenalis.workspace.model import Destination, Pipeline, Workspace
from krenalis.workspace.store import Retirement

__all__ = ["Workers", "make_sink"]

log = logging.getLogger("krenalis.worker")

#: A worker that ran this long (seconds) before crashing restarts without the crash-loop backoff.
HEALTHY_RUN = 60.0
#: Seconds between two looks at the files of the running steps' functions.
CODE_CHECK_INTERVAL = 1.0


def make_sink(
    pipeline: Pipeline, destination: Destination | None, warehouse_dsn: str | None
) -> Sink:
    """A new sink for the pipeline: the warehouse's, or the one its destination's options build."""
    if pipeline.to_warehouse:
        if not warehouse_dsn:
            raise ValueError(f"pipeline {pipeline.id!r} writes to the warehouse, but none is set")
        return WarehouseSink(warehouse_dsn)
    if destination is None:
        raise ValueError(f"pipeline {pipeline.id!r} has no destination {pipeline.to!r}")
    return destination.options.build()


@dataclass(frozen=True)
class _Want:
    """What a worker runs: a worker whose _Want changed is started again."""

    pipeline: Pipeline
    destination: Destination | None
    dsn: str | None
    discard: bool = False

    @classmethod
    def of(
        cls, pipeline: Pipeline, workspace: Workspace, dsn: str | None, discard: bool = False
    ) -> _Want:
        return cls(pipeline, workspace.destinations.get(pipeline.to), dsn, discard)


@dataclass
class _Running:
    worker: PipelineWorker
    task: asyncio.Task[None]
    want: _Want


@lru_cache(maxsize=16)
def _workspace_of(text: str) -> Workspace:
    """A retired pipeline's workspace (as stored when it was retired), read once."""
    return parse_workspace(text, "the revision that retired it")


class Workers:
    """The set of running workers of this process."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        ack_wait: float,
        warehouse_dsn: str | None,
        only: set[str] | None = None,
        create_consumers: bool = True,
        code_dir: Path | None = None,
        tail: TailInterest | None = None,
    ) -> None:
        self.js = js
        #: Who watches with `krenalis tail` (None: nobody can, as in tests of a lone worker).
        self.tail = tail
        #: Where file paths of the steps (functions, databases) start: see transforms.functions.
        self.code_dir = code_dir or Path.cwd()
        # False in serve's worker process: serve owns the layout and removes consumers.
        self.create_consumers = create_consumers
        self.ack_wait = ack_wait
        self.warehouse_dsn = warehouse_dsn
        self.only = only
        self.running: dict[tuple[str, int], _Running] = {}
        self._code_watch: asyncio.Task[None] | None = None
        #: Pipelines whose new code did not load, with the file stamps of that attempt: not
        #: tried again (nor logged again) until those files change.
        self._refused: dict[str, list[tuple[str, int, int]]] = {}

    def wanted(
        self, workspace: Workspace, retired: Sequence[Retirement] = ()
    ) -> dict[tuple[str, int], _Want]:
        """A worker per shard of each enabled pipeline, and per shard being retired (the
        pipeline as it was last defined: drained into its sink, or discarded)."""
        wanted: dict[tuple[str, int], _Want] = {}
        for pipeline in workspace.enabled_pipelines():
            if not self.only or pipeline.id in self.only:
                for shard in range(pipeline.shards):
                    wanted[(pipeline.id, shard)] = _Want.of(pipeline, workspace, self.warehouse_dsn)
        for retirement in retired:
            if self.only and retirement.pipeline not in self.only:
                continue
            old = _workspace_of(retirement.text)
            discard = retirement.mode == "discard"
            want = _Want.of(old.pipelines[retirement.pipeline], old, self.warehouse_dsn, discard)
            wanted.update({(retirement.pipeline, shard): want for shard in retirement.shards})
        return wanted

    async def apply(self, workspace: Workspace, retired: Sequence[Retirement] = ()) -> None:
        """Stop workers of removed, disabled or changed pipelines; start the missing ones."""
        wanted = self.wanted(workspace, retired)
        keep = await self._unloadable(wanted)
        for key, running in list(self.running.items()):
            if wanted.get(key) != running.want and key[0] not in keep:
                await self._stop(key)
        for key, want in wanted.items():
            if key not in self.running:
                self._start(key, want)
        if self._code_watch is None:
            self._code_watch = asyncio.create_task(self._watch_code(), name="code-watch")

    async def _unloadable(self, wanted: dict[tuple[str, int], _Want]) -> set[str]:
        """Running pipelines whose new definition has steps that do not load here: they keep
        their running version (a new pipeline starts anyway: its worker retries the load)."""
        changed = {
            key[0]: want
            for key, want in wanted.items()
            if key in self.running and self.running[key].want != want and _steps_of(want)
        }
        keep: set[str] = set()
        for pipeline, want in changed.items():
            if not await self._loads(want):
                keep.add(pipeline)
        return keep

    async def _loads(self, want: _Want) -> bool:
        """Whether the steps of ``want`` load in a new transform process (logged if not)."""
        pipeline = want.pipeline
        trial = TransformProcess(pipeline.id, pipeline.source, pipeline.transform, self.code_dir)
        try:
            await trial.start()
        except TransformLoadError as exc:
            line = f", line {exc.step.line} of the workspace" if exc.step is not None else ""
            log.error(
                "The pipeline's new steps do not load here; it keeps running its current version.",
                extra={"pipeline": pipeline.id, "error": f"{exc}{line}"},
            )
            return False
        finally:
            await trial.close()
        return True

    async def _watch_code(self) -> None:
        """Until cancelled: restart the workers of a pipeline whose function files changed,
        once the new version loads."""
        while True:
            await asyncio.sleep(CODE_CHECK_INTERVAL)
            for pipeline, running in self._first_shards().items():
                files = running.worker.transform.files if running.worker.transform else []
                refused = self._refused.get(pipeline)
                if not load_stamps_changed(refused if refused is not None else files):
                    continue
                await self._reload_code(pipeline, running)

    async def _reload_code(self, pipeline: str, running: _Running) -> None:
        trial = TransformProcess(pipeline, running.want.pipeline.source,
                                 running.want.pipeline.transform, self.code_dir)  # fmt: skip
        try:
            await trial.start()
        except TransformLoadError as exc:
            self._refused[pipeline] = _stamps_now(running)
            line = f", line {exc.step.line} of the workspace" if exc.step is not None else ""
            log.error(
                "A changed function does not load; the pipeline keeps running its current version.",
                extra={"pipeline": pipeline, "error": f"{exc}{line}"},
            )
            return
        finally:
            await trial.close()
        self._refused.pop(pipeline, None)
        log.info("A function's file changed; reloading the pipeline.", extra={"pipeline": pipeline})
        for key in [k for k in self.running if k[0] == pipeline]:
            want = self.running[key].want
            await self._stop(key)
            self._start(key, want)

    def _first_shards(self) -> dict[str, _Running]:
        """One running worker per pipeline that has Python functions (shards load the same)."""
        first: dict[str, _Running] = {}
        for (pipeline, _), running in sorted(self.running.items()):
            if running.worker.transform is not None and pipeline not in first:
                first[pipeline] = running
        return first

    def pipelines(self) -> list[str]:
        """The pipelines this process runs a worker for."""
        return sorted({pipeline for pipeline, _ in self.running})

    def _start(self, key: tuple[str, int], want: _Want) -> None:
        pipeline = want.pipeline
        settings = WorkerSettings(
            batch_max_events=pipeline.batch_max_events or 1000,
            batch_max_wait=pipeline.batch_max_wait or 0.5,
            retry_window=pipeline.retry_window,
            ack_wait=self.ack_wait,
        )
        sink = DiscardSink() if want.discard else make_sink(pipeline, want.destination, want.dsn)
        transform = None
        if _steps_of(want):
            transform = TransformProcess(pipeline.id, pipeline.source, pipeline.transform,
                                         self.code_dir)  # fmt: skip
        tail = None
        if self.tail is not None:
            tail = WorkerTail(self.tail, pipeline.id, pipeline.source, key[1])
        worker = PipelineWorker(
            self.js, pipeline.id, sink, shard=key[1], settings=settings,
            create_consumer=self.create_consumers, transform=transform, tail=tail,
        )  # fmt: skip
        task = asyncio.create_task(_supervise(worker), name=f"worker-{key[0]}-{key[1]}")
        self.running[key] = _Running(worker, task, want)

    async def _stop(self, key: tuple[str, int]) -> None:
        running = self.running.pop(key)
        running.worker.stop()
        try:
            await asyncio.wait_for(asyncio.shield(running.task), 30)
        except TimeoutError:
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running.task
        await running.worker.sink.aclose()

    async def stop_all(self) -> None:
        if self._code_watch is not None:
            self._code_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._code_watch
            self._code_watch = None
        await asyncio.gather(*(self._stop(key) for key in list(self.running)))


def _steps_of(want: _Want) -> bool:
    """Whether the worker of ``want`` runs transform steps (a discarded backlog skips them)."""
    return bool(want.pipeline.transform) and not want.discard


def _stamps_now(running: _Running) -> list[tuple[str, int, int]]:
    """The stamps of the running version's files as they are now (to wait for their next
    change after a failed load)."""
    stamps = []
    for path, _, _ in running.worker.transform.files if running.worker.transform else []:
        try:
            stat = os.stat(path)
            stamps.append((path, stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append((path, 0, 0))
    return stamps


async def _supervise(worker: PipelineWorker) -> None:
    """Run a worker; if it crashes (NATS gone for long, a bug), log it and start it again.

    The wait before a restart ends as soon as the worker is asked to stop, and a stopped worker
    is never started again: a removed pipeline's consumer must not be recreated, and stopping
    (a reload, a shutdown) must not wait for the backoff.
    """
    backoff = Backoff(base=1.0, cap=60.0)
    while not worker.stopping:
        started = time.monotonic()
        try:
            await worker.run()
            return
        except asyncio.CancelledError:
            raise
        except NotFoundError:
            worker.last_error = "the pipeline's consumer does not exist"
            log.warning(
                "The pipeline's consumer is gone (removed from the workspace?); waiting.",
                extra={"pipeline": worker.pipeline, "shard": worker.shard},
            )
        except Exception as exc:
            worker.last_error = str(exc) or type(exc).__name__
            log.error(
                "Worker crashed; restarting.",
                extra={"pipeline": worker.pipeline, "error": worker.last_error},
                exc_info=True,
            )
        if time.monotonic() - started >= HEALTHY_RUN:
            backoff.reset()  # a crash after a long healthy run is not part of a crash loop
        if await worker.sleep_unless_stopped(1.0 + backoff.next_delay()):
            return
        worker.reset()
