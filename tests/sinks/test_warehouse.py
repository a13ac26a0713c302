"""The warehouse sink against a real PostgreSQL: rows, types, upserts, rejections, outages."""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import psutil
import psycopg
import pytest
from psycopg.rows import dict_row

from fixtures.events import stored
from krenalis.errors import EmbeddedPostgresError
from krenalis.sinks.base import DELIVERED, Delivered, Rejected, Retry
from krenalis.sinks.warehouse import (
    COLUMNS,
    EmbeddedPostgres,
    WarehouseSink,
    init_db,
    is_retriable,
)
from krenalis.sinks.warehouse.schema import CREATED, UP_TO_DATE


def make_event(message_id: str, **overrides: Any) -> dict[str, Any]:
    """A minimal valid event in wire form (camelCase keys)."""
    event: dict[str, Any] = {
        "connectionId": "1234",
        "anonymousId": "anon-1",
        "messageId": message_id,
        "type": "track",
        "event": "Product Viewed",
        "properties": {"sku": "A-1"},
        "traits": {},
        "receivedAt": "2026-11-26T05:29:02.123Z",
        "sentAt": "2026-11-26T05:29:01.900Z",
        "originalTimestamp": "2026-11-26T05:29:01.800Z",
        "timestamp": "2026-11-26T05:29:02.023Z",
    }
    event.update(overrides)
    return event


FULL_EVENT: dict[str, Any] = {
    "connectionId": "1700123",
    "anonymousId": "b5f7a3c2-anon",
    "channel": "web",
    "category": "Shop",
    "context": {
        "app": {"name": "Shop", "version": "2.1.0", "build": "2100", "namespace": "com.shop"},
        "browser": {"name": "Chrome", "other": "", "version": "131.0.6778.86"},
        "campaign": {
            "name": "winter",
            "source": "newsletter",
            "medium": "email",
            "term": "boots",
            "content": "hero",
        },
        "consents": {"marketing": False, "analytics": True},
        "device": {
            "id": "dev-1",
            "advertisingId": "ad-1",
            "adTrackingEnabled": True,
            "manufacturer": "Google",
            "model": "Pixelbook",
            "name": "pb",
            "type": "laptop",
            "token": "tok",
        },
        "ip": "203.0.113.7",
        "library": {"name": "analytics.js", "version": "5.2.0"},
        "locale": "it-IT",
        "location": {
            "city": "Florence",
            "country": "Italy",
            "latitude": 43.7696,
            "longitude": 11.2558,
            "speed": 0.5,
        },
        "network": {"bluetooth": False, "carrier": "TIM", "cellular": True, "wifi": False},
        "os": {"name": "Chrome OS", "other": "", "version": "16093.68.0"},
        "page": {
            "path": "/boots",
            "referrer": "https://example.com/",
            "search": "?q=boots",
            "title": "Boots",
            "url": "https://shop.example/boots?q=boots",
        },
        "referrer": {"id": "ref-1", "type": "partner"},
        "screen": {"width": 2400, "height": 1600, "density": 1.36},
        "session": {"id": "1732598942123", "start": True},
        "timezone": "Europe/Rome",
        "userAgent": "Mozilla/5.0 (X11; CrOS x86_64)",
    },
    "event": "Product Viewed",
    "groupId": "group-7",
    "messageId": "msg-full-1",
    "name": "Boots",
    "properties": {"sku": "B-42", "price": 99.5, "tags": ["winter", "sale"], "nested": {"a": 1}},
    "receivedAt": "2026-11-26T05:29:02.123Z",
    "sentAt": "2026-11-26T06:29:01.9+01:00",
    "originalTimestamp": "2026-11-26T05:29:01.800Z",
    "timestamp": "2026-11-26T05:29:02.123456789Z",
    "traits": {"email": "ada@example.com", "plan": "pro"},
    "type": "page",
    "previousId": "prev-1",
    "userId": "user-42",
}

