"""End to end: the archive, `krenalis replay` and `backfill`, with exact counts.

Real `krenalis` processes, a real nats-server, PostgreSQL and an HTTP receiver. Each event the
collector accepts leaves an archive copy in EVENTS; replays read it back into a pipeline, whose
workers deliver as usual; a replayed event keeps its messageId, so the warehouse and webhooks
take each event once however often it is replayed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys

import msgspec
import nats
from e2e_support import (
    WRITE_KEY,
    archive_counts,
    collector_answer,
    jetstream,
    make_event,
    process_env,
    stream_empty,
    subject_counts,
    wait_for,
    warehouse_rows,
    warehouse_stats,
)

from krenalis.replay.state import BUCKET, ReplayState
from krenalis.stream.layout import ARCHIVE_STREAM, STREAM
from krenalis.workspace.store import BUCKET as WORKSPACE_BUCKET
from krenalis.workspace.store import KEY as WORKSPACE_KEY
from sinks.webhook_receiver import WebhookReceiver

TRACK_FILTER = "{all: [{field: type, op: is, value: track}]}"


def workspace(dsn: str | None, hook: str, pipelines: str, *, archive: str = "") -> str:
    """A source `web`, the warehouse, a webhook destination `hook`, and `pipelines` (YAML)."""
    warehouse = f'warehouse:\n  dsn: "{dsn}"\n' if dsn else ""
    kept = f"\n    archive: {archive}" if archive else ""
    return (
        f'{warehouse}sources:\n  web:\n    write_key: "{WRITE_KEY}"{kept}\n'
        f'destinations:\n  hook:\n    type: webhook\n    url: "{hook}"\n'
        f"pipelines:\n{pipelines}"
    )


def events(prefix: str, tracks: int, identifies: int) -> list[dict]:
    found = [make_event(f"{prefix}-t{i}", user=f"u{i % 7}") for i in range(tracks)]
    found += [
        {"type": "identify", "messageId": f"{prefix}-i{i}", "userId": f"u{i}",
         "traits": {"plan": "pro"}}
        for i in range(identifies)
    ]  # fmt: skip
    return found


async def post(base_url: str, sent: list[dict]) -> None:
    for start in range(0, len(sent), 100):
        await collector_answer(base_url, sent[start : start + 100])


async def cli(deployment, *args: str) -> subprocess.CompletedProcess[str]:
    result = await asyncio.to_thread(deployment.cli, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def summary_counts(text: str) -> tuple[int, int, int]:
    """(read, matched, published) of a replay's summary line."""
    found = re.search(
        r"([\d,]+) archived events .* read, ([\d,]+) matched, ([\d,]+) published", text
    )
    assert found is not None, text
    return tuple(int(g.replace(",", "")) for g in found.groups())  # type: ignore[return-value]


def posted_keys(rx: WebhookReceiver) -> list[tuple[str, str]]:
    """(Idempotency-Key, body) of every POST the receiver got."""
    return [
        (r.headers["idempotency-key"], r.body.decode()) for r in rx.requests if r.method == "POST"
    ]


async def rows_snapshot(dsn: str) -> list[tuple]:
    return await warehouse_rows(dsn, "SELECT * FROM krenalis_events ORDER BY message_id")


