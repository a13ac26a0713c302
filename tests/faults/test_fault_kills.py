"""SIGKILL of a worker, of a collector and of the whole `krenalis serve` under steady load.

Each test: 250 events/s in batches of 20 (retried with the same messageIds until a 200), one
pipeline to the warehouse and one to a webhook; kill, restart; then every acknowledged event
is in the warehouse exactly once and was delivered to the webhook at least once.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import psutil
import pytest
from faults_sinks import HookScript, Receiver, hook_probe, warehouse_probe
from faults_support import FaultClock, descendants, exercise, leftover_pids, sigkill, workspace

pytestmark = pytest.mark.timeout(150)

#: Redelivery after a crash waits for AckWait: 5 s instead of the default 30 s keeps these quick.
ACK_WAIT = "5s"
DOWN = 1.0  # seconds between the kill and the restart


async def start_collector_and_worker(stack, dsn: str, hook_url: str):
    stack.write_workspace(workspace(dsn=dsn, hook_url=hook_url))
    collector = stack.start("collector", "collector-1", stack.env(KRENALIS_NATS_ACK_WAIT=ACK_WAIT))
    worker = stack.start("worker", "worker-1", stack.env(KRENALIS_NATS_ACK_WAIT=ACK_WAIT))
    await collector.wait_healthy()
    await worker.wait_log("Worker started.", count=2)
    return collector, worker


async def test_worker_sigkill_under_load(stack_factory, nats_server, warehouse_dsn):
    stack = stack_factory(nats_server.url)
    script = HookScript()
    async with Receiver(script) as rx:
        collector, worker = await start_collector_and_worker(stack, warehouse_dsn, rx.url)
        probes = [warehouse_probe(warehouse_dsn), hook_probe(script)]
        clock = FaultClock("sigkill worker", extra={"ack_wait_s": 5, "down_s": DOWN})

        async def inject(load) -> None:
            clock.begin()
            worker.kill()
            assert worker.proc.returncode == -9
            await asyncio.sleep(DOWN)
            stack.restart(worker, "worker-2")
            clock.end()

        await exercise(collector.base_url, probes, clock, inject, nats_server.url)


async def test_collector_sigkill_under_load(stack_factory, nats_server, warehouse_dsn):
    stack = stack_factory(nats_server.url)
    script = HookScript()
    async with Receiver(script) as rx:
        collector, _ = await start_collector_and_worker(stack, warehouse_dsn, rx.url)
        probes = [warehouse_probe(warehouse_dsn), hook_probe(script)]
        clock = FaultClock("sigkill collector", extra={"down_s": DOWN})

        async def inject(load) -> None:
            clock.extra["killed_mid_request"] = await load.wait_in_flight()
            clock.begin()
            collector.kill()
            await asyncio.sleep(DOWN)
            restarted = stack.restart(collector, "collector-2")
            clock.end()
            await restarted.wait_healthy()
            clock.extra["restart_to_healthy_s"] = round(time.monotonic() - clock.end_at, 2)

        await exercise(collector.base_url, probes, clock, inject, nats_server.url)


# -- the whole `krenalis serve`: embedded nats-server and embedded PostgreSQL ---------------------


def embedded_nats_url(data_dir: Path) -> str:
    return f"nats://127.0.0.1:{int((data_dir / 'nats' / 'port').read_text())}"


def embedded_dsn(data_dir: Path) -> str:
    text = (data_dir / "postgres" / "krenalis.conf").read_text()
    port = int(re.search(r"^port = (\d+)$", text, re.MULTILINE).group(1))
    passfile = data_dir / "postgres" / "krenalis.pgpass"  # serve's password file
    return f"postgresql://krenalis@127.0.0.1:{port}/krenalis?passfile={passfile}"


def postgres_pids(data_dir: Path) -> list[int]:
    try:
        pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return []
    return [pid, *descendants(pid)]


def nats_servers_on(data_dir: Path) -> list[int]:
    """PIDs of the nats-server processes that run on this data directory's store."""
    found = []
    for pid in leftover_pids(data_dir):
        try:
            if psutil.Process(pid).name() == "nats-server":
                found.append(pid)
        except psutil.Error:
            pass
    return found


async def serve_under_load(stack_factory, *, whole: bool, name: str) -> None:
    stack = stack_factory("")  # embedded nats-server, and embedded PostgreSQL (no warehouse set)
    script = HookScript()
    async with Receiver(script) as rx:
        stack.write_workspace(workspace(hook_url=rx.url))
        serve = stack.start("serve", "serve-1", stack.env(KRENALIS_NATS_ACK_WAIT=ACK_WAIT))
        await serve.wait_healthy(timeout=60)
        data = stack.data_dir
        probes = [warehouse_probe(lambda: embedded_dsn(data)), hook_probe(script)]
        clock = FaultClock(name, extra={"ack_wait_s": 5, "down_s": DOWN})

        nats_url = embedded_nats_url(data)

        async def inject(load) -> None:
            clock.extra["killed_mid_request"] = await load.wait_in_flight()
            clock.begin()
            victims = [serve.pid]
            if whole:  # the embedded servers die with it, as in a container or machine crash
                victims += descendants(serve.pid) + postgres_pids(data)
            sigkill(victims)
            serve.proc.wait(10)
            await asyncio.sleep(DOWN)
            restarted = stack.restart(serve, "serve-2")
            clock.end()
            await restarted.wait_healthy(timeout=60)
            # One nats-server on the store: a second one would write the same files.
            assert len(nats_servers_on(data)) == 1, nats_servers_on(data)

        key = {"nkeys_seed": str(data / "nats" / "krenalis-user.nk")}  # serve's NATS key
        await exercise(
            serve.base_url, probes, clock, inject, lambda: embedded_nats_url(data), nats_options=key
        )
    if embedded_nats_url(data) != nats_url:
        raise AssertionError(
            f"bug: the restarted serve's nats-server moved from {nats_url} to "
            f"{embedded_nats_url(data)}: runtime._saved_port() probes the saved port without "
            "SO_REUSEADDR (the last run's connections in TIME_WAIT make it look taken), and "
            "before a leftover nats-server that still holds it is stopped"
        )


async def test_whole_serve_sigkill_under_load(stack_factory):
    """serve, its nats-server and its PostgreSQL all SIGKILLed at once, then serve restarted."""
    await serve_under_load(stack_factory, whole=True, name="sigkill serve (with its servers)")


async def test_serve_process_sigkill_under_load(stack_factory):
    """Only the serve process SIGKILLed (its embedded servers are orphaned), then restarted:
    the orphaned nats-server must be stopped, not joined by a second one on the same store."""
    await serve_under_load(stack_factory, whole=False, name="sigkill serve process only")
