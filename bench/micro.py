"""Small side-by-side measurements behind single changes (bench/RESULTS.md, "Performance").

- `fetch`: fetch + ack (a batch's acks in one write, as the worker sends them) of a filled
  stream with nats-py's pull fetch, with :func:`krenalis.stream.client.lean_next_msg`, and
  with :func:`krenalis.stream.client.lean_fetch`, alternating.
- `http`: one POST per event to bench/receiver.py, 8 at a time: httpx, aiohttp, and the webhook
  sink, alternating; requests/s and this process's CPU per request.
- `rows`: from a stored message to the warehouse's row, per event, on the load generator's
  events: decoded to a dict and the careful row (`schema.event_to_row`), against
  `read_event` (the worker's check) and the fast row from the bytes (`rows.fast_row`).
- `commands`: the HPUB commands of an atomic batch, a dict of headers per message joined as
  text (as the publisher made them before) against `publisher.batch_commands`.

Run: python -m bench.micro fetch|http|rows|commands [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

__all__ = ["main"]


async def _fetch_once(url: str, way: str, count: int) -> tuple[float, float]:
    from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

    from krenalis.stream.client import Client, lean_fetch, lean_next_msg, publish_many

    nc = Client()
    await nc.connect(url)
    js = nc.jetstream()
    with contextlib.suppress(Exception):  # none yet
        await js.delete_stream("MICRO")
    await js.add_stream(StreamConfig(name="MICRO", subjects=["micro.>"]))
    for _ in range(0, count, 500):
        acks = [await js.publish_async("micro.1", b"x" * 700) for _ in range(500)]
        await asyncio.gather(*acks)
    config = ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10000)
    await js.add_consumer("MICRO", config)
    sub = await js.pull_subscribe_bind("c", stream="MICRO")
    if way != "nats-py":
        lean_next_msg(sub._sub)
    got, started, cpu = 0, time.perf_counter(), time.process_time()
    while got < count:
        if way == "lean fetch":
            msgs = await lean_fetch(sub, 1000, 2)
        else:
            msgs = await sub.fetch(1000, timeout=2)
        # The acks as the worker sends them: one write per batch.
        await publish_many(nc, [b"PUB %s 4\r\n+ACK\r\n" % m.reply.encode() for m in msgs])
        got += len(msgs)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await nc.close()
    return count / elapsed, cpu / count * 1e6


def fetch(rounds: int) -> None:
    import uvloop

    from krenalis.runtime.nats_server import EmbeddedNats

    with tempfile.TemporaryDirectory(prefix="krenalis-micro-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", sync_interval="2m")
        server.start()
        try:
            for _ in range(rounds):
                for way in ("nats-py", "lean next_msg", "lean fetch"):
                    rate, us = uvloop.run(_fetch_once(server.url, way, 50_000))
                    print(f"fetch + batch ack, {way}: {rate:,.0f} msgs/s, {us:.1f} us CPU/msg")
        finally:
            server.stop()


_EVENT = b'{"type":"track","messageId":"m","userId":"u","properties":{"a":1}}'


async def _httpx(url: str, count: int) -> None:
    import httpx

    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        gate = asyncio.Semaphore(8)

        async def one() -> None:
            async with gate:
                response = await client.post(url, content=_EVENT)
                await response.aread()

        await asyncio.gather(*(one() for _ in range(count)))


async def _aiohttp(url: str, count: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:
        gate = asyncio.Semaphore(8)

        async def one() -> None:
            async with gate, session.post(url, data=_EVENT) as response:
                await response.read()

        await asyncio.gather(*(one() for _ in range(count)))


async def _sink(url: str, count: int) -> None:
    from krenalis.sinks.webhook import WebhookOptions, WebhookSink

    sink = WebhookSink(WebhookOptions(url=url))  # type: ignore[arg-type]
    events = [{"type": "track", "messageId": f"m{i}", "userId": f"u{i % 50}",
               "connectionId": "c", "properties": {"a": 1}} for i in range(count)]  # fmt: skip
    try:
        for start in range(0, count, 500):
            await sink.write(events[start : start + 500])
    finally:
        await sink.aclose()


def http(rounds: int) -> None:
    import uvloop

    from bench import procs
    from bench.stacks import Receiver

    with tempfile.TemporaryDirectory(prefix="krenalis-micro-") as tmp:
        rx = Receiver(Path(tmp))
        rx.start()
        try:
            for _ in range(rounds):
                for name, run in (("httpx", _httpx), ("aiohttp", _aiohttp), ("sink", _sink)):
                    started, cpu = time.perf_counter(), time.process_time()
                    uvloop.run(run(rx.url, 4000))
                    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
                    print(f"{name}: {4000 / elapsed:,.0f} requests/s, "
                          f"{cpu / 4000 * 1e6:.0f} us CPU/request")  # fmt: skip
        finally:
            rx.stop()
            procs.stop_all()


def rows(rounds: int) -> None:
    from bench.baseline import payloads
    from krenalis.events.wire import decode_event, read_event
    from krenalis.sinks.warehouse.rows import fast_row
    from krenalis.sinks.warehouse.schema import event_to_row

    stored = [data for data, _ in payloads(1000)]

    def careful(data: bytes) -> Any:
        return event_to_row(decode_event(data))

    def fast(data: bytes) -> Any:
        return fast_row(read_event(data).data)

    def per_event(convert: Any) -> float:
        runs = timeit.repeat(lambda: [convert(d) for d in stored], number=1, repeat=15)
        return min(runs) / len(stored) * 1e6

    for _ in range(rounds):
        print(f"decode_event + event_to_row {per_event(careful):.1f} us/event, "
              f"read_event + fast_row {per_event(fast):.1f} us/event")  # fmt: skip


def _commands_before(messages: list[Any], batch_id: str) -> list[bytes]:
    """The publisher's commands before `batch_commands`: a dict of headers per message."""
    commands = []
    for number, msg in enumerate(messages, 1):
        headers = {"Nats-Msg-Id": msg.msg_id, "Nats-Batch-Id": batch_id}
        headers["Nats-Batch-Sequence"] = str(number)
        if msg.ttl:
            headers["Nats-TTL"] = str(msg.ttl)
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = f"NATS/1.0\r\n{lines}\r\n".encode()
        size = len(head) + len(msg.data)
        commands.append(b"HPUB %s  %d %d\r\n%s%s\r\n" % (msg.subject.encode(), len(head), size, head, msg.data))  # fmt: skip
    return commands


def commands(rounds: int) -> None:
    import uuid

    from krenalis.stream.publisher import OutMessage, batch_commands

    messages = [OutMessage("events.v1.p1.0", b"x" * 700, f"{uuid.uuid4()}/p1") for _ in range(100)]
    messages += [OutMessage("events.v1._archive.web", b"x" * 700, f"{uuid.uuid4()}/_a", 604800)
                 for _ in range(100)]  # fmt: skip
    batch_id = uuid.uuid4().hex
    assert _commands_before(messages, batch_id) == batch_commands(messages, batch_id)
    for _ in range(rounds):
        for name, make in (
            ("dict of headers", _commands_before),
            ("batch_commands", batch_commands),
        ):
            runs = timeit.repeat(lambda m=make: m(messages, batch_id), number=20, repeat=5)
            print(f"{name}: {min(runs) / 20 / len(messages) * 1e6:.2f} us/message")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("fetch", "http", "rows", "commands"))
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    {"fetch": fetch, "http": http, "rows": rows, "commands": commands}[args.what](args.rounds)


if __name__ == "__main__":
    main()
