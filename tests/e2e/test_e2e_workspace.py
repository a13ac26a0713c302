"""End to end: one workspace for the whole deployment, stored in NATS, changed on purpose.

The scenarios of issue "one workspace for the whole cluster", each with exact counts: a second
serve started elsewhere, a rename, a stale file, fewer shards and a discard lose no event; every
process follows one `workspace apply` within 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
from e2e_support import (
    WRITE_KEY,
    Deployment,
    collector_answer,
    consumer_names,
    jetstream,
    make_event,
    stream_empty,
    wait_for,
)
from nats.aio.client import Client
from nats.js import JetStreamContext

from krenalis.runtime.service import list_processes
from krenalis.stream.deadletters import list_dead_letters
from krenalis.stream.layout import STREAM, consumer_name
from sinks.webhook_receiver import WebhookReceiver


def workspace(url: str, pipelines: dict[str, int]) -> str:
    """One source, one webhook destination, and these pipelines (id -> shards) to it."""
    text = f"""\
sources:
  web:
    write_key: "{WRITE_KEY}"
destinations:
  hook:
    type: webhook
    url: "{url}"
    timeout: 2s
pipelines:
"""
    for pipeline, shards in pipelines.items():
        text += f"  {pipeline}:\n    source: web\n    to: hook\n    shards: {shards}\n"
    return text


def ids_of(rx: WebhookReceiver) -> list[str]:
    """messageIds of every POST the receiver got (retries included)."""
    return sorted(body["messageId"] for body in rx.bodies)


async def pending(js: JetStreamContext, pipeline: str, shard: int = 0) -> int:
    info = await js.consumer_info(STREAM, consumer_name(pipeline, shard))
    return (info.num_pending or 0) + (info.num_ack_pending or 0)


async def post(serve, count: int, prefix: str, users: int = 10) -> list[str]:
    events = [make_event(f"{prefix}-{i}", user=f"u{i % users}") for i in range(count)]
    for start in range(0, count, 100):
        await collector_answer(serve.base_url, events[start : start + 100])
    return sorted(e["messageId"] for e in events)


async def apply(deployment: Deployment, path: Path, *flags: str):
    return await asyncio.to_thread(deployment.cli, "workspace", "apply", *flags, str(path))


async def test_a_second_serve_from_another_directory_drops_nothing(deployment, tmp_path):
    """The loss that made this: a second serve with its own starter file removed the first
    one's pipeline and its 500 pending events."""
    other = Deployment(tmp_path / "elsewhere", deployment.nats_url)
    other.root.mkdir()
    async with WebhookReceiver(503) as rx, jetstream(deployment.nats_url) as js:
        try:
            deployment.write_workspace(workspace(rx.url, {"web-hook": 1}))
            first = deployment.start("serve", name="first")
            await first.wait_healthy()
            sent = await post(first, 500, "down")
            await wait_for(lambda: rx.bodies, what="the first failed delivery")
            # A serve on the same NATS, in a directory without a file, naming none.
            second = other.start("serve", name="second", KRENALIS_WORKSPACE="")
            await second.wait_healthy()
            assert not (other.root / "krenalis.yaml").exists()  # no starter file for it
            await asyncio.sleep(2.5)  # time for anything it would wrongly remove
            assert await consumer_names(js) == {"EVENTS_web-hook_0"}
            assert await pending(js, "web-hook") == 500
            first.stop()
            first = deployment.start("serve", name="first-again")
            await first.wait_healthy()
            rx.respond_with(200)  # the destination is back
            await wait_for(lambda: stream_empty(js), what="every event delivered", timeout=60)
            assert set(ids_of(rx)) == set(sent)  # each of the 500, retried until delivered
            assert await consumer_names(js) == {"EVENTS_web-hook_0"}
        finally:
            other.stop_all()


async def test_renaming_a_pipeline_with_a_backlog_is_refused_then_drained(deployment, tmp_path):
    async with WebhookReceiver(503) as rx, jetstream(deployment.nats_url) as js:
        deployment.write_workspace(workspace(rx.url, {"web-old": 1}))
        serve = deployment.start("serve")
        await serve.wait_healthy()
        before = await post(serve, 200, "before")
        await wait_for(lambda: rx.bodies, what="the first failed delivery")
        renamed = tmp_path / "renamed.yaml"
        renamed.write_text(workspace(rx.url, {"web-new": 1}))

        refused = await apply(deployment, renamed)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert 'pipeline "web-old" is removed (or renamed) but holds 200 events' in refused.stderr
        assert "--drain" in refused.stderr and "--discard" in refused.stderr
        assert await consumer_names(js) == {"EVENTS_web-old_0"}  # nothing changed

        drained = await apply(deployment, renamed, "--drain")
        assert drained.returncode == 0, drained.stdout + drained.stderr
        await wait_for(lambda: _routes_to(js, "web-new"), what="the new pipeline's consumer")
        await asyncio.sleep(1.5)  # every process follows within a second
        after = await post(serve, 100, "after")
        rx.respond_with(200)
        await wait_for(lambda: stream_empty(js), what="both backlogs delivered", timeout=60)
        await wait_for(lambda: _names_are(js, {"EVENTS_web-new_0"}), what="the old pipeline to go")
        got = ids_of(rx)
        assert set(got) == set(before) | set(after)
        assert not set(before) & set(after)


