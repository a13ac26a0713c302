"""Helpers of the browser tests: finding Chromium, a static server for the test pages (another
origin than the collector), and the RudderStack JS SDK from npm.

Playwright drives Debian's `chromium` (Playwright's own browser download is not reachable
here), launched with the flags below: without the background-networking ones Chromium keeps
calling Google's services, which a closed network refuses.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from krenalis.runtime.processes import free_port

__all__ = [
    "CHROMIUM_ARGS",
    "INSTALL_HINT",
    "RUDDERSTACK_VERSION",
    "PageServer",
    "chromium_executable",
    "install_rudderstack",
]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # tests run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = (
    "Chromium is not installed; the browser tests need it: apt-get install -y chromium "
    "(or set KRENALIS_TEST_CHROMIUM to a Chromium binary). CI's .ci/run installs it."
)
#: The RudderStack JS SDK v3 release the tests install from npm.
RUDDERSTACK_VERSION = "3.34.1"
#: Its build with every plugin inside: the default build fetches plugins from RudderStack's CDN.
RUDDERSTACK_FILE = "dist/npm/modern/bundled/umd/index.js"


def chromium_executable() -> str | None:
    """KRENALIS_TEST_CHROMIUM, else Debian's (or another distribution's) Chromium on PATH."""
    named = os.environ.get("KRENALIS_TEST_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def install_rudderstack(folder: Path) -> Path:
    """`npm install` the RudderStack JS SDK into ``folder``; the path of its browser build."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed; the RudderStack test needs node and npm")
    done = subprocess.run(
        [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(folder),
         f"@rudderstack/analytics-js@{RUDDERSTACK_VERSION}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"npm install of the RudderStack SDK failed:\n{done.stderr[-3000:]}")
    return folder / "node_modules" / "@rudderstack" / "analytics-js" / RUDDERSTACK_FILE


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass


class PageServer:
    """A static HTTP server for the test's pages, on a loopback port of its own: a page it
    serves is on another origin than the collector (another port). ``localhost`` and
    ``127.0.0.1`` reach the same server as two origins."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        handler = functools.partial(_Quiet, directory=str(root))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def origin(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def add(self, name: str, content: str | bytes) -> str:
        """Write a file the server serves; its URL on the 127.0.0.1 origin."""
        path = self.root / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return f"{self.origin()}/{name}"

    @contextlib.contextmanager
    def running(self) -> Iterator[PageServer]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
