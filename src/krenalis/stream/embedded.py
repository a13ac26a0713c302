"""The bundled nats-server, run as a child process: the zero-setup default and the test server.

`krenalis serve` starts one when KRENALIS_NATS_URL is unset: JetStream with file storage in
`<data dir>/nats`, listening on a loopback port, stopped with the program. Tests use the same
class for single nodes and 3-node clusters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import nats

from krenalis._process import stop_leftover
from krenalis.stream.natsserver import nats_server_path, quote

__all__ = ["EmbeddedNats", "NatsServerError", "free_port", "local_cluster", "wait_for_jetstream"]

log = logging.getLogger("krenalis.stream")


class NatsServerError(RuntimeError):
    """The nats-server process could not be started."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _saved_port(path: Path) -> int | None:
    """The port written by the last run, if it can be bound again."""
    with contextlib.suppress(OSError, ValueError):
        port = int(path.read_text())
        with socket.socket() as s:
            # As nats-server binds: the last run's connections in TIME_WAIT do not hold the port.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        return port
    return None


class EmbeddedNats:
    """One nats-server process with JetStream, on 127.0.0.1."""

    def __init__(
        self,
        store_dir: str | Path,
        *,
        port: int | None = None,
        server_name: str | None = None,
        cluster_port: int | None = None,
        routes: list[str] | None = None,
        sync_interval: str = "always",
        auth_block: str = "",
        jetstream: bool = True,
        remember_port: bool = False,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self._port_given = port is not None
        #: Reuse the port of the last run on this store, so a restart keeps the same URL.
        self.remember_port = remember_port
        self._server_name = server_name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.sync_interval = sync_interval
        self.auth_block = auth_block
        self.jetstream = jetstream
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def server_name(self) -> str:
        return self._server_name or f"krenalis-{self.port}"

    @property
    def port_path(self) -> Path:
        return self.store_dir / "port"

    @property
    def config_path(self) -> Path:
        return self.store_dir / "nats-server.conf"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    @property
    def pid_path(self) -> Path:
        return self.store_dir / "nats-server.pid"

    def config_text(self) -> str:
        lines = [
            f"server_name: {quote(self.server_name)}",
            f"listen: 127.0.0.1:{self.port}",
            f"pid_file: {quote(str(self.pid_path.resolve()))}",
            "max_payload: 1MB",
        ]
        if self.jetstream:
            lines += [
                "jetstream {",
                f"  store_dir: {quote(str(self.store_dir.resolve() / 'jetstream'))}",
                # fsync before acknowledging: an acknowledged event survives an OS crash or
                # power loss, not only a process crash (see docs/nats.md).
                f"  sync_interval: {quote(self.sync_interval)}",
                "}",
            ]
        if self.cluster_port:
            routes = ", ".join(quote(r) for r in self.routes)
            lines += [
                "cluster {",
                '  name: "krenalis"',
                f"  listen: 127.0.0.1:{self.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        if self.auth_block:
            lines.append(self.auth_block)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until it accepts client connections."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # Two servers must never share a store: stop one a killed `serve` left running.
        stop_leftover(self.pid_path, str(self.config_path.resolve()).encode())
        if self.remember_port and not self._port_given:
            self.port = _saved_port(self.port_path) or self.port
        self.config_path.write_text(self.config_text())
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [nats_server_path(), "-c", str(self.config_path.resolve())],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        if self.remember_port:
            self.port_path.write_text(str(self.port))
        log.info("Embedded NATS server started.", extra={"url": self.url, "pid": self.process.pid})

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with code {self.process.returncode}: "
                    f"{self._log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        raise NatsServerError(f"nats-server did not accept connections within {timeout:g}s")

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (nats-server shuts down cleanly), then SIGKILL if it lingers."""
        if not self.running:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        log.info("Embedded NATS server stopped.", extra={"url": self.url})

    def kill(self) -> None:
        """SIGKILL, for fault tests and failed starts."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_cluster(root: Path, size: int = 3, *, sync_interval: str = "2m") -> list[EmbeddedNats]:
    """`size` JetStream nodes (n0, n1, ...) on loopback, routed to each other; not started.

    The NATS default sync interval: replication, not fsync, protects a cluster's writes.
    """
    ports = [free_port() for _ in range(size)]
    cluster_ports = [free_port() for _ in range(size)]
    routes = [f"nats://127.0.0.1:{p}" for p in cluster_ports]
    return [
        EmbeddedNats(
            root / f"n{i}",
            port=ports[i],
            server_name=f"n{i}",
            cluster_port=cluster_ports[i],
            routes=[r for j, r in enumerate(routes) if j != i],
            sync_interval=sync_interval,
        )
        for i in range(size)
    ]


async def wait_for_jetstream(urls: list[str], timeout: float = 30.0) -> None:
    """Wait until JetStream answers (a cluster's meta layer needs a leader: a few seconds)."""
    nc = await nats.connect(urls)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            try:
                await js.account_info()
                return
            except Exception:  # no meta leader yet: timeouts, 503s
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)
    finally:
        await nc.close()
