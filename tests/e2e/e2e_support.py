"""Helpers of the end-to-end tests: real `krenalis` processes, events, polling, the warehouse.

Every process is started in its own session and stopped by its PID (SIGTERM, then SIGKILL);
the `launch` fixture of this directory's conftest stops every one it started, even on failure,
and prints their logs so a failing test shows what the processes said.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
from nats.js import JetStreamContext

from krenalis.runtime.processes import free_port
from krenalis.stream.archive import stream_counts
from krenalis.stream.layout import ARCHIVE_PREFIX, ARCHIVE_STREAM, LEGACY_ARCHIVE_PREFIX, STREAM

__all__ = [
    "KrenalisProcess",
    "WRITE_KEY",
    "OTHER_KEY",
    "archive_counts",
    "collector_answer",
    "consumer_names",
    "file_events",
    "jetstream",
    "make_event",
    "post_batch",
    "post_events",
    "stream_empty",
    "stream_messages",
    "subject_counts",
    "wait_for",
    "warehouse_ids",
    "warehouse_rows",
    "warehouse_stats",
    "wire_event",
]

WRITE_KEY = "E2eWriteKey0123456789abcdefghijk"  # 32 characters, as generate_write_key() makes
OTHER_KEY = "E2eOtherKey0123456789abcdefghijk"
assert len(WRITE_KEY) == len(OTHER_KEY) == 32

#: Every poll gives up after this long: generous, since the machine may be busy.
TIMEOUT = 30.0


# -- processes -----------------------------------------------------------------------------------


class KrenalisProcess:
    """One `krenalis <command>` child process, in `cwd`, logging to `<cwd>/<name>.log`."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], name: str) -> None:
        self.command = command
        self.cwd = cwd
        self.env = env
        self.name = name
        self.log_path = cwd / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def http_port(self) -> int:
        return int(self.env["KRENALIS_HTTP_PORT"])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> KrenalisProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "krenalis.cli", self.command],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal to it never reaches the test runner
            )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_count(self, text: str) -> int:
        return self.log().count(text)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL by PID and reap it, as a crash would end it."""
        if self.running():
            self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def fail(self, message: str) -> AssertionError:
        tail = "\n".join(self.log().splitlines()[-40:])
        return AssertionError(f"{message}\n--- {self.name} log (last lines) ---\n{tail}")

    async def wait_healthy(self, timeout: float = TIMEOUT) -> None:
        """Wait until GET /health answers 200."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if not self.running():
                    raise self.fail(
                        f"{self.name} exited with {self.proc.returncode if self.proc else None}"
                    )
                try:
                    response = await client.get(f"{self.base_url}/health")
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise self.fail(f"{self.name} did not answer /health with 200 in {timeout}s")
                await asyncio.sleep(0.1)

    async def wait_log(self, text: str, count: int = 1, timeout: float = TIMEOUT) -> None:
        """Wait until `text` appears `count` times in the log."""
        deadline = time.monotonic() + timeout
        while self.log_count(text) < count:
            if not self.running():
                raise self.fail(f"{self.name} exited while waiting for {text!r}")
            if time.monotonic() > deadline:
                raise self.fail(f"{text!r} did not appear {count} time(s) in {timeout}s")
            await asyncio.sleep(0.05)


async def revision_of(process: KrenalisProcess) -> int:
    """The workspace revision a collector routes by (its /health says), 0 if it does not answer."""
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            response = await client.get(f"{process.base_url}/health")
        return int(response.json().get("revision") or 0)
    except (httpx.HTTPError, ValueError):
        return 0


def process_env(
    data_dir: Path, *, nats_url: str, http_port: int | None = None, **extra: str
) -> dict[str, str]:
    """The environment of a child: ours without any KRENALIS_*, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRENALIS_")}
    env.update(
        KRENALIS_DATA_DIR=str(data_dir),
        KRENALIS_NATS_URL=nats_url,
        KRENALIS_HTTP_PORT=str(http_port or free_port()),
        KRENALIS_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Deployment:
    def __init__(self, root: Path, nats_url: str) -> None:
        self.root = root
        self.nats_url = nats_url
        self.data_dir = root / "data"
        self.processes: list[KrenalisProcess] = []

    @property
    def workspace_path(self) -> Path:
        return self.root / "krenalis.yaml"

    def write_workspace(self, text: str) -> None:
        self.workspace_path.write_text(text)

    def start(self, command: str, name: str | None = None, **env: str) -> KrenalisProcess:
        """Start `krenalis <command>` with KRENALIS_* settings (`env` adds or overrides)."""
        name = name or f"{command}-{len(self.processes)}"
        # An operator with a NATS of their own names the file each process applies.
        env.setdefault("KRENALIS_WORKSPACE", str(self.workspace_path))
        process = KrenalisProcess(
            command, self.root, process_env(self.data_dir, nats_url=self.nats_url, **env), name
        )
        self.processes.append(process)
        return process.start()

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a one-shot `krenalis` command (`workspace apply`, `status`...) on this deployment."""
        env = process_env(self.data_dir, nats_url=self.nats_url)
        return subprocess.run(
            [sys.executable, "-m", "krenalis.cli", *args],
            cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def stop_all(self) -> None:
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.stop()
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.kill()  # a no-op unless stop() failed


# -- events and the collector --------------------------------------------------------------------


def make_event(message_id: str, user: str = "anon-1", **fields: Any) -> dict[str, Any]:
    """A Segment-style track event as an SDK sends it."""
    event: dict[str, Any] = {
        "type": "track",
        "event": "Order Completed",
        "messageId": message_id,
        "anonymousId": user,
        "properties": {"n": message_id},
    }
    event.update(fields)
    return event


async def post_batch(
    client: httpx.AsyncClient, base_url: str, events: list[dict], key: str = WRITE_KEY
) -> dict[str, Any]:
    """POST /v1/batch; assert a 200 and that every event was accepted; the JSON answer."""
    response = await client.post(f"{base_url}/v1/batch", json={"batch": events}, auth=(key, ""))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == len(events) and "rejected" not in answer, answer
    return answer


async def post_events(
    base_url: str,
    events: list[dict],
    *,
    key: str = WRITE_KEY,
    per_request: int = 100,
    concurrency: int = 4,
) -> int:
    """Post events in batches, a few requests at a time; the number of copies stored."""
    chunks = [events[i : i + per_request] for i in range(0, len(events), per_request)]
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30.0) as client:

        async def one(chunk: list[dict]) -> int:
            async with semaphore:
                return (await post_batch(client, base_url, chunk, key))["stored"]

        return sum(await asyncio.gather(*(one(c) for c in chunks)))


