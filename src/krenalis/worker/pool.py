"""Running one worker per enabled pipeline shard, and following workspace changes live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from krenalis.backoff import Backoff
from krenalis.sinks.base import Sink
from krenalis.sinks.warehouse import WarehouseSink
from krenalis.worker.pipeline import PipelineWorker, WorkerSettings
from krenalis.worker.retire import DiscardSink
from krenalis.workspace.load import parse_workspace
from krenalis.workspace.model import Destination, Pipeline, Workspace
from krenalis.workspace.store import Retirement

__all__ = ["Workers", "make_sink"]

log = logging.getLogger("krenalis.worker")

#: A worker that ran this long (seconds) before crashing restarts without the crash-loop backoff.
HEALTHY_RUN = 60.0


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
    ) -> None:
        self.js = js
        # False in serve's worker process: serve owns the layout and removes consumers.
        self.create_consumers = create_consumers
        self.ack_wait = ack_wait
        self.warehouse_dsn = warehouse_dsn
        self.only = only
        self.running: dict[tuple[str, int], _Running] = {}

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
        for key, running in list(self.running.items()):
            if wanted.get(key) != running.want:
                await self._stop(key)
        for key, want in wanted.items():
            if key not in self.running:
                self._start(key, want)

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
        worker = PipelineWorker(
            self.js, pipeline.id, sink, shard=key[1], settings=settings,
            create_consumer=self.create_consumers,
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
        await asyncio.gather(*(self._stop(key) for key in list(self.running)))


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
