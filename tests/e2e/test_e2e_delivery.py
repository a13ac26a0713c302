"""End to end: events posted to a real `krenalis` reach the warehouse, a webhook and files.

Real processes (`krenalis serve`, or `krenalis collector` + `krenalis worker`), a real
nats-server, a real PostgreSQL and a real HTTP server as the webhook receiver; nothing mocked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from e2e_support import (
    WRITE_KEY,
    collector_answer,
    file_events,
    jetstream,
    make_event,
    post_events,
    stream_empty,
    subject_counts,
    wait_for,
    warehouse_ids,
    warehouse_rows,
    warehouse_stats,
)

from sinks.webhook_receiver import WebhookReceiver

SENT = 300

DETAILED = {
    "type": "track",
    "event": "Product Added",
    "messageId": "detail-track",
    "userId": "user-42",
    "anonymousId": "anon-42",
    "properties": {"sku": "SKU-1", "price": 19.99, "tags": ["a", "b"]},
    "context": {
        "app": {"name": "Shop", "version": "2.1.0"},
        "locale": "it-IT",
        "page": {"url": "https://shop.example/cart", "path": "/cart", "title": "Cart"},
        "screen": {"width": 1920, "height": 1080},
        "os": {"name": "iOS", "version": "17.1"},
        "library": {"name": "analytics.js", "version": "5.0.0"},
        "campaign": {"name": "winter", "source": "newsletter"},
        "consents": {"marketing": True, "analytics": False},
    },
    "timestamp": "2026-01-02T03:04:05.678Z",
}
IDENTIFY = {
    "type": "identify",
    "messageId": "detail-identify",
    "userId": "user-42",
    "anonymousId": "anon-42",
    "traits": {"email": "ada@example.com", "plan": "pro"},
}


def workspace_all_destinations(dsn: str, hook_url: str, out: Path) -> str:
    return f"""\
warehouse:
  dsn: "{dsn}"
sources:
  web:
    write_key: "{WRITE_KEY}"
destinations:
  hook:
    type: webhook
    url: "{hook_url}"
  archive:
    type: file
    path: "{out}"
pipelines:
  web-warehouse:
    source: web
    to: warehouse
  web-hook:
    source: web
    to: hook
  web-file:
    source: web
    to: archive