EXPECTED_FULL_ROW: dict[str, Any] = {
    "kpid": None,
    "connection_id": "1700123",
    "anonymous_id": "b5f7a3c2-anon",
    "channel": "web",
    "category": "Shop",
    "context_app_name": "Shop",
    "context_app_version": "2.1.0",
    "context_app_build": "2100",
    "context_app_namespace": "com.shop",
    "context_browser_name": "Chrome",
    "context_browser_other": "",
    "context_browser_version": "131.0.6778.86",
    "context_campaign_name": "winter",
    "context_campaign_source": "newsletter",
    "context_campaign_medium": "email",
    "context_campaign_term": "boots",
    "context_campaign_content": "hero",
    "context_consents": {"marketing": False, "analytics": True},
    "context_device_id": "dev-1",
    "context_device_advertising_id": "ad-1",
    "context_device_ad_tracking_enabled": True,
    "context_device_manufacturer": "Google",
    "context_device_model": "Pixelbook",
    "context_device_name": "pb",
    "context_device_type": "laptop",
    "context_device_token": "tok",
    "context_ip": ipaddress.ip_address("203.0.113.7"),
    "context_library_name": "analytics.js",
    "context_library_version": "5.2.0",
    "context_locale": "it-IT",
    "context_location_city": "Florence",
    "context_location_country": "Italy",
    "context_location_latitude": 43.7696,
    "context_location_longitude": 11.2558,
    "context_location_speed": 0.5,
    "context_network_bluetooth": False,
    "context_network_carrier": "TIM",
    "context_network_cellular": True,
    "context_network_wifi": False,
    "context_os_name": "Chrome OS",
    "context_os_other": "",
    "context_os_version": "16093.68.0",
    "context_page_path": "/boots",
    "context_page_referrer": "https://example.com/",
    "context_page_search": "?q=boots",
    "context_page_title": "Boots",
    "context_page_url": "https://shop.example/boots?q=boots",
    "context_referrer_id": "ref-1",
    "context_referrer_type": "partner",
    "context_screen_width": 2400,
    "context_screen_height": 1600,
    "context_screen_density": Decimal("1.36"),
    "context_session_id": 1732598942123,
    "context_session_start": True,
    "context_timezone": "Europe/Rome",
    "context_user_agent": "Mozilla/5.0 (X11; CrOS x86_64)",
    "event": "Product Viewed",
    "group_id": "group-7",
    "message_id": "msg-full-1",
    "name": "Boots",
    "properties": {"sku": "B-42", "price": 99.5, "tags": ["winter", "sale"], "nested": {"a": 1}},
    "received_at": datetime(2026, 11, 26, 5, 29, 2, 123000),
    "sent_at": datetime(2026, 11, 26, 5, 29, 1, 900000),
    "timestamp": datetime(2026, 11, 26, 5, 29, 2, 123000),
    "traits": {"email": "ada@example.com", "plan": "pro"},
    "type": "page",
    "previous_id": "prev-1",
    "user_id": "user-42",
}


@pytest.fixture
async def warehouse(warehouse_dsn: str) -> str:
    """A fresh database with the events table."""
    await init_db(warehouse_dsn)
    return warehouse_dsn


@pytest.fixture
async def sink(warehouse: str) -> AsyncIterator[WarehouseSink]:
    async with WarehouseSink(warehouse) as sink:
        yield sink


async def fetch(dsn: str, query: str, *params: Any) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        cur = await conn.execute(query, params or None)
        return await cur.fetchall()


async def count(dsn: str) -> int:
    return (await fetch(dsn, "SELECT count(*) AS n FROM krenalis_events"))[0]["n"]


async def message_ids(dsn: str) -> set[str]:
    return {r["message_id"] for r in await fetch(dsn, "SELECT message_id FROM krenalis_events")}


# -- schema ----------------------------------------------------------------------------------


