"""The workspace in NATS: revisions, compare-and-set, what a change says, what it refuses.

Against a real nats-server; `krenalis workspace ...` runs in-process (in a thread: it starts its
own event loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fixtures.cli import run_cli
from fixtures.nats_servers import connected
from krenalis.config import Settings
from krenalis.errors import RevisionConflict, WorkspaceError
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import STREAM, consumer_name, subject
from krenalis.workspace.apply import Choice, apply_plan, plan_change
from krenalis.workspace.diff import diff_texts, render
from krenalis.workspace.store import BUCKET, HISTORY, Revision, WorkspaceStore

KEY = "w" * 32


def text(pipelines: dict[str, int], *, secret: str = "${HOOK_SECRET}") -> str:
    body = f"""\
sources:
  web:
    write_key: "{KEY}"
destinations:
  hook:
    type: webhook
    url: https://example.com/hook?token=${{HOOK_TOKEN}}
    secret: {secret}
pipelines:
"""
    for pipeline, shards in pipelines.items():
        body += f"  {pipeline}:\n    source: web\n    to: hook\n    shards: {shards}\n"
    return body


@pytest.fixture
async def conn(nats_settings: Settings) -> AsyncIterator[NatsConnection]:
    connection = await connected(nats_settings)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def store(conn: NatsConnection) -> WorkspaceStore:
    return await WorkspaceStore(conn.js, conn.settings).open()


async def change(conn: NatsConnection, store: WorkspaceStore, body: str, **kwargs) -> Revision:
    plan = await plan_change(conn.js, store, body, "test.yaml", environ={}, **kwargs)
    assert not plan.refused, plan.refused
    return await apply_plan(conn.js, conn.settings, store, plan)


# ---------------------------------------------------------------- diff


def test_a_diff_names_what_changed_and_never_a_secret_value() -> None:
    old = text({"p": 1}, secret="s3cret-old")
    new = text({"p": 2, "q": 1}, secret="s3cret-new").replace("token=${HOOK_TOKEN}", "token=t0k")
    shown = render(diff_texts(old, new))
    assert shown.splitlines() == [
        '~ destination "hook": url changed, secret changed',
        '~ pipeline "p": shards 1 -> 2',
        '+ pipeline "q"',
    ]
    for secret in ("s3cret-old", "s3cret-new", "t0k"):
        assert secret not in shown
    assert render(diff_texts(old, old)) == "no change"
    assert [str(c) for c in diff_texts(None, old)][0] == '+ source "web"'


# ---------------------------------------------------------------- store


async def test_the_bucket_keeps_history_and_follows_the_settings(store: WorkspaceStore) -> None:
    status = await store.kv.status()
    assert status.bucket == BUCKET and status.history == HISTORY >= 20
    assert status.stream_info.config.num_replicas == 1


async def test_variables_are_stored_as_written(conn, store, monkeypatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "very-secret-value")
    stored = await change(conn, store, text({"p": 1}))
    raw = (await store.kv.get("workspace")).value
    assert b"${HOOK_SECRET}" in raw and b"very-secret-value" not in raw
    assert (await store.current()) == stored


async def test_compare_and_set_refuses_a_change_made_on_a_stale_read(conn, store) -> None:
    await change(conn, store, text({"p": 1}))
    stale = await plan_change(conn.js, store, text({"p": 1, "q": 1}), "a.yaml", environ={})
    await change(conn, store, text({"p": 1, "r": 1}))  # another operator, meanwhile
    with pytest.raises(RevisionConflict, match="changed while this change was prepared"):
        await apply_plan(conn.js, conn.settings, store, stale)
    assert "r:" in (await store.current()).text


async def test_an_invalid_file_is_refused_with_its_line(conn, store) -> None:
    with pytest.raises(WorkspaceError, match=r"^bad\.yaml:3: source \"web\": write_key"):
        await plan_change(conn.js, store, "sources:\n  web:\n    write_key: x\n", "bad.yaml")


async def test_missing_variables_are_noted_not_refused(conn, store) -> None:
    plan = await plan_change(conn.js, store, text({"p": 1}), "t.yaml", environ={})
    assert plan.unset == {"HOOK_SECRET", "HOOK_TOKEN"} and not plan.refused


# ---------------------------------------------------------------- lifecycle


async def test_consumers_exist_before_the_revision_is_stored(conn, store) -> None:
    stored = await change(conn, store, text({"p": 2}))
    assert stored.number == (await store.current()).number
    for shard in (0, 1):
        await conn.js.consumer_info(STREAM, consumer_name("p", shard))


async def test_removing_a_pipeline_with_events_is_refused_unless_told(conn, store) -> None:
    await change(conn, store, text({"p": 1, "q": 1}))
    for n in range(7):
        await conn.js.publish(subject("q", 0), b"{}", headers={"Nats-Msg-Id": f"m{n}"})
    plan = await plan_change(conn.js, store, text({"p": 1}), "t.yaml", environ={})
    assert plan.refused == [
        'pipeline "q" is removed (or renamed) but holds 7 events (pending or in flight). '
        "Choose: --drain (stop routing to it, deliver the backlog, then remove it) or --discard "
        '(move the backlog to EVENTS_DLQ with reason "pipeline removed", where `krenalis dlq '
        "replay` can send it again)"
    ]
    drained = await change(conn, store, text({"p": 1}), choice=Choice.DRAIN)
    (retirement,) = drained.retired
    assert (retirement.pipeline, retirement.shards, retirement.mode) == ("q", (0,), "drain")
    assert "q:" in retirement.text  # the draining worker builds q's sink from it
    await conn.js.consumer_info(STREAM, consumer_name("q", 0))  # still there: it drains


async def test_adding_back_a_retiring_pipeline_keeps_it(conn, store) -> None:
    await change(conn, store, text({"p": 1, "q": 1}))
    await conn.js.publish(subject("q", 0), b"{}")
    retiring = await change(conn, store, text({"p": 1}), choice=Choice.DRAIN)
    assert retiring.retired
    back = await change(conn, store, text({"p": 1, "q": 1}))
    assert back.retired == ()


async def test_fewer_shards_retire_only_the_dropped_ones(conn, store) -> None:
    await change(conn, store, text({"p": 3}))
    fewer = await change(conn, store, text({"p": 1}))  # nothing pending: no choice needed
    (retirement,) = fewer.retired
    assert (retirement.shards, retirement.mode) == ((1, 2), "drain")


# ---------------------------------------------------------------- the commands


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(run_cli, list(argv))


async def test_apply_show_history_diff_rollback(
    nats_server, store, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("KRENALIS_NATS_URL", nats_server.url)
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(text({"p": 1}))
    second.write_text(text({"p": 1, "q": 1}))

    assert await _cli("workspace", "apply", str(first), "--dry-run") == 0
    assert "Dry run: nothing stored." in capsys.readouterr().out
    assert await store.current() is None
    assert await _cli("workspace", "apply", str(first)) == 0
    out = capsys.readouterr().out
    assert '+ pipeline "p"' in out and "Not set here, so not checked: HOOK_SECRET" in out
    assert await _cli("workspace", "diff", str(second)) == 0
    assert capsys.readouterr().out.strip() == '+ pipeline "q"'
    assert await _cli("workspace", "apply", str(second)) == 0
    assert await _cli("workspace", "apply", str(second)) == 0
    assert "already this one" in capsys.readouterr().out

    assert await _cli("workspace", "show") == 0
    shown = capsys.readouterr()
    assert shown.out == second.read_text() and "revision 2" in shown.err
    assert await _cli("workspace", "show", "--revision", "1") == 0
    assert capsys.readouterr().out == first.read_text()
    assert await _cli("workspace", "history") == 0
    history = capsys.readouterr().out
    assert "revision 1:" in history and '+ pipeline "q"' in history

    assert await _cli("workspace", "rollback", "1") == 0
    capsys.readouterr()
    current = await store.current()
    assert current.text == first.read_text() and current.origin == "rollback to revision 1"
    assert await _cli("workspace", "rollback", "99") == 2
    assert "not in the workspace's history" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse: one of the two at most
        await _cli("workspace", "apply", str(first), "--drain", "--discard")
    assert usage.value.code == 2


# ---------------------------------------------------------------- backfill


async def test_a_pipeline_added_with_backfill_gets_one_pending_backfill(conn, store) -> None:
    base = text({"p": 1}) + "    backfill: 1h\n"  # there from the first revision on
    first = await change(conn, store, base)
    assert [b.pipeline for b in first.backfills] == ["p"]
    added = base + "  q:\n    source: web\n    to: hook\n    backfill: 2h\n"
    stored = await change(conn, store, added)
    kept, new = stored.backfills
    assert kept == first.backfills[0]  # still pending: kept, not made again
    assert new.pipeline == "q" and new.id.startswith("backfill-q-")
    assert abs(new.since - (time.time() - 7200)) < 60
    # A pipeline removed takes its pending backfill along; one that stays keeps its own.
    renamed = base + "  q2:\n    source: web\n    to: hook\n    backfill: 2h\n"
    after = await change(conn, store, renamed)
    assert [b.pipeline for b in after.backfills] == ["p", "q2"]
    assert after.backfills[1].id != new.id
