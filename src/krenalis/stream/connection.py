"""The NATS connection: connect, authenticate, reconnect forever, and know whether the stream is usable.

A process keeps one connection and retries for ever when servers are unreachable: an outage
of NATS must not need a restart of every collector and worker. Unlike nats-py's defaults, wrong
credentials fail the first connect at once with a clear message instead of a two-minute retry
budget ending in "no servers available"; so do TLS settings that cannot work with the server (a
certificate the CA does not sign, a client certificate the server requires and was not given).

TLS (``KRENALIS_NATS_TLS_*`` or a ``tls://`` URL) is required, not hoped for: nats-py upgrades a
connection only when the server asks for TLS, so a server (or a man in the middle) that does not
would get the credentials in plain text. The server's INFO is checked before anything is sent.
Without TLS, a token or a password sent to a host that is not loopback is logged once as a
warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.js import JetStreamContext

from krenalis.config import Settings
from krenalis.errors import NatsAuthError, ServerTooOldError
from krenalis.stream.client import Client

__all__ = [
    "MIN_SERVER_VERSION",
    "NatsConnection",
    "check_server_version",
    "connect_options",
    "tls_context",
]

log = logging.getLogger("krenalis.stream")

#: The oldest nats-server the event stream works with: 2.12 brought atomic batch publish
#: (ADR-50), which a request's copies use, and is what Krenalis's setup guide requires.
MIN_SERVER_VERSION = (2, 12, 0)
#: How long ingestion waits for a dropped connection to come back before answering 503.
UP_GRACE_SECONDS = 0.2
#: Warnings about credentials sent in plain text already logged by this process.
_warned_plain_text: set[tuple[str, str]] = set()


def connect_options(settings: Settings, urls: Sequence[str] | None = None) -> dict[str, Any]:
    """nats.connect() keyword arguments for these settings (servers, credentials, TLS)."""
    servers = [u if "://" in u else "nats://" + u for u in (urls or settings.nats_urls)]
    options: dict[str, Any] = {"servers": servers}
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    if settings.nats_tls_server_name:
        options["tls_hostname"] = settings.nats_tls_server_name
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


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the settings' CA and client certificate; None when neither is set
    (nats-py then verifies a server that requires TLS with the system's CAs)."""
    if settings.nats_tls_ca is None and settings.nats_tls_cert is None:
        return None
    context = ssl.create_default_context(cafile=settings.nats_tls_ca)
    if settings.nats_tls_cert is not None:
        context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
    return context


def warn_plain_text_credentials(settings: Settings, servers: Sequence[str]) -> None:
    """Log once if a token or password may travel unencrypted: nothing requires TLS and a
    server is neither loopback nor reached through tls:// or wss://."""
    exposed = [u for u in servers if not _is_tls(u) and not _is_loopback(u)]
    if settings.nats_tls or not exposed:
        return
    shown = _redact(exposed)
    for credential in _secret_credentials(settings, servers):
        if (credential, shown) in _warned_plain_text:
            continue
        _warned_plain_text.add((credential, shown))
        log.warning(
            "NATS credentials may be sent in plain text; use tls:// URLs (with "
            "KRENALIS_NATS_TLS_CA for a private CA) or an NKey, whose secret never leaves "
            "this process.",
            extra={"credential": credential, "servers": shown},
        )


def _secret_credentials(settings: Settings, servers: Sequence[str]) -> list[str]:
    """The settings that send a secret as it is (a token, a password), by name."""
    names = []
    if settings.nats_token is not None:
        names.append("KRENALIS_NATS_TOKEN")
    if settings.nats_password is not None:
        names.append("KRENALIS_NATS_PASSWORD")
    if any(urlsplit(u).username or urlsplit(u).password for u in servers):
        names.append("KRENALIS_NATS_URL")  # user:password@ or token@
    return names


def _is_tls(url: str) -> bool:
    return urlsplit(url).scheme in ("tls", "wss")


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name may resolve anywhere


def _redact(servers: Sequence[str]) -> str:
    """Server URLs without any user:password@ part, for logs and errors."""
    return ", ".join(f"{p.scheme}://{p.hostname}:{p.port or 4222}" for p in map(urlsplit, servers))


