"""Destinations failing under steady load: PostgreSQL stopped for 20 s, the webhook receiver
answering 500 for 20 s then timing out for 10 s, the file destination's directory unwritable.

Nothing is acked while a destination fails (the worker holds and retries), so once it is back
every acknowledged event arrives: in the warehouse exactly once, elsewhere at least once. The
other pipeline of the same source keeps delivering meanwhile (pipelines are isolated).
"""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest
from faults_sinks import HookScript, Receiver, file_probe, hook_probe, warehouse_probe
from faults_support import FaultClock, exercise, workspace

pytestmark = pytest.mark.timeout(240)

#: A pipeline whose destination works must not wait for one whose destination fails.
ISOLATED_LAG = 10.0


async def start_serve(stack, text: str):
    stack.write_workspace(text)
    serve = stack.start("serve", "serve", stack.env())
    await serve.wait_healthy(timeout=60)
    return serve


@pytest.mark.faults
async def test_postgres_stopped_for_20s(stack_factory, nats_server, make_postgres):
    down = 20.0
    pg = make_postgres()
    dsn = pg.dsn
    stack = stack_factory(nats_server.url)
    script = HookScript()
    async with Receiver(script) as rx:
        serve = await start_serve(stack, workspace(dsn=dsn, hook_url=rx.url))
        clock = FaultClock("postgres stopped", extra={"down_s": down})

        async def inject(load) -> None:
            clock.begin()
            await asyncio.to_thread(pg.stop)
            await asyncio.sleep(down)
            await asyncio.to_thread(pg.start)
            clock.end()
            assert pg.dsn == dsn, "PostgreSQL came back on another port"

        line = await exercise(
            serve.base_url,
            [warehouse_probe(dsn), hook_probe(script)],
            clock,
            inject,
            nats_server.url,
        )
    assert line["max_delivery_lag_s"]["webhook"] < ISOLATED_LAG, line
    assert serve.log_count("Event dead-lettered") == 0


@pytest.mark.faults
async def test_webhook_500_then_timeouts_then_recovery(stack_factory, nats_server, warehouse_dsn):
    failing, slow = 20.0, 10.0
    stack = stack_factory(nats_server.url)
    script = HookScript(slow_delay=5.0)  # past the destination's 2 s timeout
    async with Receiver(script) as rx:
        serve = await start_serve(
            stack, workspace(dsn=warehouse_dsn, hook_url=rx.url, hook_timeout="2s")
        )
        clock = FaultClock(
            "webhook 500 then timeouts",
            extra={"http_500_s": failing, "timeouts_s": slow, "timeout_s": 2},
        )

        async def inject(load) -> None:
            clock.begin()
            script.mode = "fail"
            await asyncio.sleep(failing)
            script.mode = "slow"
            await asyncio.sleep(slow)
            script.mode = "ok"
            clock.end()
            clock.extra["receiver_answers"] = dict(script.answers)

        line = await exercise(
            serve.base_url, [warehouse_probe(warehouse_dsn), hook_probe(script)], clock, inject,
            nats_server.url,
        )  # fmt: skip
    assert line["receiver_answers"]["fail"] > 0 and line["receiver_answers"]["slow"] > 0, line
    assert line["max_delivery_lag_s"]["warehouse"] < ISOLATED_LAG, line
    assert serve.log_count("Event dead-lettered") == 0


async def test_file_destination_unwritable(stack_factory, nats_server, warehouse_dsn):
    """As root, chmod does not stop a write: the destination's parent directory is moved away
    and a regular file takes its place (ENOTDIR), then the directory is put back."""
    down = 6.0
    stack = stack_factory(nats_server.url)
    parent = stack.root / "out"
    archive = parent / "archive"
    serve = await start_serve(stack, workspace(dsn=warehouse_dsn, file_dir=archive))
    clock = FaultClock("file destination unwritable", extra={"down_s": down})
    away = stack.root / "out.away"

    async def inject(load) -> None:
        clock.begin()
        os.rename(parent, away)
        parent.write_text("not a directory\n")
        await asyncio.sleep(down)
        parent.unlink()
        os.rename(away, parent)
        clock.end()

    try:
        line = await exercise(
            serve.base_url, [warehouse_probe(warehouse_dsn), file_probe(archive)], clock, inject,
            nats_server.url,
        )  # fmt: skip
    finally:
        if away.exists() and not parent.is_dir():
            parent.unlink(missing_ok=True)
            shutil.move(away, parent)
    assert serve.log_count("Deliveries are failing; retrying.") > 0
    assert line["max_delivery_lag_s"]["warehouse"] < ISOLATED_LAG, line
    assert serve.log_count("Event dead-lettered") == 0