async def test_init_db_is_idempotent(warehouse_dsn: str) -> None:
    assert await init_db(warehouse_dsn) == CREATED
    assert await init_db(warehouse_dsn) == UP_TO_DATE
    async with await psycopg.AsyncConnection.connect(warehouse_dsn) as conn:
        assert await init_db(conn) == UP_TO_DATE  # on a caller's connection too
    columns = await fetch(
        warehouse_dsn,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'krenalis_events' ORDER BY ordinal_position",
    )
    assert [c["column_name"] for c in columns] == ["kpid"] + [c.name for c in COLUMNS]
    types = {c["column_name"]: c["data_type"] for c in columns}
    assert types["context_ip"] == "inet"
    assert types["context_consents"] == types["properties"] == types["traits"] == "jsonb"
    assert types["received_at"] == "timestamp without time zone"
    view = await fetch(warehouse_dsn, "SELECT count(*) AS n FROM events")
    assert view == [{"n": 0}]
    index = await fetch(
        warehouse_dsn, "SELECT indexdef FROM pg_indexes WHERE tablename = 'krenalis_events'"
    )
    assert any("(received_at)" in i["indexdef"] for i in index)
    labels = await fetch(warehouse_dsn, "SELECT enum_range(NULL::event_os_name)::text AS r")
    assert '"Chrome OS"' in labels[0]["r"]
    assert await primary_key(warehouse_dsn) == ["message_id", "connection_id"]


async def test_init_db_concurrently(warehouse_dsn: str) -> None:
    changes = await asyncio.gather(*(init_db(warehouse_dsn) for _ in range(8)))
    assert sorted(changes) == sorted([CREATED] + [UP_TO_DATE] * 7)
    assert await count(warehouse_dsn) == 0


async def test_init_db_logs_what_it_did_unless_quiet(
    warehouse_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="krenalis.warehouse"):
        await init_db(warehouse_dsn)
        await init_db(warehouse_dsn, quiet=True)
    changes = [r.change for r in caplog.records if hasattr(r, "change")]
    assert changes == [CREATED]


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


# -- rows ------------------------------------------------------------------------------------


async def test_full_event_lands_in_the_right_columns(sink: WarehouseSink, warehouse: str) -> None:
    assert await sink.write(stored([copy.deepcopy(FULL_EVENT)])) == [DELIVERED]
    rows = await fetch(warehouse, "SELECT * FROM krenalis_events")
    assert rows == [EXPECTED_FULL_ROW]


async def test_minimal_event_leaves_optional_columns_null(
    sink: WarehouseSink, warehouse: str
) -> None:
    event = make_event("m-1")
    del event["properties"], event["event"]
    assert await sink.write(stored([event])) == [DELIVERED]
    (row,) = await fetch(warehouse, "SELECT * FROM krenalis_events")
    filled = {k for k, v in row.items() if v is not None}
    assert filled == {
        "connection_id",
        "anonymous_id",
        "message_id",
        "received_at",
        "sent_at",
        "timestamp",
        "traits",
        "type",
    }


async def test_nul_characters_are_stripped(sink: WarehouseSink, warehouse: str) -> None:
    event = make_event(
        "m-nul",
        event="Sign\x00ed Up",
        properties={"k\x00ey": "va\x00lue", "list": ["a\x00"]},
        traits={"name": "A\x00da"},
    )
    assert await sink.write(stored([event])) == [DELIVERED]
    (row,) = await fetch(warehouse, "SELECT event, properties, traits FROM krenalis_events")
    assert row == {
        "event": "Signed Up",
        "properties": {"key": "value", "list": ["a"]},
        "traits": {"name": "Ada"},
    }


async def test_empty_batch(sink: WarehouseSink) -> None:
    assert await sink.write(stored([])) == []


async def test_custom_table(warehouse: str) -> None:
    async with await psycopg.AsyncConnection.connect(warehouse, autocommit=True) as conn:
        await conn.execute("CREATE SCHEMA wh")
        await conn.execute("CREATE TABLE wh.copy (LIKE krenalis_events INCLUDING ALL)")
    async with WarehouseSink(warehouse, table="wh.copy") as sink:
        assert await sink.write(stored([make_event("m-1")])) == [DELIVERED]
    assert await fetch(warehouse, "SELECT message_id FROM wh.copy") == [{"message_id": "m-1"}]
    assert await count(warehouse) == 0


