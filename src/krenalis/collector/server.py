"""Serving the collector with uvicorn, in this process or in several sharing one port."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from krenalis import metrics
from krenalis.errors import ConfigError

__all__ = ["HTTPServer", "listening_socket"]

log = logging.getLogger("krenalis.collector")

#: A request's line and headers, at most: past it the answer is 431 and the connection closes.
MAX_HEADER_BYTES = 64 * 1024
#: Seconds a client has to send a request's line and headers, from the connection (or from its
#: first byte, on a kept-alive connection): past it the answer is 408 and the connection closes.
HEADER_TIMEOUT = 30.0


class _HeadersTooLarge(Exception):
    """Raised in a parser callback to stop parsing a request whose headers are too large."""


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with two limits it lacks. Without them a client makes the
    collector buffer headers of any size (a 200 MB header costs 200 MB), or holds a connection,
    and a file descriptor, for ever by never finishing its headers (slowloris).

    It also answers uvicorn's ``limit_concurrency`` itself: uvicorn's answer is a plain-text
    503 without Retry-After and a warning logged per request, which under overload is a flood
    of log lines; this one is the collector's JSON 503, counted in the requests metric.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_concurrency, self.limit_concurrency = self.limit_concurrency, None

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        limit = self.max_concurrency
        # uvicorn's rule: this connection counts itself; the new task is not counted yet.
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = _too_busy
        super()._start_asgi_task(cycle, app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_headers = True
        self._raw_bytes = 0  # bytes received while in a request's headers
        self._header_bytes = 0  # the request line and headers parsed so far
        self._too_large = False
        self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(
            HEADER_TIMEOUT, self._headers_too_slow
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._raw_bytes += len(data)
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)
        super().data_received(data)
        # One header still growing: httptools buffers it whole before calling on_header.
        if self._in_headers and self._raw_bytes > MAX_HEADER_BYTES and not self._too_large:
            self._too_large = True
            self._refuse(431, "Request Header Fields Too Large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._stop_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers, self._raw_bytes = True, 0  # the next request's headers come next

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse(431, "Request Header Fields Too Large")
        else:
            super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._too_large = True
            raise _HeadersTooLarge  # stops the parser; uvicorn then calls send_400_response

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._in_headers:
            self._refuse(408, "Request Timeout")

    def _refuse(self, status: int, reason: str) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(reason)}\r\nconnection: close\r\n\r\n{reason}".encode()
        )
        self.transport.close()


async def _too_busy(scope: dict, receive: Any, send: Any) -> None:
    """The answer past the concurrency limit: 503 (Segment SDKs retry it), and the connection
    closes, which frees its slot."""
    metrics.REQUESTS.labels("503").inc()
    body = (
        b'{"error":{"code":"ServiceUnavailable","message":"the collector is handling as many '
        b'connections as it may (KRENALIS_HTTP_MAX_CONNECTIONS); retry shortly"}}'
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"2"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def listening_socket(
    host: str, port: int, *, setting: str = "KRENALIS_HTTP_PORT", shared: bool = True
) -> socket.socket:
    """A listening socket. ``shared``: with SO_REUSEPORT, so several collector processes share
    the port and the kernel spreads connections over them (one Python process uses one core).
    ``setting`` is the variable a failure to listen names."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP (not 0) lets asyncio set TCP_NODELAY on accepted connections: without it
    # every keep-alive request after the first waits ~40 ms for Nagle's algorithm.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        # A port in use or a host that is not ours is the setting's problem: say which.
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); set {setting}"
        ) from None
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class HTTPServer:
    """uvicorn serving `app` on a socket, inside the caller's event loop and signal handling.

    ``max_connections`` (None: no limit) is uvicorn's ``limit_concurrency``: a request that
    arrives while that many connections are open, or that many requests are being handled,
    is answered 503 and its connection closed. ``name`` says what listens, in the log.
    """

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        *,
        max_connections: int | None = None,
        name: str = "Collector",
    ) -> None:
        self.sock = sock
        self.name = name
        self.server = make_server(app, max_connections)
        self.task: asyncio.Task[None] | None = None
        if max_connections is not None:
            _fit_open_files(max_connections)

    async def start(self) -> None:
        # _serve is serve() without uvicorn's own signal capture: the caller owns the signals.
        self.task = asyncio.create_task(self.server._serve([self.sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        host, port = self.sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info(f"{self.name} listening.", extra={"url": f"http://{shown}:{port}"})

    async def stop(self) -> None:
        """Stop accepting, finish the requests in flight (their events are stored), return."""
        self.server.should_exit = True
        if self.task is not None:
            await self.task


def make_server(app: Any, max_connections: int | None = None) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        loop="none",
        http=_Protocol,
        lifespan="off",
        access_log=False,
        log_level="warning",
        limit_concurrency=max_connections,
        # uvicorn would otherwise rewrite the peer address from X-Forwarded-For for peers in
        # FORWARDED_ALLOW_IPS (127.0.0.1 by default): only KRENALIS_TRUSTED_PROXIES decides.
        proxy_headers=False,
        timeout_keep_alive=120,
        # Segment SDKs retry on 5xx; a draining collector finishes what it accepted.
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    return server


#: File descriptors a process needs besides its HTTP connections: NATS, PostgreSQL, logs...
_SPARE_FILES = 256


def _fit_open_files(connections: int) -> None:
    """Raise the soft limit on open files (as Go programs do at start) so that the limit on
    connections is reached before the process runs out of descriptors; warn when the hard
    limit is too low for it."""
    needed = connections + _SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "Open file limit below what KRENALIS_HTTP_MAX_CONNECTIONS needs; lower it or "
            "raise the limit (ulimit -n).",
            extra={"open_files": soft, "needed": needed},
        )