class _Refused(nats.errors.Error):
    """This server cannot be used with these settings; nothing was sent to it. A nats-py
    error, so that its connect and reconnect loops hand it to the error callback."""


class _CheckedClient(Client):
    """A client that reads the server's INFO before nats-py sends CONNECT (the credentials).

    nats-py switches to TLS only when the server requires it, even with a tls:// URL and an
    SSLContext; and a server requiring a client certificate drops a client without one with no
    reason ("Connection lost"). Both are refused here, before anything is sent.
    """

    def __init__(self, *, require_tls: bool, client_cert: bool) -> None:
        super().__init__()
        self._require_tls = require_tls
        self._client_cert = client_cert

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection:  # the INFO of a new connection, not a cluster update
            self._check_info(info)
        await super()._process_info(info, initial_connection)

    def _check_info(self, info: dict[str, Any]) -> None:
        scheme = self._current_server.uri.scheme if self._current_server else ""
        tls = bool(info.get("tls_required")) or scheme == "wss"
        if self._require_tls and not tls:
            raise _Refused(
                "does not require TLS while this process requires it (KRENALIS_NATS_TLS_* or a "
                "tls:// URL), so nothing was sent; enable TLS on the server (a tls block)"
            )
        if info.get("tls_verify") and not self._client_cert:
            raise _Refused(
                "requires a client certificate (mutual TLS); set KRENALIS_NATS_TLS_CERT and "
                "KRENALIS_NATS_TLS_KEY"
            )


def _checked_client(settings: Settings, servers: Sequence[str]) -> _CheckedClient:
    # A tls:// URL given on the command line (--url) requires TLS as one in the settings does.
    require_tls = settings.nats_tls or any(urlsplit(u).scheme == "tls" for u in servers)
    return _CheckedClient(require_tls=require_tls, client_cert=settings.nats_tls_cert is not None)


def _refusal(exc: Exception) -> str | None:
    """Why the first connect must stop now rather than retry, or None to retry."""
    if "authorization violation" in str(exc).lower():
        return (
            "refused the credentials (Authorization Violation); check KRENALIS_NATS_NKEY, "
            "KRENALIS_NATS_CREDS, KRENALIS_NATS_TOKEN or KRENALIS_NATS_USER/PASSWORD"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"presented a certificate that cannot be trusted ({exc.verify_message}); set "
            "KRENALIS_NATS_TLS_CA to the CA that signed it, and KRENALIS_NATS_TLS_SERVER_NAME "
            "if the name in it is not the URL's host"
        )
    if isinstance(exc, _Refused):
        return str(exc)
    return None


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
        self.nc: Client = _checked_client(settings, self._options["servers"])
        self._js: JetStreamContext | None = None
        self.stream_ready = False
        self._down_since: float | None = time.monotonic()
        self._up_event = asyncio.Event()
        #: Set, during the first connect, to why it must stop (see _refusal).
        self._refused: asyncio.Future[str] | None = None
        self._last_error = ""
        self._closing = False
        self._on_reconnect: list[Callable[[], Awaitable[None]]] = []
        self._reconnect_tasks: set[asyncio.Task[None]] = set()
        warn_plain_text_credentials(settings, self._options["servers"])

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

        Raises NatsAuthError at once on an authorization violation or TLS settings that cannot
        work with the server, ServerTooOldError for a server older than 2.12, TimeoutError when
        `timeout` passes without a connection.
        """
        loop = asyncio.get_running_loop()
        self._refused = loop.create_future()
        task = asyncio.ensure_future(self.nc.connect(**self._connect_kwargs()))
        waiters = {task, self._refused}
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            await self._close_quietly()
            if self._refused in done:
                raise NatsAuthError(f"NATS server at {self.servers} {self._refused.result()}")
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
        refusal = _refusal(exc)
        if refusal and self._refused is not None and not self._refused.done():
            self._refused.set_result(refusal)
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
    """A plain client with the same credentials and TLS (tests and one-shot commands)."""
    options = connect_options(settings, urls)
    warn_plain_text_credentials(settings, options["servers"])
    client = _checked_client(settings, options["servers"])
    await client.connect(**options, max_reconnect_attempts=3)
    return client