# -- upserts ---------------------------------------------------------------------------------


async def test_same_message_id_twice_gives_one_row_with_the_latest_values(
    sink: WarehouseSink, warehouse: str
) -> None:
    assert await sink.write(stored([make_event("m-1", event="First")])) == [DELIVERED]
    second = make_event("m-1", event="Second", userId="u-2", properties={"v": 2})
    assert await sink.write(stored([second])) == [DELIVERED]
    rows = await fetch(warehouse, "SELECT message_id, event, user_id, properties FROM events")
    assert rows == [
        {"message_id": "m-1", "event": "Second", "user_id": "u-2", "properties": {"v": 2}}
    ]


async def test_a_write_touches_only_its_own_rows(sink: WarehouseSink, warehouse: str) -> None:
    # The batch table outlives a write (one per connection): what an earlier write, or a
    # rejected row's retry, put in it must not be written again.
    assert await sink.write(stored([make_event("m-1")])) == [DELIVERED]
    async with await psycopg.AsyncConnection.connect(warehouse, autocommit=True) as conn:
        await conn.execute("UPDATE krenalis_events SET event = 'Changed since'")
    batch = [make_event("m-2"), make_event("bad", context={"ip": "not-an-ip"})]
    outcomes = await sink.write(stored(batch))  # refused by PostgreSQL: a savepoint rolled back
    assert outcomes[0] == DELIVERED and isinstance(outcomes[1], Rejected)
    assert await sink.write(stored([make_event("m-3")])) == [DELIVERED]
    rows = await fetch(warehouse, "SELECT message_id, event FROM krenalis_events ORDER BY 1")
    assert rows == [
        {"message_id": "m-1", "event": "Changed since"},
        {"message_id": "m-2", "event": "Product Viewed"},
        {"message_id": "m-3", "event": "Product Viewed"},
    ]


async def test_upsert_keeps_kpid(sink: WarehouseSink, warehouse: str) -> None:
    await sink.write(stored([make_event("m-1")]))
    async with await psycopg.AsyncConnection.connect(warehouse, autocommit=True) as conn:
        await conn.execute("UPDATE krenalis_events SET kpid = gen_random_uuid()")
    await sink.write(stored([make_event("m-1", event="Again")]))
    (row,) = await fetch(warehouse, "SELECT kpid, event FROM krenalis_events")
    assert row["kpid"] is not None and row["event"] == "Again"


async def test_duplicates_inside_a_batch_keep_the_last(sink: WarehouseSink, warehouse: str) -> None:
    batch = [
        make_event("m-1", event="Old"),
        make_event("m-2"),
        make_event("m-1", event="New"),
        make_event("m-1", event="Newest"),
    ]
    assert await sink.write(stored(batch)) == [DELIVERED] * 4
    rows = await fetch(warehouse, "SELECT message_id, event FROM events ORDER BY message_id")
    assert rows == [
        {"message_id": "m-1", "event": "Newest"},
        {"message_id": "m-2", "event": "Product Viewed"},
    ]


# -- sources ---------------------------------------------------------------------------------
# Each source chooses its messageIds, and browser write keys are public: a source must not be
# able to touch another source's rows by sending their messageId.


async def rows_by_source(dsn: str) -> dict[tuple[str, str], dict[str, Any]]:
    rows = await fetch(
        dsn, "SELECT connection_id, message_id, event, user_id, properties FROM krenalis_events"
    )
    return {(r.pop("connection_id"), r.pop("message_id")): r for r in rows}


