"""``init_db`` on a warehouse made before sources were kept apart: the key moves in place.

A ``krenalis_events`` table created by an older Krenalis has ``message_id`` alone as its
primary key. ``init_db`` changes it to ``(message_id, connection_id)`` in one transaction under
an advisory lock, keeping every row, and tells what it did.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from fixtures.cli import run_cli
from fixtures.events import stored
from krenalis.errors import SinkError
from krenalis.sinks.base import DELIVERED
from krenalis.sinks.warehouse import COLUMNS, WarehouseSink, event_to_row, init_db
from krenalis.sinks.warehouse.schema import MIGRATED, UP_TO_DATE
from sinks.warehouse_old_schema import OLD_DDL


def make_event(message_id: str, source: str, **overrides: Any) -> dict[str, Any]:
    """A minimal valid event in wire form, sent by ``source``."""
    event: dict[str, Any] = {
        "connectionId": source,
        "anonymousId": "anon-1",
        "messageId": message_id,
        "type": "track",
        "event": "Product Viewed",
        "properties": {"sku": "A-1"},
        "traits": {"plan": "pro"},
        "context": {"ip": "203.0.113.7", "page": {"url": "https://shop.example/"}},
        "receivedAt": "2026-11-26T05:29:02.123Z",
        "sentAt": "2026-11-26T05:29:01.900Z",
        "timestamp": "2026-11-26T05:29:02.023Z",
    }
    event.update(overrides)
    return event


OLD_EVENTS = [make_event(f"m-{i}", "shop", userId=f"u-{i}") for i in range(50)]
OLD_EVENTS += [make_event(f"b-{i}", "blog") for i in range(10)]


async def fetch(dsn: str, query: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        cur = await conn.execute(query)
        return await cur.fetchall()


async def primary_key(dsn: str) -> list[str]:
    """The columns of krenalis_events's primary key, in the index's order."""
    rows = await fetch(
        dsn,
        "SELECT a.attname FROM pg_index i "
        "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = 'krenalis_events'::regclass AND i.indisprimary ORDER BY k.n",
    )
    return [r["attname"] for r in rows]


async def all_rows(dsn: str) -> list[dict[str, Any]]:
    return await fetch(dsn, "SELECT * FROM krenalis_events ORDER BY connection_id, message_id")


@pytest.fixture
async def old_warehouse(warehouse_dsn: str) -> str:
    """A database with the old table, holding rows written as the old sink wrote them."""
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in COLUMNS)
    copy_rows = sql.SQL("COPY krenalis_events ({}) FROM STDIN").format(names)
    async with await psycopg.AsyncConnection.connect(warehouse_dsn) as conn:
        await conn.execute(OLD_DDL)
        async with conn.cursor() as cur, cur.copy(copy_rows) as copy:
            for event in OLD_EVENTS:
                await copy.write_row(event_to_row(event))
        # Identity resolution's column, which the sink never writes, must survive too.
        await conn.execute("UPDATE krenalis_events SET kpid = gen_random_uuid() WHERE user_id > ''")
        await conn.commit()
    assert await primary_key(warehouse_dsn) == ["message_id"]
    return warehouse_dsn


async def test_the_old_key_is_replaced_and_every_row_kept(old_warehouse: str) -> None:
    before = await all_rows(old_warehouse)
    assert len(before) == len(OLD_EVENTS)

    assert await init_db(old_warehouse) == MIGRATED

    assert await primary_key(old_warehouse) == ["message_id", "connection_id"]
    assert await all_rows(old_warehouse) == before
    constraints = await fetch(
        old_warehouse,
        "SELECT conname FROM pg_constraint "
        "WHERE conrelid = 'krenalis_events'::regclass AND contype = 'p'",
    )
    assert constraints == [{"conname": "krenalis_events_pkey"}]  # the name it always had
    indexes = await fetch(
        old_warehouse, "SELECT indexdef FROM pg_indexes WHERE tablename = 'krenalis_events'"
    )
    assert any("(received_at)" in i["indexdef"] for i in indexes)
    assert await fetch(old_warehouse, "SELECT count(*) AS n FROM events") == [
        {"n": len(OLD_EVENTS)}
    ]
    assert await init_db(old_warehouse) == UP_TO_DATE


async def test_after_the_migration_sources_no_longer_share_message_ids(old_warehouse: str) -> None:
    await init_db(old_warehouse)
    forged = make_event("m-1", "blog", event="Forged")  # m-1 is a row of "shop"
    async with WarehouseSink(old_warehouse) as sink:
        assert await sink.write(stored([forged])) == [DELIVERED]
    rows = await fetch(
        old_warehouse,
        "SELECT connection_id, event, user_id FROM krenalis_events WHERE message_id = 'm-1' "
        "ORDER BY connection_id",
    )
    assert rows == [
        {"connection_id": "blog", "event": "Forged", "user_id": None},
        {"connection_id": "shop", "event": "Product Viewed", "user_id": "u-1"},
    ]


async def test_concurrent_starts_migrate_once(old_warehouse: str) -> None:
    before = await all_rows(old_warehouse)
    changes = await asyncio.gather(*(init_db(old_warehouse) for _ in range(8)))
    assert sorted(changes) == sorted([MIGRATED] + [UP_TO_DATE] * 7)
    assert await primary_key(old_warehouse) == ["message_id", "connection_id"]
    assert await all_rows(old_warehouse) == before


async def test_the_migration_waits_for_a_write_in_progress(old_warehouse: str) -> None:
    """A process still running the old sink holds the table: the migration waits for its
    commit, and that write is kept."""
    async with await psycopg.AsyncConnection.connect(old_warehouse) as writer:
        await writer.execute(
            "UPDATE krenalis_events SET event = 'Written meanwhile' WHERE message_id = 'm-2'"
        )
        migration = asyncio.create_task(init_db(old_warehouse))
        await asyncio.sleep(0.5)
        assert not migration.done()  # waiting for the writer's lock
        await writer.commit()
    assert await migration == MIGRATED
    rows = await fetch(old_warehouse, "SELECT event FROM krenalis_events WHERE message_id = 'm-2'")
    assert rows == [{"event": "Written meanwhile"}]


async def test_the_migration_is_all_or_nothing(old_warehouse: str) -> None:
    """A failure inside init_db's transaction leaves the old key (and the rows) as they were."""
    before = await all_rows(old_warehouse)
    async with await psycopg.AsyncConnection.connect(old_warehouse) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            async with conn.transaction():
                assert await init_db(conn) == MIGRATED
                await conn.execute("SET LOCAL statement_timeout = 1")
                await conn.execute("SELECT pg_sleep(1)")
    assert await primary_key(old_warehouse) == ["message_id"]
    assert await all_rows(old_warehouse) == before


