"""`krenalis serve`, `krenalis collector` and `krenalis worker`: the long-running processes.

`serve` runs everything: the collector in its own process (plus KRENALIS_HTTP_WORKERS - 1
collector children sharing the port) and one worker per enabled pipeline shard in a child
`krenalis worker` process, so that each gets a core. It owns the stream layout. Without
KRENALIS_NATS_URL it starts the bundled nats-server; without a warehouse in the workspace file
it starts an embedded PostgreSQL; both live in KRENALIS_DATA_DIR and stop with it.

Every process follows the workspace stored in NATS (:mod:`krenalis.runtime.follow`); serve with
its embedded NATS, or a process given a file, also applies that file when it changes or on
SIGHUP. SIGINT/SIGTERM stop gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nats.micro.service import Service

from krenalis.collector.app import Collector, MetricsApp
from krenalis.collector.server import HTTPServer, listening_socket
from krenalis.config import Settings
from krenalis.runtime.children import Child
from krenalis.runtime.follow import Follower
from krenalis.runtime.memory import settle_garbage_collector
from krenalis.runtime.service import register
from krenalis.runtime.stream import StreamRuntime
from krenalis.sinks.warehouse import EmbeddedPostgres, init_db
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import restore_if_lost
from krenalis.stream.tail import TailInterest
from krenalis.transforms.process import step_totals
from krenalis.worker.backfill import Backfiller
from krenalis.worker.pool import Workers
from krenalis.worker.retire import Retirer
from krenalis.workspace.load import load_workspace, parse_workspace
from krenalis.workspace.model import Workspace
from krenalis.workspace.starter import write_starter_workspace
from krenalis.workspace.store import Revision, WorkspaceStore

__all__ = ["init_warehouse", "run_collector", "run_worker", "serve"]

log = logging.getLogger("krenalis")


@dataclass
class Roles:
    collector: bool = True
    workers: bool = True
    only_pipelines: set[str] = field(default_factory=set)
    #: serve: put the stream layout back when a server lost it (memory storage).
    manage_layout: bool = True
    #: serve: workers run in a child `krenalis worker` process, on the other core.
    worker_process: bool = False


async def serve(settings: Settings) -> int:
    if settings.embedded_nats:
        # Zero setup: a first run gets a workspace file to edit. With a NATS of their own,
        # people apply theirs (`krenalis workspace apply`): nothing is written for them.
        write_starter_workspace(settings.workspace_path, settings.http_port)
    return await _run(settings, Roles(worker_process=True), "krenalis-serve")


async def run_collector(settings: Settings) -> int:
    return await _run(settings, Roles(workers=False, manage_layout=False), "krenalis-collector")


async def run_worker(settings: Settings, pipelines: set[str]) -> int:
    roles = Roles(collector=False, only_pipelines=pipelines, manage_layout=False)
    return await _run(settings, roles, "krenalis-worker")


async def init_warehouse(settings: Settings) -> int:
    """`krenalis init-db`: create the tables in the configured (or embedded) warehouse."""
    dsn = await _configured_dsn(settings)
    # quiet: the change is printed here, once, rather than also logged.
    if dsn is not None:
        change = await init_db(dsn, quiet=True)
        print(f"Warehouse tables are ready: {change}.", file=sys.stderr)
        return 0
    with EmbeddedPostgres(settings.data_dir / "postgres") as postgres:
        change = await init_db(postgres.dsn, quiet=True)
    where = settings.data_dir / "postgres"
    print(f"Embedded warehouse tables are ready in {where}: {change}.", file=sys.stderr)
    return 0


async def _configured_dsn(settings: Settings) -> str | None:
    """KRENALIS_WAREHOUSE_DSN, else the workspace's warehouse: the local file's if there is
    one, else the one stored in NATS (with a KRENALIS_NATS_URL); None: the embedded one."""
    if settings.warehouse_dsn is not None:
        return settings.warehouse_dsn.reveal()
    if settings.workspace_path.exists():
        workspace = load_workspace(settings.workspace_path)
    elif settings.nats_urls:
        workspace = await _stored_workspace(settings)
    else:
        return None
    return workspace.warehouse.dsn if workspace and workspace.warehouse else None


async def _stored_workspace(settings: Settings) -> Workspace | None:
    conn = NatsConnection(settings, name="krenalis-init-db")
    await conn.connect(timeout=10)
    try:
        revision = await (await WorkspaceStore(conn.js, settings).open()).current()
    finally:
        await conn.close()
    return (
        parse_workspace(revision.text, f"workspace revision {revision.number}")
        if revision
        else None
    )


async def _run(settings: Settings, roles: Roles, name: str) -> int:
    process = _Process(settings, roles, name)
    try:
        await process.start()
        settle_garbage_collector()
        if settings.child:
            log.info("Child process ready.", extra={"role": name})
        else:
            log.info("Krenalis is ready; press Ctrl+C to stop.", extra={"role": name})
        await process.wait()
    finally:
        await process.stop()
    return 0


class _Process:
    def __init__(self, settings: Settings, roles: Roles, name: str) -> None:
        self.settings = settings
        self.roles = roles
        self.name = name
        self.runtime = StreamRuntime(settings, name=name)
        self.postgres: EmbeddedPostgres | None = None
        self.workers: Workers | None = None
        self.collector: Collector | None = None
        self.http: HTTPServer | None = None
        self.metrics_http: HTTPServer | None = None
        self.children: list[Child] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.service: Service | None = None
        self.follower: Follower | None = None
        self.changing = asyncio.Lock()
        self.stop_event = asyncio.Event()

    async def start(self) -> None:
        await self._start_metrics()
        local = self._local_file()
        conn = await self.runtime.start()
        self.settings = self.runtime.settings  # now holds the embedded server's URL, if any
        store = await WorkspaceStore(conn.js, self.settings).open()
        self.follower = Follower(conn.js, self.settings, store, local, self._use)
        revision, workspace = await self.follower.start()
        self.revision, self.workspace = revision, workspace
        if self.roles.manage_layout:
            conn.on_reconnect(self._restore_layout)
        await self._start_roles(conn, workspace, revision)
        self.service = await register(conn.nc, self._role(), self._state, step_totals)
        self._install_signals()
        self.tasks.append(asyncio.create_task(self.follower.run(), name="workspace-follower"))
        log.info("Workspace revision in use.", extra={"revision": revision.number})

    async def _start_metrics(self) -> None:
        """/metrics on KRENALIS_METRICS_ADDR, never on the ingestion port. serve's children
        have none: serve's listener answers for them (they share the metrics directory)."""
        if not self.settings.metrics_enabled or self.settings.child:
            return
        host, port = self.settings.metrics_addr
        sock = listening_socket(host, port, setting="KRENALIS_METRICS_ADDR", shared=False)
        self.metrics_http = HTTPServer(
            MetricsApp(self.settings.metrics_dir), sock, max_connections=64, name="Metrics"
        )
        await self.metrics_http.start()

    def _local_file(self) -> Path | None:
        """The workspace file this process applies: serve's own with its embedded NATS, or
        one the operator named; a child of serve applies none (serve does)."""
        if self.settings.child:
            return None
        if self.settings.workspace_named or (
            self.roles.manage_layout and self.settings.embedded_nats
        ):
            return self.settings.workspace_path
        return None

    async def _start_roles(self, conn, workspace: Workspace, revision: Revision) -> None:
        if self.roles.worker_process:
            dsn = await self._warehouse(workspace, always=True)
            self._start_child("worker", KRENALIS_WAREHOUSE_DSN=dsn or "")
        elif self.roles.workers:
            dsn = await self._warehouse(workspace)
            tail = await TailInterest().start(conn.nc)
            self.workers = Workers(
                conn.js, ack_wait=self.settings.nats_ack_wait, warehouse_dsn=dsn,
                only=self.roles.only_pipelines or None, create_consumers=False,
                code_dir=self.settings.code_dir, tail=tail,
            )  # fmt: skip
            await self.workers.apply(workspace, revision.retired)
            store = self.follower.store  # type: ignore[union-attr]
            retirer = Retirer(conn.nc, conn.js, store)
            self.tasks.append(asyncio.create_task(retirer.run(), name="retirer"))
            backfiller = Backfiller(conn.nc, store, self.settings)
            self.tasks.append(asyncio.create_task(backfiller.run(), name="backfiller"))
        if self.roles.collector:
            await self._start_collector(conn, workspace, revision)

    def _role(self) -> str:
        if self.roles.manage_layout:
            return "serve"
        return "collector" if self.roles.collector else "worker"

    def _state(self) -> tuple[int, list[str]]:
        """What this process runs now, for the service registry (and so for `status`)."""
        if self.collector is not None:
            revision = self.collector.routing_revision
        else:
            revision = self.revision.number
        pipelines = self.workers.pipelines() if self.workers is not None else []
        return revision, pipelines

    async def _warehouse(self, workspace: Workspace, always: bool = False) -> str | None:
        """The warehouse DSN: KRENALIS_WAREHOUSE_DSN, the file's, or an embedded PostgreSQL
        (started when a pipeline needs it, or `always`, for serve's worker process)."""
        if not always and not any(p.to_warehouse for p in workspace.enabled_pipelines()):
            return None
        if self.settings.warehouse_dsn is not None:
            dsn = self.settings.warehouse_dsn.reveal()
        elif workspace.warehouse is not None:
            dsn = workspace.warehouse.dsn
        else:
            self.postgres = EmbeddedPostgres(self.settings.data_dir / "postgres")
            await asyncio.to_thread(self.postgres.start)
            dsn = self.postgres.dsn
            # The DSN names the password file rather than holding the password: showing it
            # tells people where to look, and it works as is with psql.
            log.info(
                "Embedded warehouse ready; query the events view there.",
                extra={"dsn": dsn, "password_file": str(self.postgres.password_file)},
            )
        await init_db(dsn)
        return dsn

    async def _start_collector(self, conn, workspace: Workspace, revision: Revision) -> None:
        self.collector = Collector(conn, workspace, revision.number)
        await self.collector.tail.start(conn.nc)
        sock = listening_socket(self.settings.http_host, self.settings.http_port)
        self.http = HTTPServer(
            self.collector, sock, max_connections=self.settings.http_max_connections
        )
        await self.http.start()
        for _ in range(self.settings.http_workers - 1):
            # KRENALIS_HTTP_WORKERS=1: a child serves, it does not spawn collectors of its own.
            self._start_child("collector", KRENALIS_HTTP_WORKERS="1")

    def _start_child(self, command: str, **env: str) -> None:
        number = sum(c.command == command for c in self.children)
        # The whole environment, not only the settings: a child also needs PATH, HOME... With
        # the embedded NATS no URL: the child finds serve's server and its key in the data
        # directory (runtime/stream.py), so the key never travels in an environment variable.
        urls = {"KRENALIS_NATS_URL": ",".join(self.settings.nats_urls)}
        child_env = {**os.environ, **({} if self.runtime.embedded else urls), **env}
        pid_path = self.settings.data_dir / "run" / f"{command}-{number}.pid"
        child = Child(command, child_env, pid_path)
        child.start()
        self.children.append(child)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._sighup()))

    async def _sighup(self) -> None:
        """SIGHUP: apply the local file now (if this process has one), else read NATS now."""
        assert self.follower is not None
        if self.follower.local is not None:
            await self.follower.apply_local("SIGHUP")
        await self.follower.step()

    async def _use(self, revision: Revision, workspace: Workspace) -> None:
        """A new revision: route by it, and run the workers it asks for."""
        async with self.changing:
            self.revision, self.workspace = revision, workspace
            if self.collector is not None:
                self.collector.set_workspace(workspace, revision.number)
            if self.workers is not None:
                if self.workers.warehouse_dsn is None:
                    self.workers.warehouse_dsn = await self._warehouse(workspace)
                await self.workers.apply(workspace, revision.retired)
        log.info(
            "Workspace revision in use.",
            extra={"revision": revision.number, "pipelines": len(workspace.enabled_pipelines())},
        )

    async def _restore_layout(self) -> None:
        """After a reconnection: a server that came back without its state (memory storage, a
        stream deleted by hand) gets EVENTS, the consumers and the workspace revision back."""
        assert self.follower is not None
        async with self.changing:
            js = self.runtime.conn.js  # type: ignore[union-attr]
            shards = _shards(self.workspace, self.revision)
            if await restore_if_lost(js, self.settings, shards):
                await self.follower.store.restore(self.revision)

    async def wait(self) -> None:
        await self.stop_event.wait()
        log.info("Stopping.")

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.service is not None:
            with contextlib.suppress(Exception):
                await self.service.stop()
        if self.http is not None:
            await self.http.stop()
        await asyncio.gather(*(child.stop() for child in self.children))
        if self.workers is not None:
            await self.workers.stop_all()
        await self.runtime.stop()
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)
        if self.metrics_http is not None:  # last: a scrape sees the process until it ends
            await self.metrics_http.stop()


def _shards(workspace: Workspace, revision: Revision) -> dict[str, int]:
    """Pipeline id -> shards with a consumer: every pipeline's (disabled ones keep theirs), and
    the retiring ones'."""
    shards = {p.id: p.shards for p in workspace.pipelines.values()}
    for retirement in revision.retired:
        count = max(retirement.shards) + 1
        shards[retirement.pipeline] = max(shards.get(retirement.pipeline, 0), count)
    return shards