async def test_two_sources_with_the_same_message_id_keep_their_own_rows(
    sink: WarehouseSink, warehouse: str
) -> None:
    shop = make_event("m-1", connectionId="shop", event="Order Completed", userId="ada")
    assert await sink.write(stored([shop])) == [DELIVERED]
    # Another source sends the same messageId, as an attacker with a public write key could.
    forged = make_event("m-1", connectionId="blog", event="Forged", userId="eve")
    assert await sink.write(stored([forged])) == [DELIVERED]
    assert await rows_by_source(warehouse) == {
        ("shop", "m-1"): {
            "event": "Order Completed",
            "user_id": "ada",
            "properties": {"sku": "A-1"},
        },
        ("blog", "m-1"): {"event": "Forged", "user_id": "eve", "properties": {"sku": "A-1"}},
    }
    # A source's own resend still replaces its own row, and only that one.
    again = make_event("m-1", connectionId="shop", event="Order Updated", userId="ada")
    assert await sink.write(stored([again])) == [DELIVERED]
    rows = await rows_by_source(warehouse)
    assert rows[("shop", "m-1")]["event"] == "Order Updated"
    assert rows[("blog", "m-1")]["event"] == "Forged"


async def test_one_batch_with_the_same_message_id_from_two_sources(
    sink: WarehouseSink, warehouse: str
) -> None:
    batch = [
        make_event("m-1", connectionId="shop", event="Old"),
        make_event("m-1", connectionId="blog", event="Blog"),
        make_event("m-1", connectionId="shop", event="New"),
    ]
    assert await sink.write(stored(batch)) == [DELIVERED] * 3
    rows = await rows_by_source(warehouse)
    assert {key: row["event"] for key, row in rows.items()} == {
        ("shop", "m-1"): "New",
        ("blog", "m-1"): "Blog",
    }


async def test_a_bad_row_of_one_source_does_not_reject_the_other_sources_event(
    sink: WarehouseSink, warehouse: str
) -> None:
    good = make_event("m-1", connectionId="shop")
    bad = make_event("m-1", connectionId="blog", context={"ip": "not-an-ip"})
    outcomes = await sink.write(stored([good, bad, make_event("m-2", connectionId="blog")]))
    assert outcomes[0] == outcomes[2] == DELIVERED
    assert isinstance(outcomes[1], Rejected) and "context_ip" in outcomes[1].reason
    assert set(await rows_by_source(warehouse)) == {("shop", "m-1"), ("blog", "m-2")}


async def test_concurrent_writers_of_the_same_ids_do_not_deadlock(warehouse: str) -> None:
    ids = [f"m-{i:04d}" for i in range(300)]
    async with WarehouseSink(warehouse) as one, WarehouseSink(warehouse) as two:
        for _ in range(5):
            results = await asyncio.gather(
                one.write(stored([make_event(i) for i in ids])),
                two.write(stored([make_event(i) for i in reversed(ids)])),
            )
            assert results == [[DELIVERED] * len(ids)] * 2
    assert await count(warehouse) == len(ids)


async def test_writers_of_the_same_ids_in_opposite_orders_do_not_deadlock(warehouse: str) -> None:
    # An open transaction holds m-z, so both writers are sure to be mid-batch at once: each
    # has written what comes before m-z in its order and waits. Written in the orders given
    # (a, z, b against b, z, a), the one that gets m-z next would wait for the other's first
    # row while the other waits for it: a deadlock, and a retry. In key order, the second
    # waits at m-a, and merges once the first commits.
    async with await psycopg.AsyncConnection.connect(warehouse) as holder:
        await holder.execute(
            "INSERT INTO krenalis_events (connection_id, anonymous_id, message_id, received_at,"
            " sent_at, timestamp, traits, type) VALUES ('1234', 'x', 'm-z', now(), now(), now(),"
            " '{}', 'track')"
        )
        async with WarehouseSink(warehouse) as one, WarehouseSink(warehouse) as two:
            writes = asyncio.gather(
                one.write(stored([make_event(i) for i in ("m-a", "m-z", "m-b")])),
                two.write(stored([make_event(i) for i in ("m-b", "m-z", "m-a")])),
            )
            await asyncio.sleep(0.5)
            await holder.rollback()
            assert await writes == [[DELIVERED] * 3] * 2
    assert await message_ids(warehouse) == {"m-a", "m-b", "m-z"}


