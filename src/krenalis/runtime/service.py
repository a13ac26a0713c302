"""Every Krenalis process registers with the NATS service API, so the deployment can be seen
from anywhere: `krenalis status` lists each process, and a retirement waits until every
collector routes by the workspace revision that retires a pipeline.

A process is an instance of the service `krenalis` (NATS micro: `$SRV.PING|INFO|STATS`). Its
metadata say what does not change (role, host, pid, start time); its one endpoint's stats data
say what does (the workspace revision it runs, the pipelines it serves).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.service import Service

from krenalis import __version__

__all__ = ["NAME", "ProcessInfo", "list_processes", "register"]

NAME = "krenalis"


@dataclass(frozen=True)
class ProcessInfo:
    """One running process, as it describes itself."""

    role: str
    host: str
    pid: int
    started: float
    revision: int
    pipelines: tuple[str, ...]
    #: Its workers' transform steps: (pipeline, step, in, out, dropped, failed, seconds).
    steps: tuple[tuple[Any, ...], ...] = ()

    @property
    def uptime(self) -> float:
        return max(0.0, time.time() - self.started)

    @property
    def routes(self) -> bool:
        """Whether it runs a collector (routes events to pipelines)."""
        return self.role in ("serve", "collector")


async def register(
    nc: Client,
    role: str,
    state: Callable[[], tuple[int, list[str]]],
    steps: Callable[[], list[list[Any]]] | None = None,
) -> Service:
    """Register this process; `state()` returns (workspace revision, pipelines served) when
    asked, `steps()` its transform steps' figures. Stop the returned service before closing
    the connection."""
    metadata = {
        "role": role,
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "started": str(time.time()),
    }

    def stats(_endpoint: Any) -> dict[str, Any]:
        revision, pipelines = state()
        answer: dict[str, Any] = {"revision": revision, "pipelines": pipelines}
        if steps is not None:
            answer["steps"] = steps()
        return answer

    service = await add_service(
        nc,
        name=NAME,
        version=__version__,
        description="Krenalis event stream process",
        metadata=metadata,
        stats_handler=stats,
    )
    # The endpoint carries the stats; its subject is this instance's own, so nothing else
    # ever reaches it.
    await service.add_endpoint(
        name="process", subject=f"krenalis.process.{service.id}", handler=_answer
    )
    return service


async def _answer(request: Any) -> None:
    await request.respond(b"{}")


async def list_processes(nc: Client, wait: float = 0.5) -> list[ProcessInfo]:
    """Every registered process that answers within `wait` seconds."""
    inbox = nc.new_inbox()
    answers: list[bytes] = []

    async def collect(msg: Any) -> None:
        answers.append(msg.data)

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(f"$SRV.STATS.{NAME}", b"", reply=inbox)
        await asyncio.sleep(wait)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    found = [_parse(a) for a in answers]
    return sorted((p for p in found if p is not None), key=lambda p: (p.role, p.host, p.pid))


def _parse(data: bytes) -> ProcessInfo | None:
    try:
        stats = json.loads(data)
        meta = stats.get("metadata") or {}
        endpoints = stats.get("endpoints") or [{}]
        state = endpoints[0].get("data") or {}
        return ProcessInfo(
            role=str(meta.get("role", "?")),
            host=str(meta.get("host", "?")),
            pid=int(meta.get("pid", 0)),
            started=float(meta.get("started", 0)),
            revision=int(state.get("revision") or 0),
            pipelines=tuple(state.get("pipelines") or ()),
            steps=tuple(tuple(row) for row in state.get("steps") or ()),
        )
    except (ValueError, TypeError, AttributeError, IndexError):
        return None  # not one of ours, or another version: not counted
