"""Running one worker per enabled pipeline shard, and following workspace changes live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from krenalis.backoff import Backoff
from krenalis.sinks.base import Sink
from krenalis.sinks.warehouse import WarehouseSink
from krenalis.worker.pipeline import PipelineWorker, WorkerSettings
from krenalis.workspace.model import Pipeline, Workspace

__all__ = ["Workers", "make_sink"]

log = logging.getLogger("krenalis.worker")

#: A worker that ran this long (seconds) before crashing restarts without the crash-loop backoff.
HEALTHY_RUN = 60.0


def make_sink(pipeline: Pipeline, workspace: Workspace, warehouse_dsn: str | None) -> Sink:
    """A new sink for the pipeline: the warehouse's, or the one its destination's options build."""
    if pipeline.to_warehouse:
        if not warehouse_dsn:
            raise ValueError(f"pipeline {pipeline.id!r} writes to the warehouse, but none is set")
        return WarehouseSink(warehouse_dsn)
    return workspace.destinations[pipeline.to].options.build()


@dataclass
class _Running:
    worker: PipelineWorker
    task: asyncio.Task[None]
    fingerprint: object


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

    def wanted(self, workspace: Workspace) -> dict[tuple[str, int], object]:
        wanted: dict[tuple[str, int], object] = {}
        for pipeline in workspace.enabled_pipelines():
            if self.only and pipeline.id not in self.only:
                continue
            dest = workspace.destinations.get(pipeline.to)
            for shard in range(pipeline.shards):
                wanted[(pipeline.id, shard)] = (pipeline, dest, self.warehouse_dsn)
        return wanted

    async def apply(self, workspace: Workspace) -> None:
        """Stop workers of removed, disabled or changed pipelines; start the missing ones."""
        wanted = self.wanted(workspace)
        for key, running in list(self.running.items()):
            if wanted.get(key) != running.fingerprint:
                await self._stop(key)
        for key, fingerprint in wanted.items():
            if key not in self.running:
                self._start(workspace, key, fingerprint)

    def _start(self, workspace: Workspace, key: tuple[str, int], fingerprint: object) -> None:
        pipeline = workspace.pipelines[key[0]]
        settings = WorkerSettings(
            batch_max_events=pipeline.batch_max_events or 1000,
            batch_max_wait=pipeline.batch_max_wait or 0.5,
            retry_window=pipeline.retry_window,
            ack_wait=self.ack_wait,
        )
        sink = make_sink(pipeline, workspace, self.warehouse_dsn)
        worker = PipelineWorker(
            self.js, pipeline.id, sink, shard=key[1], settings=settings,
            create_consumer=self.create_consumers,
        )  # fmt: skip
        task = asyncio.create_task(_supervise(worker), name=f"worker-{key[0]}-{key[1]}")
        self.running[key] = _Running(worker, task, fingerprint)

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