async def collector_answer(base_url: str, events: list[dict], key: str = WRITE_KEY) -> dict:
    async with httpx.AsyncClient(timeout=30.0) as client:
        return await post_batch(client, base_url, events, key)


def wire_event(message_id: str, user: str = "anon-1") -> dict[str, Any]:
    """An event in the stream's wire form, as the collector publishes it."""
    now = "2026-11-26T05:29:02.123Z"
    return {
        "connectionId": "web",
        "anonymousId": user,
        "messageId": message_id,
        "type": "track",
        "event": "Clicked",
        "properties": {},
        "traits": {},
        "receivedAt": now,
        "sentAt": now,
        "originalTimestamp": now,
        "timestamp": now,
    }


# -- polling -------------------------------------------------------------------------------------


async def wait_for(
    probe: Callable[[], Awaitable[Any]] | Callable[[], Any],
    *,
    timeout: float = TIMEOUT,
    interval: float = 0.1,
    what: str = "the condition",
    processes: Iterable[KrenalisProcess] = (),
) -> Any:
    """Call `probe` until it returns a truthy value; return it. Fail with the processes' logs."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            message = f"timed out after {timeout}s waiting for {what}"
            for process in processes:
                message = str(process.fail(message))
            raise AssertionError(message)
        await asyncio.sleep(interval)


# -- NATS ----------------------------------------------------------------------------------------


class jetstream:  # noqa: N801 - used as `async with jetstream(url) as js`
    """A plain nats-py connection for assertions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.nc: nats.NATS | None = None

    async def __aenter__(self) -> JetStreamContext:
        self.nc = await nats.connect(self.url)
        return self.nc.jetstream()

    async def __aexit__(self, *exc_info: object) -> None:
        if self.nc is not None:
            await self.nc.close()


async def stream_messages(js: JetStreamContext, stream: str = STREAM) -> int:
    """Messages in `stream`; for EVENTS, the pipelines' copies (not the archive's)."""
    if stream == STREAM:
        return (await stream_counts(js))[0]
    return (await js.stream_info(stream)).state.messages


async def stream_empty(js: JetStreamContext, stream: str = STREAM) -> bool:
    """Whether `stream` holds nothing; for EVENTS, no pipeline copy (archive copies stay)."""
    return await stream_messages(js, stream) == 0


async def subject_counts(js: JetStreamContext) -> dict[str, int]:
    """Messages per pipeline subject of EVENTS (an earlier version's archive left out)."""
    info = await js.stream_info(STREAM, subjects_filter=">")
    subjects = info.state.subjects or {}
    return {s: n for s, n in subjects.items() if not s.startswith(LEGACY_ARCHIVE_PREFIX + ".")}


async def archive_counts(js: JetStreamContext) -> dict[str, int]:
    """Archive copies per source in EVENTS_ARCHIVE."""
    info = await js.stream_info(ARCHIVE_STREAM, subjects_filter=f"{ARCHIVE_PREFIX}.*")
    prefix = ARCHIVE_PREFIX + "."
    return {s.removeprefix(prefix): n for s, n in (info.state.subjects or {}).items()}


async def consumer_names(js: JetStreamContext) -> set[str]:
    return {c.name for c in await js.consumers_info(STREAM)}


# -- destinations --------------------------------------------------------------------------------


async def warehouse_rows(dsn: str, query: str, *params: Any) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=5) as conn:
        cursor = await conn.execute(query, params or None)
        return await cursor.fetchall()


async def warehouse_stats(dsn: str) -> tuple[int, int]:
    """(rows, distinct message ids) of krenalis_events; (0, 0) while the table is missing."""
    try:
        [(rows, distinct)] = await warehouse_rows(
            dsn, "SELECT count(*), count(DISTINCT message_id) FROM krenalis_events"
        )
    except psycopg.errors.UndefinedTable:
        return 0, 0
    return rows, distinct


async def warehouse_ids(dsn: str) -> list[str]:
    return [r[0] for r in await warehouse_rows(dsn, "SELECT message_id FROM krenalis_events")]


def file_events(directory: Path) -> list[dict]:
    """Every complete event line of every NDJSON file in `directory`.

    A line still being appended (no newline yet) is not counted: the sink may be writing while
    a test polls, and the line is whole on the next look.
    """
    import json

    found: list[dict] = []
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.ndjson")):
        complete = path.read_text().rpartition("\n")[0]
        found.extend(json.loads(line) for line in complete.splitlines() if line.strip())
    return found