@pytest.mark.parametrize(
    ("change", "key", "found"),
    [
        ("DROP CONSTRAINT krenalis_events_pkey", [], "no primary key"),
        (
            "DROP CONSTRAINT krenalis_events_pkey, ADD PRIMARY KEY (message_id, anonymous_id)",
            ["message_id", "anonymous_id"],
            "the primary key (message_id, anonymous_id)",
        ),
    ],
)
async def test_a_key_it_does_not_know_is_left_alone(
    old_warehouse: str, change: str, key: list[str], found: str
) -> None:
    async with await psycopg.AsyncConnection.connect(old_warehouse, autocommit=True) as conn:
        await conn.execute(f"ALTER TABLE krenalis_events {change}")
    with pytest.raises(SinkError, match=re.escape(found)):
        await init_db(old_warehouse)
    assert await primary_key(old_warehouse) == key


def test_krenalis_init_db_says_what_it_did(
    old_warehouse: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    workspace = tmp_path / "krenalis.yaml"
    workspace.write_text(f'warehouse:\n  dsn: "{old_warehouse}"\n')
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for name in [n for n in os.environ if n.startswith("KRENALIS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KRENALIS_WORKSPACE", str(workspace))

    assert run_cli(["init-db"]) == 0
    assert run_cli(["init-db"]) == 0

    printed = capsys.readouterr().err.splitlines()
    assert printed == [
        f"Warehouse tables are ready: {MIGRATED}.",
        f"Warehouse tables are ready: {UP_TO_DATE}.",
    ]
