"""A real HTTP server that plays a webhook receiver in tests.

It runs uvicorn in a background thread, on a free 127.0.0.1 port, so it keeps answering even
while the test's event loop is busy. Every request is recorded; responses follow a script::

    async with WebhookReceiver() as rx:
        rx.respond_with(500, Response(200, delay=0.2))   # a 500, then 200s after 0.2 s
        ...  # POST to rx.url
        assert rx.requests[0].json["messageId"] == "m1"
        assert rx.max_in_flight <= 8

A script item is a status, a ``Response``, or a callable taking the ``ReceivedRequest`` and
returning either. Items are used in order and the last one repeats (the default is 200).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

__all__ = ["ReceivedRequest", "Response", "WebhookReceiver", "unused_url"]


@dataclass(frozen=True)
class Response:
    """What the receiver answers, after waiting ``delay`` seconds."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str = b""
    delay: float = 0.0


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the receiver saw it; header names are lower-case."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival

    @property
    def json(self) -> Any:
        return json.loads(self.body)


Responder = Response | int | Callable[[ReceivedRequest], "Response | int"]


class WebhookReceiver:
    """A scriptable HTTP server; use it as ``async with WebhookReceiver() as rx``."""

    def __init__(self, *responses: Responder) -> None:
        self.requests: list[ReceivedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._script: list[Responder] = list(responses) or [200]
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        """The endpoint to post to (any path is accepted)."""
        return f"{self.base_url}/hook"

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies of the POST requests, in arrival order."""
        return [r.json for r in self.requests if r.method == "POST"]

    def respond_with(self, *responses: Responder) -> None:
        """Replace the script: each item answers one POST, the last one repeats (a HEAD, a
        sink's health check, always gets 200)."""
        with self._lock:
            self._script = list(responses) or [200]

    def clear(self) -> None:
        """Forget the recorded requests and the concurrency peak."""
        with self._lock:
            self.requests.clear()
            self.max_in_flight = self.in_flight

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            interface="asgi3",
            lifespan="off",
            log_config=None,  # leave the test process's logging alone
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        server = self._server
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])),
            name=f"webhook-receiver-{self._port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError("The webhook receiver did not start.")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        await asyncio.to_thread(self._thread.join, 10)
        self._server = self._thread = None

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the ASGI app, run in the server thread --

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = ReceivedRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode(),
            headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
            body=body,
            at=time.monotonic(),
        )
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if request.method == "HEAD":  # a sink's health check: the script is for deliveries
                responder = 200
            else:
                responder = self._script[0] if len(self._script) == 1 else self._script.pop(0)
        try:
            await self._answer(_resolve(responder, request), receive, send)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _answer(self, response: Response, receive: Any, send: Any) -> None:
        if response.delay and await _disconnected_within(receive, response.delay):
            return  # the client gave up (timeout): nobody is left to answer
        body = response.body.encode() if isinstance(response.body, str) else response.body
        headers = [(k.lower().encode(), v.encode()) for k, v in response.headers.items()]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _resolve(responder: Responder, request: ReceivedRequest) -> Response:
    if callable(responder):
        responder = responder(request)
    return Response(responder) if isinstance(responder, int) else responder


async def _disconnected_within(receive: Any, delay: float) -> bool:
    """Wait ``delay`` seconds; return early (True) if the client disconnects meanwhile."""
    waiter = asyncio.ensure_future(receive())
    done, _ = await asyncio.wait({waiter}, timeout=delay)
    if not done:
        waiter.cancel()
    return bool(done)


def unused_url(path: str = "/hook") -> str:
    """A loopback URL where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
