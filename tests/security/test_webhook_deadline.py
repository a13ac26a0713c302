"""A webhook receiver cannot hold a batch by answering slowly: each request has a total
deadline (the destination's `timeout`), not only one per read.

The receivers here are real TCP servers that answer a byte at a time, never letting a single
read wait as long as the timeout: with per-read timeouts only, such a receiver held a batch for
as long as it liked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from fixtures.events import stored
from krenalis.sinks.base import Delivered, Retry
from krenalis.sinks.webhook import BODY_PREFIX_BYTES, WebhookOptions, WebhookSink
from krenalis.workspace.values import Duration

EVENT = {"messageId": "m1", "connectionId": "web", "anonymousId": "a", "type": "track"}


@contextlib.asynccontextmanager
async def dripping(head: bytes, then: bytes, every: float = 0.1) -> AsyncIterator[str]:
    """A server that reads a request, sends `head` at once, then `then` a byte every `every`
    seconds (for ever, repeating it)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            await writer.drain()
            while True:
                for byte in then:
                    await asyncio.sleep(every)
                    writer.write(bytes([byte]))
                    await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


async def send_one(url: str) -> tuple[object, float]:
    sink = WebhookSink(WebhookOptions(url=url, timeout=Duration(1.0)))
    started = time.monotonic()
    try:
        (outcome,) = await sink.write(stored([EVENT]))
    finally:
        await sink.aclose()
    return outcome, time.monotonic() - started


@pytest.mark.timeout(30)
async def test_a_status_line_dripped_a_byte_at_a_time_is_cut_at_the_deadline() -> None:
    async with dripping(b"", b"HTTP/1.1 200 OK\r\n") as url:
        outcome, took = await send_one(url)
    assert isinstance(outcome, Retry) and "within 1s" in outcome.reason
    assert took < 5  # the drip would go on for ever


@pytest.mark.timeout(30)
async def test_headers_dripped_for_ever_are_cut_at_the_deadline() -> None:
    async with dripping(b"HTTP/1.1 503 Busy\r\n", b"X-Slow: a\r\n") as url:
        outcome, took = await send_one(url)
    assert isinstance(outcome, Retry) and took < 5


@pytest.mark.timeout(30)
async def test_a_body_dripped_after_the_status_does_not_hold_the_batch() -> None:
    """The status decides; the body (which only explains a failure) is read in what is left
    of the deadline, and at most BODY_PREFIX_BYTES of it."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n"
    async with dripping(head, b"x") as url:
        outcome, took = await send_one(url)
    assert isinstance(outcome, Delivered)
    assert took < 5
    assert BODY_PREFIX_BYTES <= 64 * 1024  # what is kept of any answer