async def test_replay_into_a_webhook_and_the_warehouse_and_again_changes_nothing(
    deployment, warehouse_dsn
):
    async with WebhookReceiver() as rx, jetstream(deployment.nats_url) as js:
        to_warehouse = "  web-wh:\n    source: web\n    to: warehouse\n"
        deployment.write_workspace(workspace(warehouse_dsn, rx.url, to_warehouse))
        serve = deployment.start("serve")
        await serve.wait_healthy()
        sent = events("r", tracks=40, identifies=10)
        await post(serve.base_url, sent)
        await wait_for(lambda: warehouse_stats(warehouse_dsn), what="rows", processes=[serve])
        await wait_for(lambda: stream_empty(js), what="the pipeline copies gone", processes=[serve])
        assert await archive_counts(js) == {"web": 50}

        # A webhook pipeline added afterwards gets the past by a replay (its tracks only).
        to_hook = f"  web-hook:\n    source: web\n    to: hook\n    filter: {TRACK_FILTER}\n"
        deployment.write_workspace(workspace(warehouse_dsn, rx.url, to_warehouse + to_hook))
        await cli(deployment, "workspace", "apply", str(deployment.workspace_path))
        result = await cli(deployment, "replay", "--since", "1h", "--to", "web-hook")
        assert summary_counts(result.stdout) == (50, 40, 40)
        await wait_for(lambda: len(rx.bodies) >= 40, what="40 posts", processes=[serve])
        await wait_for(lambda: stream_empty(js), what="the replay delivered", processes=[serve])
        first = posted_keys(rx)
        tracks = sorted(e["messageId"] for e in sent if e["type"] == "track")
        assert sorted(key for key, _ in first) == sorted(f"web:{m}" for m in tracks)
        assert sorted(body["messageId"] for body in rx.bodies) == tracks  # ids kept

        # The warehouse lost rows (a restore from an old backup): a replay puts them back.
        await warehouse_rows(
            warehouse_dsn, "DELETE FROM krenalis_events WHERE message_id LIKE 'r-t1%' RETURNING 1"
        )
        assert (await warehouse_stats(warehouse_dsn))[0] == 39
        result = await cli(deployment, "replay", "--since", "1h", "--to", "web-wh")
        assert summary_counts(result.stdout) == (50, 50, 50)
        await wait_for(lambda: stream_empty(js), what="the replay delivered", processes=[serve])
        await wait_for(
            lambda: _equals(warehouse_stats(warehouse_dsn), (50, 50)), what="50 rows again"
        )
        rows = await rows_snapshot(warehouse_dsn)

        # A second replay of both changes nothing: same rows, same keys with the same bodies.
        for pipeline in ("web-hook", "web-wh"):
            result = await cli(deployment, "replay", "--since", "1h", "--to", pipeline)
            assert summary_counts(result.stdout)[1:] == (
                (40, 40) if pipeline == "web-hook" else (50, 50)
            )
        await wait_for(lambda: len(rx.bodies) >= 80, what="the second replay", processes=[serve])
        await wait_for(lambda: stream_empty(js), what="the replays delivered", processes=[serve])
        assert set(posted_keys(rx)) == set(first) and len(posted_keys(rx)) == 80
        assert await rows_snapshot(warehouse_dsn) == rows
        assert await archive_counts(js) == {"web": 50}  # replays add nothing to the archive


async def _equals(probe, expected):
    return await probe == expected


