"""`krenalis serve`, `krenalis collector` and `krenalis worker`: the long-running processes.

`serve` runs everything: the collector in its own process (plus KRENALIS_HTTP_WORKERS - 1
collector children sharing the port) and one worker per enabled pipeline shard in a child
`krenalis worker` process, so that each gets a core. It owns the stream layout. Without
KRENALIS_NATS_URL it starts the bundled nats-server; without a warehouse in the workspace file
it starts an embedded PostgreSQL; both live in KRENALIS_DATA_DIR and stop with it.
SIGHUP reloads the workspace file; SIGINT/SIGTERM stop gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from krenalis.collector.app import Collector
from krenalis.collector.server import HTTPServer, listening_socket
from krenalis.config import Settings
from krenalis.errors import WorkspaceError
from krenalis.runtime.children import Child
from krenalis.runtime.stream import StreamRuntime
from krenalis.sinks.warehouse import EmbeddedPostgres, init_db
from krenalis.stream.layout import ensure_pipelines, remove_pipelines_except, restore_if_lost
from krenalis.worker.pool import Workers
from krenalis.workspace.load import load_workspace
from krenalis.workspace.model import Workspace
from krenalis.workspace.starter import write_starter_workspace

__all__ = ["init_warehouse", "run_collector", "run_worker", "serve"]

log = logging.getLogger("krenalis")

#: Seconds between routing the new workspace and removing the consumers of deleted pipelines.
RELOAD_GRACE = 2.0
#: Seconds between two checks of the workspace file for changes.
WATCH_INTERVAL = 2.0


@dataclass
class Roles:
    collector: bool = True
    workers: bool = True
    only_pipelines: set[str] = field(default_factory=set)
    #: serve: create missing consumers and remove those of deleted pipelines.
    manage_layout: bool = True
    #: serve: workers run in a child `krenalis worker` process, on the other core.
    worker_process: bool = False


async def serve(settings: Settings) -> int:
    write_starter_workspace(settings.workspace_path, settings.http_port)
    return await _run(settings, Roles(worker_process=True), "krenalis-serve")


async def run_collector(settings: Settings) -> int:
    return await _run(settings, Roles(workers=False, manage_layout=False), "krenalis-collector")


async def run_worker(settings: Settings, pipelines: set[str]) -> int:
    roles = Roles(collector=False, only_pipelines=pipelines, manage_layout=False)
    return await _run(settings, roles, "krenalis-worker")


async def init_warehouse(settings: Settings) -> int:
    """`krenalis init-db`: create the tables in the configured (or embedded) warehouse."""
    workspace = _load(settings)
    if workspace.warehouse is not None:
        await init_db(workspace.warehouse.dsn)
        print("Warehouse tables are ready.", file=sys.stderr)
        return 0
    with EmbeddedPostgres(settings.data_dir / "postgres") as postgres:
        await init_db(postgres.dsn)
    print(
        f"Embedded warehouse tables are ready in {settings.data_dir / 'postgres'}.", file=sys.stderr
    )
    return 0


def _load(settings: Settings) -> Workspace:
    return load_workspace(settings.workspace_path)


async def _run(settings: Settings, roles: Roles, name: str) -> int:
    workspace = _load(settings)
    process = _Process(settings, roles, name)
    try:
        await process.start(workspace)
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
        self.runtime = StreamRuntime(settings, name=name)
        self.postgres: EmbeddedPostgres | None = None
        self.workers: Workers | None = None
        self.collector: Collector | None = None
        self.http: HTTPServer | None = None
        self.children: list[Child] = []
        self.watcher: asyncio.Task[None] | None = None
        self.reloading = asyncio.Lock()
        self.applied_stamp = _file_stamp(settings.workspace_path)
        self.stop_event = asyncio.Event()

    async def start(self, workspace: Workspace) -> None:
        conn = await self.runtime.start()
        self.settings = self.runtime.settings  # now holds the embedded server's URL, if any
        self.workspace = workspace
        if self.roles.manage_layout:
            await self._ensure_consumers(workspace)
            await remove_pipelines_except(conn.js, workspace.pipelines)
            conn.on_reconnect(self._restore_layout)
        if self.roles.worker_process:
            dsn = await self._warehouse(workspace, always=True)
            self._start_child("worker", KRENALIS_WAREHOUSE_DSN=dsn or "")
        elif self.roles.workers:
            dsn = await self._warehouse(workspace)
            self.workers = Workers(
                conn.js, ack_wait=self.settings.nats_ack_wait, warehouse_dsn=dsn,
                only=self.roles.only_pipelines or None,
                create_consumers=not self.settings.child,
            )  # fmt: skip
            await self.workers.apply(workspace)
        if self.roles.collector:
            await self._start_collector(conn, workspace)
        self._install_signals()
        self.watcher = asyncio.create_task(self._watch_workspace(), name="workspace-watcher")

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
            # Local, no password (trust on loopback): showing it tells people where to look.
            log.info("Embedded warehouse ready; query the events view there.", extra={"dsn": dsn})
        await init_db(dsn)
        return dsn

    async def _ensure_consumers(self, workspace: Workspace) -> None:
        """A consumer for every pipeline shard of the file (disabled ones keep theirs)."""
        js = self.runtime.conn.js  # type: ignore[union-attr]
        await ensure_pipelines(js, _shards(workspace), self.settings.nats_ack_wait)

    async def _start_collector(self, conn, workspace: Workspace) -> None:
        self.collector = Collector(conn, workspace)
        sock = listening_socket(self.settings.http_host, self.settings.http_port)
        self.http = HTTPServer(self.collector, sock)
        await self.http.start()
        for _ in range(self.settings.http_workers - 1):
            # KRENALIS_HTTP_WORKERS=1: a child serves, it does not spawn collectors of its own.
            self._start_child("collector", KRENALIS_HTTP_WORKERS="1")

    def _start_child(self, command: str, **env: str) -> None:
        number = sum(c.command == command for c in self.children)
        # The whole environment, not only the settings: a child also needs PATH, HOME...
        child_env = {**os.environ, "KRENALIS_NATS_URL": ",".join(self.settings.nats_urls), **env}
        pid_path = self.settings.data_dir / "run" / f"{command}-{number}.pid"
        child = Child(command, child_env, pid_path)
        child.start()
        self.children.append(child)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))

    async def reload(self) -> None:
        """Apply a changed workspace file. The order matters: consumers exist before the
        collector routes to them, and a removed pipeline's consumer goes only once no
        collector of this process routes to it any more."""
        async with self.reloading:  # a SIGHUP and a file change may come together
            self.applied_stamp = _file_stamp(self.settings.workspace_path)
            try:
                workspace = _load(self.settings)
            except WorkspaceError as exc:
                log.error(
                    "Workspace not reloaded; keeping the previous one.", extra={"error": str(exc)}
                )
                return
            await self._apply(workspace)

    async def _restore_layout(self) -> None:
        """After a reconnection: a server that came back without EVENTS (memory storage, or a
        stream deleted by hand) gets it and the consumers back."""
        async with self.reloading:
            js = self.runtime.conn.js  # type: ignore[union-attr]
            await restore_if_lost(js, self.settings, _shards(self.workspace))

    async def _apply(self, workspace: Workspace) -> None:
        self.workspace = workspace
        if self.roles.manage_layout:
            await self._ensure_consumers(workspace)
        if self.collector is not None:
            self.collector.set_workspace(workspace)
        for child in self.children:
            child.signal(signal.SIGHUP)
        if self.workers is not None:
            if self.workers.warehouse_dsn is None:
                self.workers.warehouse_dsn = await self._warehouse(workspace)
            await self.workers.apply(workspace)
        if self.roles.manage_layout:
            # Requests routed with the old workspace, and child collectors still reloading,
            # may publish to a removed pipeline for a moment: let them finish first.
            await asyncio.sleep(RELOAD_GRACE)
            await remove_pipelines_except(self.runtime.conn.js, workspace.pipelines)  # type: ignore[union-attr]
        log.info("Workspace reloaded.", extra={"pipelines": len(workspace.enabled_pipelines())})

    async def _watch_workspace(self) -> None:
        """Reload when the workspace file changes, as SIGHUP does (checked every 2 s)."""
        path = self.settings.workspace_path
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if _file_stamp(path) != self.applied_stamp and not self.reloading.locked():
                log.info("Workspace file changed; reloading.", extra={"path": str(path)})
                await self.reload()

    async def wait(self) -> None:
        await self.stop_event.wait()
        log.info("Stopping.")

    async def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        if self.http is not None:
            await self.http.stop()
        await asyncio.gather(*(child.stop() for child in self.children))
        if self.workers is not None:
            await self.workers.stop_all()
        await self.runtime.stop()
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)


def _file_stamp(path: Path) -> tuple[float, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime, stat.st_size)


def _shards(workspace: Workspace) -> dict[str, int]:
    """Pipeline id -> shard count, for every pipeline (disabled ones keep their consumers)."""
    return {p.id: p.shards for p in workspace.pipelines.values()}
