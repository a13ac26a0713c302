"""`krenalis status` and `krenalis dlq` against a real nats-server with the real EVENTS layout.

The CLI runs in a worker thread (it starts its own event loop) while the test's own connection
sets up the stream, consumers and dead letters and checks their fate.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fixtures.cli import run_cli as _main
from fixtures.nats_servers import settings_for
from krenalis.config import Settings
from krenalis.ops.keys import public_key_from_seed
from krenalis.ops.status import watch
from krenalis.runtime.nats_server import (
    EmbeddedNats,
    create_local_seed,
    local_seed_path,
    nkey_authorization,
)
from krenalis.runtime.processes import free_port
from krenalis.stream.connection import NatsConnection
from krenalis.stream.deadletters import dead_letter
from krenalis.stream.layout import (
    STREAM,
    consumer_name,
    ensure_consumer,
    ensure_streams,
    subject,
)
from krenalis.workspace.store import Revision, WorkspaceStore

KEY = "k" * 32
WORKSPACE = f"""\
sources:
  web:
    write_key: "{KEY}"
pipelines:
  web-wh:
    source: web
    to: warehouse
  web-later:
    source: web
    to: warehouse
"""


@pytest.fixture
async def conn(
    nats_server: EmbeddedNats, nats_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[NatsConnection]:
    """The EVENTS layout on the test server, and the environment the CLI will read."""
    monkeypatch.setenv("KRENALIS_NATS_URL", nats_server.url)
    connection = NatsConnection(nats_settings, name="ops-test")
    await connection.connect(timeout=10)
    try:
        await ensure_streams(connection.js, nats_settings)
        yield connection
    finally:
        await connection.close()


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(_main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def _status(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = await _cli(capsys, "status", "--json")
    assert code == 0, err
    return json.loads(out)


def _rows(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["pipeline"]: row for row in snapshot["pipelines"]}


async def _pending(conn: NatsConnection, pipeline: str) -> int:
    return (await conn.js.consumer_info(STREAM, consumer_name(pipeline))).num_pending


async def _dead(conn: NatsConnection, pipeline: str, seq: int, **headers: Any) -> None:
    event = {"type": "track", "event": "Order Completed", "messageId": f"m-{seq}"}
    await dead_letter(
        conn.js, pipeline=pipeline, shard=0, data=json.dumps(event).encode(),
        reason=headers.get("reason", "webhook answered 400: [bad] payload"),
        attempts=3, first_attempt=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), stream_seq=seq,
        generation="1",
    )  # fmt: skip


# ---------------------------------------------------------------- status


async def store_workspace(conn: NatsConnection, text: str) -> None:
    """The workspace as `workspace apply` stores it, without making its consumers."""
    store = await WorkspaceStore(conn.js, conn.settings).open()
    await store.store(Revision(0, text, "test"), 0)


async def test_status_counts_match_the_consumers(
    conn: NatsConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    await store_workspace(conn, WORKSPACE)
    js = conn.js
    await ensure_consumer(js, "web-wh", 0, 30.0)
    await ensure_consumer(js, "gone", 0, 30.0)
    for _ in range(5):
        await js.publish(subject("web-wh", 0), b"{}")

    snapshot = await _status(capsys)
    assert snapshot["stream"]["exists"] and snapshot["stream"]["messages"] == 5
    assert snapshot["stream"]["replicas"] == 1 and snapshot["stream"]["storage"] == "file"
    rows = _rows(snapshot)
    assert list(rows) == ["web-wh", "web-later", "gone"]  # file order, then the others
    wh = rows["web-wh"]
    assert (wh["pending"], wh["in_flight"], wh["redelivered"], wh["dead_letters"]) == (5, 0, 0, 0)
    assert wh["state"] == "enabled" and wh["source"] == "web" and wh["to"] == "warehouse"
    assert wh["last_delivery"] is None
    assert rows["web-later"]["state"] == "no consumer yet"
    assert rows["gone"]["state"] == "not in workspace"

    sub = await js.pull_subscribe_bind(consumer_name("web-wh"), stream=STREAM)
    first = await sub.fetch(2, timeout=2)
    await first[0].nak()
    held = {m.metadata.sequence.stream for m in first}
    while True:  # new messages may come before the nak'ed one; all stay unacked
        (msg,) = await sub.fetch(1, timeout=2)
        held.add(msg.metadata.sequence.stream)
        if msg.metadata.num_delivered == 2:
            break
    wh = _rows(await _status(capsys))["web-wh"]
    assert (wh["pending"], wh["in_flight"], wh["redelivered"]) == (5 - len(held), len(held), 1)
    assert wh["last_delivery"] is not None

    code, out, _ = await _cli(capsys, "status")
    assert code == 0
    assert (
        "EVENTS and EVENTS_ARCHIVE: 5 messages" in out and "web-wh" in out and "no consumer" in out
    )


async def test_status_without_a_stored_workspace_still_shows_consumers(
    conn: NatsConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    await ensure_consumer(conn.js, "web-wh", 0, 30.0)
    snapshot = await _status(capsys)
    assert snapshot["workspace"]["loaded"] is False
    assert "no workspace stored" in snapshot["workspace"]["error"]
    assert _rows(snapshot)["web-wh"]["state"] == "consumer"


async def test_status_finds_the_embedded_server_of_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRENALIS_DATA_DIR", str(tmp_path / "data"))
    code, _, err = await _cli(capsys, "status")
    assert code == 2 and "KRENALIS_NATS_URL is not set" in err and "krenalis serve" in err

    store = tmp_path / "data" / "nats"
    port_file = store / "port"
    port_file.parent.mkdir(parents=True)
    port_file.write_text(str(free_port()))
    code, _, err = await _cli(capsys, "status")
    assert code == 1 and "where nothing listens" in err

    # As serve runs it: open only to the key in the data directory, which status reads there.
    block = nkey_authorization(public_key_from_seed(create_local_seed(store)))
    with EmbeddedNats(store, auth_block=block, remember_port=True):
        snapshot = await _status(capsys)
        assert snapshot["stream"] == {"name": "EVENTS", "exists": False}

        local_seed_path(store).unlink()
        code, _, err = await _cli(capsys, "status")
        assert code == 1 and f"{local_seed_path(store)} is missing" in err


async def test_watch_refreshes(
    conn: NatsConnection, nats_server: EmbeddedNats, capsys: pytest.CaptureFixture[str]
) -> None:
    await ensure_consumer(conn.js, "web-wh", 0, 30.0)
    settings = settings_for(nats_server.url)
    await watch(conn, settings, 0.01, as_json=True, iterations=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(
        json.loads(x)["pipelines"][0]["pipeline"] == "web-wh" for x in lines
    )

    screen = io.StringIO()
    console = Console(file=screen, width=120, force_terminal=False)
    await watch(conn, settings, 0.01, iterations=2, console=console)
    assert (
        "EVENTS and EVENTS_ARCHIVE: 0 messages" in screen.getvalue()
        and "web-wh" in screen.getvalue()
    )


# ---------------------------------------------------------------- dlq


async def test_dlq_list_show_replay_purge(
    conn: NatsConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    js = conn.js
    await ensure_consumer(js, "p1", 0, 30.0)
    code, out, _ = await _cli(capsys, "dlq", "list")
    assert code == 0 and "No dead letters." in out

    await _dead(conn, "p1", 11)
    code, out, _ = await _cli(capsys, "dlq", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and listed["total"] == 1
    (letter,) = listed["dead_letters"]
    assert letter["pipeline"] == "p1" and letter["attempts"] == 3 and letter["message_id"] == "m-11"
    assert letter["reason"] == "webhook answered 400: [bad] payload"
    seq = letter["seq"]

    code, out, _ = await _cli(capsys, "dlq", "list")
    assert code == 0 and "400: [bad] payload" in " ".join(out.split()) and "1 dead letter" in out
    assert _rows(await _status(capsys))["p1"]["dead_letters"] == 1

    code, out, _ = await _cli(capsys, "dlq", "show", str(seq))
    assert code == 0 and "Attempts:       3" in out and '"messageId": "m-11"' in out
    code, _, err = await _cli(capsys, "dlq", "show", "999")
    assert code == 1 and "no dead letter with sequence 999" in err

    before = await _pending(conn, "p1")
    code, out, err = await _cli(capsys, "dlq", "replay", str(seq))
    assert code == 0, err
    assert "Replayed 1 dead letter into EVENTS (p1: 1)" in out
    assert await _pending(conn, "p1") == before + 1
    assert json.loads((await _cli(capsys, "dlq", "list", "--json"))[1])["total"] == 0

    # Without SEQ: every letter whose pipeline still has a consumer; the others stay.
    await _dead(conn, "p1", 12)
    await _dead(conn, "gone", 13)
    code, out, err = await _cli(capsys, "dlq", "replay")
    assert code == 1
    assert "Replayed 1 dead letter" in out and "pipeline gone has no consumer" in err
    assert await _pending(conn, "p1") == before + 2
    assert json.loads((await _cli(capsys, "dlq", "list", "--json"))[1])["total"] == 1

    code, _, err = await _cli(capsys, "dlq", "purge")  # stdin is not a terminal here
    assert code == 2 and "--yes" in err
    code, out, _ = await _cli(capsys, "dlq", "purge", "--pipeline", "gone", "--yes")
    assert code == 0 and "Deleted 1 dead letter of pipeline gone." in out
    code, out, _ = await _cli(capsys, "dlq", "list")
    assert "No dead letters." in out


async def test_dlq_replay_many_by_pipeline(
    conn: NatsConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    await ensure_consumer(conn.js, "p1", 0, 30.0)
    await ensure_consumer(conn.js, "p2", 0, 30.0)
    await asyncio.gather(*(_dead(conn, "p1", seq) for seq in range(60)))
    await _dead(conn, "p2", 100)
    code, out, err = await _cli(capsys, "dlq", "replay", "--pipeline", "p1")
    assert code == 0, err
    assert "Replayed 60 dead letters into EVENTS (p1: 60)" in out
    assert await _pending(conn, "p1") == 60 and await _pending(conn, "p2") == 0
    listed = json.loads((await _cli(capsys, "dlq", "list", "--json"))[1])
    assert [x["pipeline"] for x in listed["dead_letters"]] == ["p2"]


async def test_dlq_refuses_a_wildcard_pipeline(
    conn: NatsConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await _cli(capsys, "dlq", "purge", "--pipeline", "*", "--yes")
    assert code == 2 and "not a pipeline id" in err