"""


async def test_events_reach_warehouse_webhook_and_file_exactly_once(
    deployment, warehouse_dsn, tmp_path
):
    out = tmp_path / "archive"
    async with WebhookReceiver() as rx, jetstream(deployment.nats_url) as js:
        deployment.write_workspace(workspace_all_destinations(warehouse_dsn, rx.url, out))
        serve = deployment.start("serve")
        await serve.wait_healthy()

        events = [make_event(f"m-{i}", user=f"anon-{i % 7}") for i in range(SENT)]
        stored = await post_events(serve.base_url, events, per_request=50)
        assert stored == 3 * SENT  # one copy per pipeline
        # A client retrying a request: the stream drops the copies it already holds.
        await post_events(serve.base_url, events[:50], per_request=50)
        await collector_answer(serve.base_url, [DETAILED, IDENTIFY])
        expected = {e["messageId"] for e in events} | {"detail-track", "detail-identify"}
        total = len(expected)

        async def all_arrived() -> bool:
            rows, _ = await warehouse_stats(warehouse_dsn)
            return rows >= total and len(rx.bodies) >= total and len(file_events(out)) >= total

        await wait_for(all_arrived, what="every event at every destination", processes=[serve])
        await wait_for(lambda: stream_empty(js), what="EVENTS to empty")
        await asyncio.sleep(1.0)  # anything delivered twice would show up meanwhile
        assert serve.log_count("Event dead-lettered") == 0

        # Warehouse: exactly once.
        assert await warehouse_stats(warehouse_dsn) == (total, total)
        assert set(await warehouse_ids(warehouse_dsn)) == expected
        # Webhook: one request per event, "<source>:<messageId>" as the idempotency key.
        posts = [r for r in rx.requests if r.method == "POST"]
        assert sorted(r.json["messageId"] for r in posts) == sorted(expected)
        assert all(
            r.headers["idempotency-key"] == f"{r.json['connectionId']}:{r.json['messageId']}"
            for r in posts
        )
        assert all(r.headers["content-type"] == "application/json" for r in posts)
        # File: one line per event.
        lines = file_events(out)
        assert sorted(e["messageId"] for e in lines) == sorted(expected)

        await check_columns(warehouse_dsn)
        hooked = next(r.json for r in posts if r.json["messageId"] == "detail-track")
        filed = next(e for e in lines if e["messageId"] == "detail-track")
        for delivered in (hooked, filed):
            assert delivered["event"] == "Product Added"
            assert delivered["userId"] == "user-42" and delivered["anonymousId"] == "anon-42"
            assert delivered["properties"] == DETAILED["properties"]
            assert delivered["connectionId"] == "web"
            assert delivered["context"]["page"]["url"] == "https://shop.example/cart"
        assert hooked == filed  # both destinations got the same wire event

        assert serve.stop() == 0


async def check_columns(dsn: str) -> None:
    """The detailed events' fields are in the right columns of krenalis_events."""
    [row] = await warehouse_rows(
        dsn,
        "SELECT type::text, event, user_id, anonymous_id, connection_id, properties, traits,"
        " context_app_name, context_app_version, context_locale, context_page_url,"
        " context_page_path, context_page_title, context_screen_width, context_screen_height,"
        " context_os_name::text, context_os_version, context_library_name,"
        " context_campaign_name, context_campaign_source, context_consents,"
        " to_char(timestamp, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS'), received_at, sent_at"
        " FROM krenalis_events WHERE message_id = 'detail-track'",
    )
    (kind, event, user_id, anonymous_id, connection_id, properties, traits, app_name,
     app_version, locale, page_url, page_path, page_title, width, height, os_name, os_version,
     library, campaign, campaign_source, consents, timestamp, received_at, sent_at) = row  # fmt: skip
    assert (kind, event, user_id, anonymous_id) == ("track", "Product Added", "user-42", "anon-42")
    assert connection_id == "web"
    assert properties == {"sku": "SKU-1", "price": 19.99, "tags": ["a", "b"]}
    assert traits == {}
    assert (app_name, app_version, locale) == ("Shop", "2.1.0", "it-IT")
    assert (page_url, page_path, page_title) == ("https://shop.example/cart", "/cart", "Cart")
    assert (width, height) == (1920, 1080)
    assert (os_name, os_version) == ("iOS", "17.1")
    assert library == "analytics.js"
    assert (campaign, campaign_source) == ("winter", "newsletter")
    assert consents == {"marketing": True, "analytics": False}
    assert timestamp == "2026-01-02T03:04:05.678"
    assert received_at is not None and sent_at is not None

    [(kind, user_id, traits, properties, event)] = await warehouse_rows(
        dsn,
        "SELECT type::text, user_id, traits, properties, event FROM krenalis_events"
        " WHERE message_id = 'detail-identify'",
    )
    assert (kind, user_id, event) == ("identify", "user-42", None)
    assert traits == {"email": "ada@example.com", "plan": "pro"}
    assert properties is None

    [(count,)] = await warehouse_rows(
        dsn,
        "SELECT count(*) FROM krenalis_events WHERE type = 'track' AND event = 'Order Completed'"
        " AND connection_id = 'web' AND properties->>'n' = message_id",
    )
    assert count == SENT


# -- filters and consents ------------------------------------------------------------------------


