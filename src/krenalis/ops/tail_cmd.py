"""`krenalis tail`: watch events as every collector of the deployment takes them, and what each
pipeline's workers do with them.

The tail announces itself every second (:mod:`krenalis.stream.tail`); collectors and workers
send it what it asked for while the announcements keep coming, and stop within a few seconds
of the last one. Lines are coloured one-liners (:mod:`krenalis.ops.tail_view`), or NDJSON with
`--json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections import OrderedDict
from typing import Any

import msgspec
from nats.aio.msg import Msg
from rich.console import Console

from krenalis.config import Settings
from krenalis.errors import CommandError
from krenalis.ops._common import (
    check_pipeline_id,
    connected,
    nats_urls,
    read_filter,
    stored_workspace,
)
from krenalis.ops.tail_view import lines, render
from krenalis.pipelines.filters import Filter
from krenalis.runtime.service import list_processes
from krenalis.stream.connection import NatsConnection
from krenalis.stream.tail import (
    HEARTBEAT,
    HELLO_SUBJECT,
    INTEREST_SUBJECT,
    Interest,
    events_subject,
    outcomes_subject,
)

__all__ = ["tail"]

#: messageIds of events the extra filter took, remembered to show their outcomes.
_REMEMBERED = 100_000


def tail(settings: Settings, args: argparse.Namespace) -> int:
    check_pipeline_id(args.pipeline)
    check_pipeline_id(args.source)  # the same characters
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit must be at least 1", 2)
    extra = read_filter(args.filter)[1] if args.filter else None
    urls = nats_urls(settings)

    async def main() -> None:
        async with connected(settings, urls) as conn:
            await _Tail(conn, settings, args, extra).run()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


class _Tail:
    def __init__(
        self,
        conn: NatsConnection,
        settings: Settings,
        args: argparse.Namespace,
        extra: Filter | None,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.args = args
        self.extra = extra
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.console = Console(highlight=False, soft_wrap=False)
        self.err = Console(stderr=True, highlight=False)
        self.matched: OrderedDict[str, None] = OrderedDict()
        self.shown = 0

    async def run(self) -> None:
        interest = await self._interest()
        for subject in (events_subject(interest.sources[0] if interest.sources else "*"),
                        outcomes_subject(interest.pipelines[0] if interest.pipelines else "*")):  # fmt: skip
            await self.conn.nc.subscribe(subject, cb=self._on_message)
        beats = asyncio.create_task(self._announce(interest))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await self._header(interest)
            await self._show_until(stop)
        finally:
            beats.cancel()
            with contextlib.suppress(Exception):  # the collectors stop at once, not in 3 s
                bye = Interest(interest.id, interest.sources, interest.pipelines, bye=True)
                await self.conn.nc.publish(INTEREST_SUBJECT, msgspec.json.encode(bye))
                await self.conn.nc.flush(1)

    async def _interest(self) -> Interest:
        sources = (self.args.source,) if self.args.source else ()
        pipelines: tuple[str, ...] = ()
        if self.args.pipeline:
            workspace = await stored_workspace(self.conn.js, self.settings)
            pipeline = workspace.pipelines.get(self.args.pipeline)
            if pipeline is None:
                known = ", ".join(workspace.pipelines) or "none"
                raise CommandError(f"--pipeline: no pipeline {self.args.pipeline!r} in the "
                                   f"stored workspace (pipelines: {known})", 2)  # fmt: skip
            if sources and sources != (pipeline.source,):
                raise CommandError(f"pipeline {pipeline.id} takes the events of source "
                                   f"{pipeline.source}, not {self.args.source}", 2)  # fmt: skip
            sources, pipelines = (pipeline.source,), (pipeline.id,)
        return Interest(uuid.uuid4().hex, sources, pipelines)

    async def _announce(self, interest: Interest) -> None:
        """Every second, and at once when a process that just started says hello."""
        data = msgspec.json.encode(interest)

        async def again(_msg: Msg) -> None:
            with contextlib.suppress(Exception):
                await self.conn.nc.publish(INTEREST_SUBJECT, data)

        await self.conn.nc.subscribe(HELLO_SUBJECT, cb=again)
        while True:
            with contextlib.suppress(Exception):  # NATS away: the next beat tries again
                await self.conn.nc.publish(INTEREST_SUBJECT, data)
            await asyncio.sleep(HEARTBEAT)

    async def _header(self, interest: Interest) -> None:
        processes = await list_processes(self.conn.nc)
        collectors = sum(1 for p in processes if p.routes)
        workers = sum(1 for p in processes if p.role == "worker")
        what = f"source {interest.sources[0]}" if interest.sources else "every source"
        if interest.pipelines:
            what += f", pipeline {interest.pipelines[0]}"
        self.err.print(f"Watching {what} on {collectors} collector process(es) and {workers} "
                       "worker process(es); Ctrl+C stops.", style="dim")  # fmt: skip

    async def _on_message(self, msg: Msg) -> None:
        self.queue.put_nowait(msg.data)

    async def _show_until(self, stop: asyncio.Event) -> None:
        stopped = asyncio.create_task(stop.wait())
        while not stop.is_set():
            got = asyncio.create_task(self.queue.get())
            await asyncio.wait({got, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not got.done():
                got.cancel()
                return
            for line in _lines_of(got.result()):
                if self._wanted(line):
                    self._print(line)
                    if self.args.limit is not None and self.shown >= self.args.limit:
                        return

    def _wanted(self, line: dict[str, Any]) -> bool:
        args = self.args
        if args.source and line.get("source") not in (args.source, None):
            return False
        kind = line.get("kind")
        if args.pipeline and line.get("pipeline") not in (None, args.pipeline):
            return False
        if args.pipeline and kind == "accepted":
            related = (line.get("pipelines") or []) + (line.get("filtered") or [])
            if args.pipeline not in related:
                return False
        if self.extra is None:
            return True
        if kind in ("accepted", "rejected"):
            return self._takes(line)
        return str(line.get("messageId") or "").partition("#")[0] in self.matched

    def _takes(self, line: dict[str, Any]) -> bool:
        event = line.get("event")
        try:
            taken = isinstance(event, dict) and self.extra is not None and self.extra.test(event)
        except Exception:  # a rejected event may hold anything
            return False
        if taken and line.get("kind") == "accepted":
            self.matched[str(event.get("messageId"))] = None
            while len(self.matched) > _REMEMBERED:
                self.matched.popitem(last=False)
        return taken

    def _print(self, line: dict[str, Any]) -> None:
        self.shown += 1
        if self.args.json:
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            self.console.print(render(line), no_wrap=True, overflow="ellipsis")


def _lines_of(data: bytes) -> list[dict[str, Any]]:
    try:
        record = json.loads(data)
    except ValueError:
        return []
    return lines(record) if isinstance(record, dict) else []