async def test_a_batch_mixing_stored_and_new_events_is_merged(
    sink: WarehouseSink, warehouse: str
) -> None:
    # m-2 and m-4 are stored: COPY stops at the first, the batch is merged instead, and the
    # bad row found by its line number there; each remaining part is written again.
    assert await sink.write(stored([make_event("m-2"), make_event("m-4")])) == [DELIVERED] * 2
    batch = [make_event(f"m-{i}", event=f"Second {i}") for i in range(6)]
    batch[3]["context"] = {"ip": "not-an-ip"}
    outcomes = await sink.write(stored(batch))
    assert isinstance(outcomes[3], Rejected) and "context_ip" in outcomes[3].reason
    assert outcomes[:3] + outcomes[4:] == [DELIVERED] * 5
    rows = await fetch(warehouse, "SELECT message_id, event FROM krenalis_events ORDER BY 1")
    assert rows == [{"message_id": f"m-{i}", "event": f"Second {i}"} for i in (0, 1, 2, 4, 5)]


# -- rejections ------------------------------------------------------------------------------


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "smallint out of range": (
        {"context": {"screen": {"width": 99999}}},
        "context_screen_width",
    ),
    "invalid ip": ({"context": {"ip": "not-an-ip"}}, "context_ip"),
    "locale too long": ({"context": {"locale": "it-IT-x-long"}}, "context_locale"),
    "bigint out of range": (
        {"context": {"session": {"id": "99999999999999999999"}}},
        "context_session_id",
    ),
    "unknown os": ({"context": {"os": {"name": "BeOS"}}}, "context_os_name"),
    "unknown type": ({"type": "purchase"}, "type"),
    "density overflow": ({"context": {"screen": {"density": 12.5}}}, "context_screen_density"),
    "not a boolean": ({"context": {"network": {"wifi": "maybe"}}}, "context_network_wifi"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
async def test_a_bad_row_is_rejected_and_the_others_are_written(
    case: str, sink: WarehouseSink, warehouse: str
) -> None:
    overrides, column = BAD_VALUES[case]
    batch = [make_event(f"ok-{i}") for i in range(5)]
    batch.insert(2, make_event("bad", **overrides))
    outcomes = await sink.write(stored(batch))
    assert isinstance(outcomes[2], Rejected)
    assert column in outcomes[2].reason
    assert outcomes[:2] + outcomes[3:] == [DELIVERED] * 5
    assert await message_ids(warehouse) == {f"ok-{i}" for i in range(5)}


async def test_many_bad_rows_among_good_ones(sink: WarehouseSink, warehouse: str) -> None:
    cases = list(BAD_VALUES.values())
    batch, bad = [], set()
    for i in range(200):
        if i % 9 == 4:
            overrides, _ = cases[i % len(cases)]
            batch.append(make_event(f"m-{i}", **overrides))
            bad.add(f"m-{i}")
        else:
            batch.append(make_event(f"m-{i}"))
    outcomes = await sink.write(stored(batch))
    rejected = {e["messageId"] for e, o in zip(batch, outcomes, strict=True) if o != DELIVERED}
    assert rejected == bad
    assert all(isinstance(o, Rejected | Delivered) for o in outcomes)
    assert await message_ids(warehouse) == {e["messageId"] for e in batch} - bad


async def test_a_row_refused_by_the_upsert_is_found_by_bisection(
    sink: WarehouseSink, warehouse: str
) -> None:
    # One event is in the table already, so the batch is merged through the batch table, which
    # does not copy CHECK constraints: the error comes from the INSERT, with no line to name.
    assert await sink.write(stored([make_event("m-20")])) == [DELIVERED]
    async with await psycopg.AsyncConnection.connect(warehouse, autocommit=True) as conn:
        await conn.execute(
            "ALTER TABLE krenalis_events ADD CONSTRAINT no_test CHECK (event <> 'forbidden')"
        )
    batch = [make_event(f"m-{i}") for i in range(40)]
    batch[13]["event"] = batch[31]["event"] = "forbidden"
    outcomes = await sink.write(stored(batch))
    assert [i for i, o in enumerate(outcomes) if isinstance(o, Rejected)] == [13, 31]
    assert "no_test" in outcomes[13].reason or "check" in outcomes[13].reason
    assert await count(warehouse) == 38


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"messageId": None}, "messageId"),
        ({"connectionId": None}, "connectionId"),
        ({"connectionId": ""}, "connectionId"),
        ({"connectionId": 7}, "connectionId"),  # 7 and "7" would be one row in PostgreSQL
        ({"receivedAt": None}, "receivedAt"),
        ({"traits": None}, "traits"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"context": "not an object"}, "context:"),
        ({"context": {"screen": [1, 2]}}, "context.screen:"),
        ({"context": {"os": {"name": {"nested": 1}}}}, "context.os.name"),
    ],
)
async def test_events_that_cannot_be_rows_are_rejected(
    event: dict[str, Any], field: str, sink: WarehouseSink, warehouse: str
) -> None:
    bad = make_event("bad", **event)
    outcomes = await sink.write(stored([make_event("ok-1"), bad, make_event("ok-2")]))
    assert outcomes[0] == outcomes[2] == DELIVERED
    assert isinstance(outcomes[1], Rejected) and outcomes[1].reason.startswith(field)
    assert await message_ids(warehouse) == {"ok-1", "ok-2"}