def workspace_filters(hook_url: str, big: Path, every: Path) -> str:
    return f"""\
sources:
  web:
    write_key: "{WRITE_KEY}"
destinations:
  hook:
    type: webhook
    url: "{hook_url}"
  big-orders:
    type: file
    path: "{big}"
  everything:
    type: file
    path: "{every}"
pipelines:
  web-big:
    source: web
    to: big-orders
    filter:
      all:
        - {{field: type, op: is, value: track}}
        - {{field: properties.total, op: greater_than, value: 100}}
  web-marketing:
    source: web
    to: hook
    consents:
      purposes: [marketing, ads]
      operator: any
    filter:
      any:
        - {{field: event, op: is, value: Signed Up}}
        - {{field: type, op: is, value: identify}}
  web-all:
    source: web
    to: everything
"""


FILTER_EVENTS = [
    # (event, goes to web-big, goes to web-marketing)
    (make_event("f-big", properties={"total": 150}), True, False),
    (make_event("f-small", properties={"total": 50}), False, False),
    (make_event("f-edge", properties={"total": 100}), False, False),
    (make_event("f-big-str", properties={"total": "250.5"}), True, False),
    (make_event("f-no-total", properties={}), False, False),
    (
        {
            "type": "page",
            "name": "Home",
            "messageId": "f-page",
            "anonymousId": "a",
            "properties": {"total": 500},
        },
        False,
        False,
    ),
    (
        make_event("f-signup-mkt", event="Signed Up", context={"consents": {"marketing": True}}),
        False,
        True,
    ),
    (
        make_event("f-signup-ads", event="Signed Up", context={"consents": {"ads": True}}),
        False,
        True,
    ),
    (
        make_event(
            "f-signup-none",
            event="Signed Up",
            context={"consents": {"marketing": False, "ads": False}},
        ),
        False,
        False,
    ),
    (make_event("f-signup-missing", event="Signed Up"), False, False),
    (
        {
            "type": "identify",
            "messageId": "f-identify",
            "userId": "u1",
            "traits": {"plan": "pro"},
            "context": {"consents": {"ads": True}},
        },
        False,
        True,
    ),
    (
        make_event(
            "f-big-mkt",
            event="Signed Up",
            properties={"total": 101},
            context={"consents": {"marketing": True}},
        ),
        True,
        True,
    ),
]


async def test_filters_and_consents_select_exactly_the_intended_events(deployment, tmp_path):
    big_dir, every_dir = tmp_path / "big", tmp_path / "every"
    events = [e for e, _, _ in FILTER_EVENTS]
    want_big = {e["messageId"] for e, big, _ in FILTER_EVENTS if big}
    want_mkt = {e["messageId"] for e, _, mkt in FILTER_EVENTS if mkt}
    every_id = {e["messageId"] for e in events}
    async with WebhookReceiver() as rx, jetstream(deployment.nats_url) as js:
        deployment.write_workspace(workspace_filters(rx.url, big_dir, every_dir))
        # The collector alone first: what it stores per pipeline subject can be counted.
        collector = deployment.start("collector")
        await collector.wait_healthy()
        answer = await collector_answer(collector.base_url, events)
        assert answer["stored"] == len(want_big) + len(want_mkt) + len(events)
        assert await subject_counts(js) == {
            "events.v1.web-big.0": len(want_big),
            "events.v1.web-marketing.0": len(want_mkt),
            "events.v1.web-all.0": len(events),
        }

        worker = deployment.start("worker")

        async def delivered() -> bool:
            return (
                len(file_events(big_dir)) >= len(want_big)
                and len(rx.bodies) >= len(want_mkt)
                and len(file_events(every_dir)) >= len(events)
            )

        await wait_for(delivered, what="the filtered events", processes=[collector, worker])
        await wait_for(lambda: stream_empty(js), what="EVENTS to empty")
        assert sorted(e["messageId"] for e in file_events(big_dir)) == sorted(want_big)
        assert sorted(b["messageId"] for b in rx.bodies) == sorted(want_mkt)
        assert sorted(e["messageId"] for e in file_events(every_dir)) == sorted(every_id)
        # The consents arrive as sent.
        signup = next(b for b in rx.bodies if b["messageId"] == "f-signup-ads")
        assert signup["context"]["consents"] == {"ads": True}
        assert signup["event"] == "Signed Up"
