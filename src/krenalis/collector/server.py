"""Serving the collector with uvicorn, in this process or in several sharing one port."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn

__all__ = ["HTTPServer", "listening_socket"]

log = logging.getLogger("krenalis.collector")


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEPORT, so several collector processes share the port
    and the kernel spreads connections over them (one Python process uses one core)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP (not 0) lets asyncio set TCP_NODELAY on accepted connections: without it
    # every keep-alive request after the first waits ~40 ms for Nagle's algorithm.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"cannot listen on {host}:{port} ({exc.strerror}); set KRENALIS_HTTP_PORT"
        ) from None
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class HTTPServer:
    """uvicorn serving `app` on a socket, inside the caller's event loop and signal handling."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.sock = sock
        self.server = make_server(app)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # _serve is serve() without uvicorn's own signal capture: the caller owns the signals.
        self.task = asyncio.create_task(self.server._serve([self.sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        host, port = self.sock.getsockname()[:2]
        log.info("Collector listening.", extra={"url": f"http://{host}:{port}"})

    async def stop(self) -> None:
        """Stop accepting, finish the requests in flight (their events are stored), return."""
        self.server.should_exit = True
        if self.task is not None:
            await self.task


def make_server(app: Any) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=120,
        # Segment SDKs retry on 5xx; a draining collector finishes what it accepted.
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    return server
