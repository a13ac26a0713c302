"""The NATS connection: connect, authenticate, reconnect forever, and know whether the stream is usable.

A process keeps one connection and retries for ever when servers are unreachable: an outage
of NATS must not need a restart of every collector and worker. Unlike nats-py's defaults, wrong credentials fail the first connect at once with a
clear message instead of a two-minute retry budget ending in "no servers available".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.js import JetStreamContext

from krenalis.config import Settings
from krenalis.errors import NatsAuthError, ServerTooOldError
from krenalis.stream.client import Client

__all__ = [
    "MIN_SERVER_VERSION",
    "NatsConnection",
    "check_server_version",
    "connect_options",
]

log = logging.getLogger("krenalis.stream")

#: The oldest nats-server the event stream works with: 2.12 brought atomic batch publish
#: (ADR-50), which a request's copies use, and is what Krenalis's setup guide requires.
MIN_SERVER_VERSION = (2, 12, 0)
#: How long ingestion waits for a dropped connection to come back before answering 503.
UP_GRACE_SECONDS = 0.2






def connect_options(settings: Settings, urls: Sequence[str] | None = None) -> dict[str, Any]:
    """nats.connect() keyword arguments for these settings (servers and credentials only)."""
    servers = [u if "://" in u else "nats://" + u for u in (urls or settings.nats_urls)]
    options: dict[str, Any] = {"servers": servers}
    if settings.nats_nkey is not None:
        options["nkeys_seed_str"] = settings.nats_nkey.reveal()
    if settings.nats_creds is not None:
        options["user_credentials"] = str(settings.nats_creds)
    if settings.nats_token is not None:
        options["token"] = settings.nats_token.reveal()
    if settings.nats_user:
        options["user"] = settings.nats_user
    if settings.nats_password is not None:
        options["password"] = settings.nats_password.reveal()
    return options


def _redact(servers: Sequence[str]) -> str:
    """Server URLs without any user:password@ part, for logs and errors."""
    return ", ".join(f"{p.scheme}://{p.hostname}:{p.port or 4222}" for p in map(urlsplit, servers))


def check_server_version(found: tuple[int, int, int], servers: str) -> None:
    """Raise ServerTooOldError for a server older than MIN_SERVER_VERSION."""
    if found < MIN_SERVER_VERSION:
        raise ServerTooOldError(
            f"NATS server {'.'.join(map(str, found))} at {servers} is too old: "
            "Krenalis requires nats-server 2.12 or newer"
        )


class NatsConnection:
    """One connection to NATS (a server or a cluster) with its JetStream context and up-state."""

    def __init__(
        self,
        settings: Settings,
        urls: Sequence[str] | None = None,
        *,
        name: str = "krenalis",
        ping_interval: int = 10,
    ) -> None:
        self.settings = settings
        self._options = connect_options(settings, urls)
        self._name = name
        self._ping_interval = ping_interval
        self.nc: Client = Client()
        self._js: JetStreamContext | None = None
        self.stream_ready = False
        self._down_since: float | None = time.monotonic()
        self._up_event = asyncio.Event()
        self._auth_failed: asyncio.Future[str] | None = None
        self._last_error = ""
        self._closing = False
        self._on_reconnect: list[Callable[[], Awaitable[None]]] = []
        self._reconnect_tasks: set[asyncio.Task[None]] = set()

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` (in its own task) after each reconnection."""
        self._on_reconnect.append(callback)

    @property
    def last_error(self) -> str:
        """The latest connection error, for reports such as `krenalis nats check`."""
        return self._last_error

    @property
    def servers(self) -> str:
        return _redact(self._options["servers"])

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("NatsConnection.connect() has not been called")
        return self._js

    async def connect(self, timeout: float | None = None) -> None:
        """Connect, retrying unreachable servers for ever (or `timeout` seconds).

        Raises NatsAuthError at once on an authorization violation, ServerTooOldError for a
        server older than 2.12, TimeoutError when `timeout` passes without a connection.
        """
        loop = asyncio.get_running_loop()
        self._auth_failed = loop.create_future()
        task = asyncio.ensure_future(self.nc.connect(**self._connect_kwargs()))
        waiters = {task, self._auth_failed}
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            await self._close_quietly()
            if self._auth_failed in done:
                raise NatsAuthError(
                    f"NATS server at {self.servers} refused the credentials "
                    f"({self._auth_failed.result()}); check KRENALIS_NATS_NKEY, "
                    "KRENALIS_NATS_CREDS, KRENALIS_NATS_TOKEN or KRENALIS_NATS_USER/PASSWORD"
                )
            raise TimeoutError(f"cannot connect to NATS at {self.servers} within {timeout}s")
        task.result()
        self._check_version()
        self._js = self.nc.jetstream(timeout=5.0, publish_async_max_pending=2048)
        self._mark_up()
        log.info("Connected to NATS server.", extra={"server": self.connected_url})

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            **self._options,
            "name": self._name,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 2,
            "connect_timeout": 2,
            # Detect a dead server in ~20 s instead of nats-py's 4 minutes.
            "ping_interval": self._ping_interval,
            "max_outstanding_pings": 2,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
        }

    def _check_version(self) -> None:
        version = self.nc.connected_server_version
        try:
            check_server_version((version.major, version.minor, version.patch), self.servers)
        except ServerTooOldError:
            asyncio.ensure_future(self._close_quietly())
            raise

    @property
    def connected_url(self) -> str:
        url = self.nc.connected_url
        return f"{url.scheme}://{url.hostname}:{url.port}" if url else ""

    async def _on_error(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        pending = self._auth_failed is not None and not self._auth_failed.done()
        if pending and "authorization violation" in text.lower():
            self._auth_failed.set_result("Authorization Violation")
        if text != self._last_error:
            self._last_error = text
            log.warning("NATS connection error; retrying.", extra={"error": text})

    async def _on_disconnected(self) -> None:
        if self._down_since is None and not self._closing:
            self._down_since = time.monotonic()
            self._up_event.clear()
            log.warning("Disconnected from NATS server; retrying.")

    async def _on_reconnected(self) -> None:
        self._last_error = ""
        self._mark_up()
        log.info("Reconnected to NATS server.", extra={"server": self.connected_url})
        for callback in self._on_reconnect:
            task = asyncio.create_task(callback(), name="nats-reconnected")
            self._reconnect_tasks.add(task)  # a reference, so the task is not collected
            task.add_done_callback(self._reconnect_tasks.discard)

    async def _on_closed(self) -> None:
        self._down_since = self._down_since or time.monotonic()
        self._up_event.clear()

    def _mark_up(self) -> None:
        self._down_since = None
        if self.stream_ready:
            self._up_event.set()

    def set_stream_ready(self) -> None:
        """Called once the EVENTS stream exists; ingestion may start."""
        self.stream_ready = True
        if self.nc.is_connected:
            self._mark_up()

    def down_for(self) -> float:
        """Seconds since the connection dropped (0 while connected)."""
        if self._down_since is None or self.nc.is_connected:
            return 0.0
        return time.monotonic() - self._down_since

    @property
    def usable(self) -> bool:
        """True when connected and the EVENTS stream exists."""
        return self.stream_ready and self.nc.is_connected

    async def wait_usable(self, grace: float = UP_GRACE_SECONDS) -> bool:
        """True if usable now or within `grace` seconds of a recent drop; False otherwise.

        Ingestion calls this before publishing: a brief reconnection is waited for, a longer
        outage answers 503 at once instead of holding requests.
        """
        if self.usable:
            return True
        if self._down_since is None or not self.stream_ready:
            down_for = 0.0
        else:
            down_for = time.monotonic() - self._down_since
        remaining = grace - down_for
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(self._up_event.wait(), remaining)
        except TimeoutError:
            return False
        return self.usable

    async def close(self) -> None:
        """Flush what is buffered and close the connection."""
        if self.nc.is_closed:
            return
        self._closing = True
        try:
            await self.nc.drain()
        except Exception as exc:  # draining a broken connection: closing is all that is left
            log.debug("NATS drain failed; closing.", extra={"error": str(exc)})
            await self._close_quietly()
        log.info("NATS connection closed.")

    async def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):  # already closed or never connected
            await self.nc.close()


async def connect_simple(settings: Settings, urls: Sequence[str] | None = None) -> Client:
    """A plain client with the same credentials (tests and one-shot commands)."""
    return await nats.connect(**connect_options(settings, urls), max_reconnect_attempts=3)