# -- outages ---------------------------------------------------------------------------------


@pytest.fixture
async def own_server(make_postgres: Callable[[], EmbeddedPostgres]) -> EmbeddedPostgres:
    """A server this test may stop, kill and restart (never the session's)."""
    server = make_postgres()
    await init_db(server.dsn)
    return server


async def test_stopped_database_gives_retry_then_the_same_sink_reconnects(
    own_server: EmbeddedPostgres,
) -> None:
    async with WarehouseSink(own_server.dsn, connect_timeout=2) as sink:
        await sink.healthcheck()
        assert await sink.write(stored([make_event("before")])) == [DELIVERED]
        port = own_server.port
        own_server.stop()

        with pytest.raises(psycopg.OperationalError):
            await sink.healthcheck()
        outcomes = await sink.write(stored([make_event("during-1"), make_event("during-2")]))
        assert all(isinstance(o, Retry) for o in outcomes), outcomes

        own_server.start()
        assert own_server.port == port  # the data directory remembers its port
        await sink.healthcheck()
        assert (
            await sink.write(stored([make_event("during-1"), make_event("during-2")]))
            == [DELIVERED] * 2
        )
    assert await message_ids(own_server.dsn) == {"before", "during-1", "during-2"}


async def test_a_killed_connection_is_replaced_without_losing_the_batch(
    own_server: EmbeddedPostgres,
) -> None:
    async with WarehouseSink(own_server.dsn) as sink:
        assert await sink.write(stored([make_event("a")])) == [DELIVERED]
        async with await psycopg.AsyncConnection.connect(own_server.dsn, autocommit=True) as c:
            await c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'krenalis-warehouse'"
            )
        assert await sink.write(stored([make_event("b")])) == [DELIVERED]
    assert await message_ids(own_server.dsn) == {"a", "b"}


async def test_a_crash_during_a_write_leaves_all_or_nothing(
    own_server: EmbeddedPostgres,
) -> None:
    batch = [make_event(f"m-{i}", properties={"pad": "x" * 500}) for i in range(20_000)]
    async with WarehouseSink(own_server.dsn, connect_timeout=2) as sink:
        await sink.healthcheck()
        write = asyncio.create_task(sink.write(stored(batch)))
        await asyncio.sleep(0.15)
        own_server.kill()
        outcomes = await write
        kinds = {type(o) for o in outcomes}
        assert kinds in ({Retry}, {Delivered}), kinds

        own_server.start()  # crash recovery from the WAL
        written = await count(own_server.dsn)
        assert written in (0, len(batch))  # never half a batch
        if kinds == {Delivered}:
            assert written == len(batch)

        assert await sink.write(stored(batch)) == [DELIVERED] * len(batch)
    assert await count(own_server.dsn) == len(batch)


