"""A fast HTTP receiver in its own process (uvloop + httptools, no framework).

Two modes:
- `webhook`: plays the webhook destination. Every POST body (one event, or a {"batch": [...]}
  envelope as WebhookSink sends in batch mode) is answered 200 at once; for each event it keeps
  the `receivedAt` the collector stamped, the arrival time and the messageId, so end-to-end
  latency (collector receipt -> webhook arrival) and duplicates can be computed afterwards.
- `accept`: plays a collector that does nothing: answers {"success":true,"accepted":N} where N
  counts `"messageId"` in the body. The load generator's self-test runs against it, to show how
  many requests/s the generator itself can drive on this machine.

`GET /count` answers the counts, `GET /stats` every recorded figure, as JSON. Run: python -m bench.receiver --port P --mode M
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import time

import httptools
import msgspec

__all__ = ["main"]


class _Event(msgspec.Struct):
    messageId: str = ""  # noqa: N815 - JSON names
    receivedAt: str = ""  # noqa: N815


class _Batch(msgspec.Struct):
    batch: list[_Event]


_decode_event = msgspec.json.Decoder(_Event).decode
_decode_batch = msgspec.json.Decoder(_Batch).decode
_OK_EMPTY = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.events = 0
        self.received_at: list[str] = []
        self.arrived: list[float] = []
        self.ids: set[str] = set()
        self.duplicates = 0
        self.bad = 0

    def record(self, body: bytes) -> None:
        now = time.time()
        self.requests += 1
        try:
            if body[:10] == b'{"batch":[':
                events = _decode_batch(body).batch
            else:
                events = [_decode_event(body)]
        except msgspec.DecodeError:
            self.bad += 1
            return
        for event in events:
            self.events += 1
            self.received_at.append(event.receivedAt)
            self.arrived.append(now)
            if event.messageId in self.ids:
                self.duplicates += 1
            else:
                self.ids.add(event.messageId)

    def as_json(self) -> bytes:
        return msgspec.json.encode(
            {
                "requests": self.requests,
                "events": self.events,
                "unique": len(self.ids),
                "duplicates": self.duplicates,
                "bad": self.bad,
                "received_at": self.received_at,
                "arrived": self.arrived,
            }
        )


class _Protocol(asyncio.Protocol):
    def __init__(self, mode: str, stats: Stats) -> None:
        self.mode = mode
        self.stats = stats
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.body = []
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        method = self.parser.get_method()
        body = b"".join(self.body)
        if method == b"GET" and self.url.startswith(b"/count"):
            payload = b'{"events":%d,"unique":%d}' % (self.stats.events, len(self.stats.ids))
            head = f"HTTP/1.1 200 OK\r\ncontent-length: {len(payload)}\r\n\r\n".encode()
            self.transport.write(head + payload)
        elif method == b"GET" and self.url.startswith(b"/stats"):
            payload = self.stats.as_json()
            head = f"HTTP/1.1 200 OK\r\ncontent-length: {len(payload)}\r\n\r\n".encode()
            self.transport.write(head + payload)
        elif self.mode == "accept":
            payload = b'{"success":true,"accepted":%d}' % body.count(b'"messageId"')
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            )
            self.transport.write(head % len(payload) + payload)
        elif method == b"HEAD":  # a HEAD answer has no body, whatever its length says
            self.transport.write(_OK_EMPTY.split(b"\r\n\r\n")[0] + b"\r\n\r\n")
        else:
            if method == b"POST":
                self.stats.record(body)
            self.transport.write(_OK_EMPTY)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def _serve(port: int, mode: str) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await loop.create_server(lambda: _Protocol(mode, stats), sock=sock, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {os.getpid()}", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("webhook", "accept"), default="webhook")
    args = parser.parse_args()
    import uvloop

    uvloop.run(_serve(args.port, args.mode))


if __name__ == "__main__":
    main()
