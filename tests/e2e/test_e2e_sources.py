"""End to end: two sources send the same messageIds and neither touches the other's events.

Each source chooses its own messageIds, and a browser's write key is public: anyone can send
events as a source, with any messageId. The collector sets the source (connectionId), so the
warehouse row and the webhook's Idempotency-Key of an event are the source's own.
"""

from __future__ import annotations

import psycopg
from e2e_support import OTHER_KEY, WRITE_KEY, make_event, post_events, wait_for, warehouse_rows

from krenalis.sinks.warehouse.schema import MIGRATED
from sinks.warehouse_old_schema import OLD_DDL
from sinks.webhook_receiver import WebhookReceiver

SENT = 40


def two_sources_workspace(dsn: str, hook_url: str) -> str:
    return f"""\
warehouse:
  dsn: "{dsn}"
sources:
  shop:
    write_key: "{WRITE_KEY}"
  blog:
    write_key: "{OTHER_KEY}"
destinations:
  hook:
    type: webhook
    url: "{hook_url}"
pipelines:
  shop-warehouse:
    source: shop
    to: warehouse
  blog-warehouse:
    source: blog
    to: warehouse
  shop-hook:
    source: shop
    to: hook
  blog-hook:
    source: blog
    to: hook
"""


async def create_old_table(dsn: str) -> None:
    """The table of an older Krenalis (message_id alone as its key), with one row in it."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(OLD_DDL)
        await conn.execute(
            "INSERT INTO krenalis_events (connection_id, anonymous_id, message_id, received_at,"
            " sent_at, timestamp, traits, type, event) VALUES ('shop', 'anon-0', 'before',"
            " now(), now(), now(), '{}', 'track', 'Written before the upgrade')"
        )


def events_of(source: str) -> list[dict]:
    return [
        make_event(f"m-{i}", user=f"anon-{i % 5}", properties={"from": source, "n": i})
        for i in range(SENT)
    ]


async def test_two_sources_with_the_same_message_ids_keep_their_own_events(
    deployment, warehouse_dsn
):
    await create_old_table(warehouse_dsn)
    async with WebhookReceiver() as rx:
        deployment.write_workspace(two_sources_workspace(warehouse_dsn, rx.url))
        serve = deployment.start("serve")
        await serve.wait_healthy()
        # The start moved the old table to the new key, and said so once.
        assert serve.log_count(MIGRATED) == 1

        await post_events(serve.base_url, events_of("shop"), key=WRITE_KEY, per_request=20)
        # The blog's events come later: with one key for every source they would overwrite.
        await post_events(serve.base_url, events_of("blog"), key=OTHER_KEY, per_request=20)

        async def rows() -> list[tuple]:
            return await warehouse_rows(
                warehouse_dsn,
                "SELECT connection_id, message_id, properties->>'from', event FROM krenalis_events",
            )

        async def all_arrived() -> bool:
            posted = [r for r in rx.requests if r.method == "POST"]
            return len(await rows()) == 2 * SENT + 1 and len(posted) >= 2 * SENT

        await wait_for(all_arrived, what="both sources' events", processes=[serve])

        stored = {(source, mid): (sent_by, event) for source, mid, sent_by, event in await rows()}
        assert stored.pop(("shop", "before")) == (None, "Written before the upgrade")
        expected = {
            (source, f"m-{i}"): (source, "Order Completed")
            for source in ("shop", "blog")
            for i in range(SENT)
        }
        assert stored == expected

        posted = [r for r in rx.requests if r.method == "POST"]
        keys = {r.headers["idempotency-key"] for r in posted}
        assert keys == {f"{source}:m-{i}" for source in ("shop", "blog") for i in range(SENT)}
        assert all(
            r.headers["idempotency-key"] == f"{r.json['connectionId']}:{r.json['messageId']}"
            for r in posted
        )
        assert serve.stop() == 0