async def test_healthcheck_fails_when_nothing_listens(
    make_postgres: Callable[[], EmbeddedPostgres],
) -> None:
    server = make_postgres()
    dsn = server.dsn
    server.kill()
    async with WarehouseSink(dsn, connect_timeout=2) as sink:
        with pytest.raises(psycopg.OperationalError):
            await sink.healthcheck()
        outcomes = await sink.write(stored([make_event("m-1")]))
        assert isinstance(outcomes[0], Retry) and outcomes[0].reason


async def test_a_write_that_hangs_times_out_with_retry(warehouse: str) -> None:
    async with await psycopg.AsyncConnection.connect(warehouse) as locker:
        await locker.execute("LOCK TABLE krenalis_events IN ACCESS EXCLUSIVE MODE")
        async with WarehouseSink(warehouse, timeout=1) as sink:
            began = time.monotonic()
            outcomes = await sink.write(stored([make_event("m-1")]))
            assert time.monotonic() - began < 10
            assert outcomes == [Retry("the write did not finish within 1 s")]
            await locker.rollback()
            assert await sink.write(stored([make_event("m-1")])) == [DELIVERED]
    assert await message_ids(warehouse) == {"m-1"}


async def test_missing_table_is_retried_not_rejected(warehouse_dsn: str) -> None:
    async with WarehouseSink(warehouse_dsn) as sink:
        outcomes = await sink.write(stored([make_event("m-1")]))
        assert isinstance(outcomes[0], Retry) and "krenalis_events" in outcomes[0].reason
        await init_db(warehouse_dsn)
        assert await sink.write(stored([make_event("m-1")])) == [DELIVERED]


def test_error_classification() -> None:
    assert is_retriable(psycopg.errors.SerializationFailure("conflict"))
    assert is_retriable(psycopg.errors.DeadlockDetected("deadlock"))
    assert is_retriable(psycopg.errors.AdminShutdown("admin shutdown"))
    assert is_retriable(psycopg.OperationalError("connection refused"))
    assert is_retriable(TimeoutError())
    assert not is_retriable(psycopg.errors.NumericValueOutOfRange("too big"))
    assert not is_retriable(psycopg.errors.NotNullViolation("null"))


# -- the embedded server ---------------------------------------------------------------------


def postmasters_of(server: EmbeddedPostgres) -> list[int]:
    """PIDs of live postgres processes serving this data directory."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and str(server.data_dir) in cmdline:
            found.append(proc.pid)
    return found


def test_embedded_restart_over_a_stale_pid_file(
    make_postgres: Callable[[], EmbeddedPostgres],
) -> None:
    server = make_postgres()
    server.stop()
    # A pid file naming a live process that is not our postmaster (PID reuse after a crash).
    (server.data_dir / "postmaster.pid").write_text(f"{os.getpid()}\n")
    server.start()
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_embedded_falls_back_to_a_new_port_when_its_port_is_taken(
    make_postgres: Callable[[], EmbeddedPostgres],
) -> None:
    server = make_postgres()
    old_port = server.port
    server.stop()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        server.start()
        assert server.port != old_port
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_embedded_leaves_no_server_running_when_start_fails(
    make_postgres: Callable[[], EmbeddedPostgres],
) -> None:
    server = make_postgres()
    server.stop()
    # The server starts, then creating the database fails (PostgreSQL names hold no NUL).
    broken = EmbeddedPostgres(server.data_dir, database="bad\x00name")
    with pytest.raises(psycopg.Error):
        broken.start()
    assert not broken.is_running() and postmasters_of(broken) == []

    with (server.data_dir / "postgresql.conf").open("a") as conf:
        conf.write("\nthis is not a setting\n")
    with pytest.raises(EmbeddedPostgresError, match="did not start"):
        server.start()
    assert postmasters_of(server) == []