async def test_an_older_copy_of_the_file_cannot_drop_a_pipeline_with_events(deployment, tmp_path):
    async with WebhookReceiver(503) as rx, jetstream(deployment.nats_url) as js:
        stale = tmp_path / "stale.yaml"
        stale.write_text(workspace(rx.url, {"web-a": 1}))
        deployment.write_workspace(workspace(rx.url, {"web-a": 1, "web-b": 1}))
        serve = deployment.start("serve")
        await serve.wait_healthy()
        await post(serve, 50, "held")
        await wait_for(lambda: _pending_is(js, "web-b", 50), what="web-b's backlog")
        refused = await apply(deployment, stale)
        assert refused.returncode == 1
        assert 'pipeline "web-b" is removed (or renamed) but holds 50 events' in refused.stderr
        assert await consumer_names(js) == {"EVENTS_web-a_0", "EVENTS_web-b_0"}
        assert await pending(js, "web-b") == 50


async def test_fewer_shards_drain_the_dropped_ones_first(deployment, tmp_path):
    async with WebhookReceiver(503) as rx, jetstream(deployment.nats_url) as js:
        deployment.write_workspace(workspace(rx.url, {"web-hook": 2}))
        serve = deployment.start("serve")
        await serve.wait_healthy()
        sent = await post(serve, 300, "sharded", users=40)
        assert await pending(js, "web-hook", 1) > 0  # 40 users spread over both shards
        one = tmp_path / "one-shard.yaml"
        one.write_text(workspace(rx.url, {"web-hook": 1}))

        refused = await apply(deployment, one)
        assert refused.returncode == 1
        assert 'pipeline "web-hook" goes from 2 to 1 shards, but shards 1 hold' in refused.stderr
        drained = await apply(deployment, one, "--drain")
        assert drained.returncode == 0, drained.stdout + drained.stderr
        await asyncio.sleep(1.5)
        more = await post(serve, 100, "one-shard", users=40)
        assert await pending(js, "web-hook", 1) > 0  # still there: it drains first
        rx.respond_with(200)
        await wait_for(lambda: stream_empty(js), what="every event delivered", timeout=60)
        await wait_for(
            lambda: _names_are(js, {"EVENTS_web-hook_0"}), what="the dropped shard's consumer"
        )
        assert set(ids_of(rx)) == set(sent) | set(more)


async def test_discard_moves_the_backlog_to_the_dead_letters(deployment, tmp_path):
    async with WebhookReceiver(503) as rx, jetstream(deployment.nats_url) as js:
        deployment.write_workspace(workspace(rx.url, {"web-a": 1, "web-b": 1}))
        serve = deployment.start("serve")
        await serve.wait_healthy()
        await post(serve, 40, "doomed")
        await wait_for(lambda: _pending_is(js, "web-b", 40), what="web-b's backlog")
        only_a = tmp_path / "only-a.yaml"
        only_a.write_text(workspace(rx.url, {"web-a": 1}))
        discarded = await apply(deployment, only_a, "--discard")
        assert discarded.returncode == 0, discarded.stdout + discarded.stderr
        await wait_for(lambda: _names_are(js, {"EVENTS_web-a_0"}), what="web-b to go")
        letters = await list_dead_letters(js, "web-b")
        assert len(letters) == 40
        assert {letter.reason for letter in letters} == {"pipeline removed"}
        assert len({letter.message_id for letter in letters}) == 40
        assert await pending(js, "web-a") == 40  # untouched


async def test_every_process_follows_one_apply_within_two_seconds(deployment, tmp_path):
    other = Deployment(tmp_path / "elsewhere", deployment.nats_url)
    other.root.mkdir()
    async with WebhookReceiver(200) as rx, _client(deployment.nats_url) as nc:
        try:
            deployment.write_workspace(workspace(rx.url, {"web-a": 1}))
            first = deployment.start("serve", name="first")
            await first.wait_healthy()
            second = other.start("serve", name="second", KRENALIS_WORKSPACE="")
            worker = other.start("worker", name="worker", KRENALIS_WORKSPACE="")
            await second.wait_healthy()
            await wait_for(lambda: _processes_at(nc, 1, 5), what="five processes")
            change = tmp_path / "more.yaml"
            change.write_text(workspace(rx.url, {"web-a": 1, "web-b": 1}))
            applied = await apply(deployment, change)
            assert applied.returncode == 0, applied.stdout + applied.stderr
            stored = time.monotonic()
            # serve, its worker process, the other serve, its worker process, the worker.
            await wait_for(
                lambda: _processes_at(nc, 2, 5), what="every process at revision 2",
                interval=0.05, timeout=10, processes=[first, second, worker],
            )  # fmt: skip
            assert time.monotonic() - stored < 2.0
            shown = await asyncio.to_thread(deployment.cli, "status", "--json")
            processes = json.loads(shown.stdout)["processes"]
            assert sorted(p["role"] for p in processes) == [
                "serve", "serve", "worker", "worker", "worker",
            ]  # fmt: skip
            assert {p["revision"] for p in processes} == {2}
            served = {name for p in processes for name in p["pipelines"]}
            assert served == {"web-a", "web-b"}
        finally:
            other.stop_all()


@contextlib.asynccontextmanager
async def _client(url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


async def _processes_at(nc: Client, revision: int, count: int) -> bool:
    processes = await list_processes(nc, wait=0.2)
    return len(processes) == count and all(p.revision == revision for p in processes)


async def _routes_to(js: JetStreamContext, pipeline: str) -> bool:
    return consumer_name(pipeline, 0) in await consumer_names(js)


async def _names_are(js: JetStreamContext, expected: set[str]) -> bool:
    return await consumer_names(js) == expected


async def _pending_is(js: JetStreamContext, pipeline: str, count: int) -> bool:
    return await pending(js, pipeline) == count