async def test_a_replay_killed_halfway_resumes_and_stores_each_copy_once(deployment):
    async with WebhookReceiver() as rx, jetstream(deployment.nats_url) as js:
        later = "  web-later:\n    source: web\n    to: hook\n    enabled: false\n"
        deployment.write_workspace(workspace(None, rx.url, later))
        serve = deployment.start("serve")
        await serve.wait_healthy()
        sent = events("k", tracks=3000, identifies=0)
        await post(serve.base_url, sent)
        assert await archive_counts(js) == {"web": 3000}

        env = process_env(deployment.data_dir, nats_url=deployment.nats_url)
        args = ["replay", "--since", "1h", "--to", "web-later", "--rate", "1000"]
        replay = subprocess.Popen(
            [sys.executable, "-m", "krenalis.cli", *args], cwd=deployment.root, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            replay_id = re.search(r"Replay (\w+)", replay.stderr.readline()).group(1)
            state = await wait_for(lambda: _published(deployment, replay_id, 900),
                                   what="a third of the replay", timeout=20)  # fmt: skip
            os.kill(replay.pid, signal.SIGKILL)
            replay.wait(10)
        finally:
            if replay.poll() is None:
                replay.kill()
                replay.wait(10)
        assert not state.done and state.published < 3000

        result = await cli(deployment, "replay", "--resume", replay_id)
        assert summary_counts(result.stdout) == (3000, 3000, 3000)
        # Each copy stored once, though the chunk in flight at the kill was published again.
        assert (await subject_counts(js)) == {"events.v1.web-later.0": 3000}
        again = await cli(deployment, "replay", "--resume", replay_id)  # done: nothing to do
        assert summary_counts(again.stdout) == (3000, 3000, 3000)

        deployment.write_workspace(workspace(None, rx.url, later.replace("false", "true")))
        await wait_for(lambda: len(rx.bodies) >= 3000, what="3000 posts", timeout=90,
                       processes=[serve])  # fmt: skip
        await wait_for(lambda: stream_empty(js), what="every copy delivered", processes=[serve])
        assert sorted(b["messageId"] for b in rx.bodies) == sorted(e["messageId"] for e in sent)


async def _published(deployment, replay_id: str, at_least: int) -> ReplayState | None:
    nc = await nats.connect(deployment.nats_url)
    try:
        entry = await (await nc.jetstream().key_value(BUCKET)).get(replay_id)
        state = msgspec.json.decode(entry.value, type=ReplayState)
        return state if state.published >= at_least else None
    except Exception:
        return None
    finally:
        await nc.close()


async def test_backfill_runs_once_on_a_new_pipeline_with_two_worker_processes(deployment):
    async with (
        WebhookReceiver() as old,
        WebhookReceiver() as new,
        jetstream(deployment.nats_url) as js,
    ):
        first = "  web-old:\n    source: web\n    to: hook\n"
        deployment.write_workspace(workspace(None, old.url, first))
        collector = deployment.start("collector")
        workers = [deployment.start("worker", name=f"worker-{n}") for n in (1, 2)]
        await collector.wait_healthy()
        sent = events("b", tracks=20, identifies=10)
        await post(collector.base_url, sent)
        await wait_for(lambda: len(old.bodies) >= 30, what="30 delivered", processes=workers)

        text = workspace(None, old.url, first) + (
            f"  web-new:\n    source: web\n    to: other\n    backfill: 1h\n"
            f"    filter: {TRACK_FILTER}\n"
        )
        text = text.replace(
            "pipelines:", f'  other:\n    type: webhook\n    url: "{new.url}"\npipelines:'
        )
        deployment.write_workspace(text)
        await wait_for(lambda: len(new.bodies) >= 20, what="the backfill", processes=workers)
        await wait_for(lambda: _no_backfill_pending(js), what="the backfill recorded done")
        await wait_for(lambda: stream_empty(js), what="nothing left", processes=workers)
        await asyncio.sleep(1.0)  # nothing more may come
        tracks = sorted(e["messageId"] for e in sent if e["type"] == "track")
        assert sorted(b["messageId"] for b in new.bodies) == tracks  # each once
        assert sum(w.log_count("Backfill done.") for w in workers) == 1
        assert len(old.bodies) == 30


async def _no_backfill_pending(js) -> bool:
    entry = await (await js.key_value(WORKSPACE_BUCKET)).get(WORKSPACE_KEY)
    stored = json.loads(entry.value)
    return not stored.get("backfills")


async def test_archive_copies_expire_by_their_ttl(deployment):
    async with WebhookReceiver() as rx, jetstream(deployment.nats_url) as js:
        to_hook = "  web-hook:\n    source: web\n    to: hook\n"
        deployment.write_workspace(workspace(None, rx.url, to_hook, archive="2s"))
        serve = deployment.start("serve")
        await serve.wait_healthy()
        await post(serve.base_url, events("x", tracks=10, identifies=0))
        assert await archive_counts(js) == {"web": 10}
        info = await js.get_last_msg(ARCHIVE_STREAM, "archive.v1.web")
        assert info.headers["Nats-TTL"] == "2"
        await wait_for(lambda: len(rx.bodies) >= 10, what="10 delivered", processes=[serve])
        await wait_for(lambda: _empty_archive(js), what="the archive to expire", timeout=15)
        result = await cli(deployment, "replay", "--since", "1h", "--to", "web-hook", "--dry-run")
        assert "0 archived events" in result.stdout


async def _empty_archive(js) -> bool:
    return await archive_counts(js) == {}


async def test_processed_events_leave_while_archive_copies_stay(deployment):
    async with WebhookReceiver() as rx, jetstream(deployment.nats_url) as js:
        to_hook = "  web-hook:\n    source: web\n    to: hook\n"
        deployment.write_workspace(workspace(None, rx.url, to_hook))
        serve = deployment.start("serve")
        await serve.wait_healthy()
        await post(serve.base_url, events("s", tracks=25, identifies=0))
        await wait_for(lambda: len(rx.bodies) >= 25, what="25 delivered", processes=[serve])
        await wait_for(lambda: stream_empty(js), what="the pruning", processes=[serve])
        assert await archive_counts(js) == {"web": 25}

        status = json.loads((await cli(deployment, "status", "--json")).stdout)
        assert (status["stream"]["pipeline_copies"], status["stream"]["archive_copies"]) == (0, 25)
        [pipeline] = status["pipelines"]
        assert (pipeline["pipeline"], pipeline["pending"], pipeline["in_flight"]) == (
            "web-hook",
            0,
            0,
        )
        [archive] = status["archives"]
        assert (archive["source"], archive["messages"], archive["retention"]) == (
            "web",
            25,
            604800.0,
        )
        assert archive["first"] <= archive["last"] and archive["approx_bytes"] > 25 * 300

        # Removing the pipeline purges its subject, not the archive.
        deployment.write_workspace(
            workspace(None, rx.url, "  web-other:\n    source: web\n    to: hook\n")
        )
        await wait_for(lambda: _consumers(js, {"EVENTS_web-other_0"}), what="the retirement")
        assert await archive_counts(js) == {"web": 25}


async def _consumers(js, expected: set[str]) -> bool:
    return {c.name for c in await js.consumers_info(STREAM)} == expected
