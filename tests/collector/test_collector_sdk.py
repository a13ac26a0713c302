"""Segment's own Python SDK, unmodified, talks to the collector.

The SDK POSTs {"batch": [...], "sentAt", "writeKey"} to {host}/v1/batch with HTTP Basic auth
(the write key as user name). It is synchronous (requests), so it runs in a thread while the
collector serves on this event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import segment.analytics as analytics
from helpers_collector import CRM_PIPELINE, SOURCE_ID, WAREHOUSE_PIPELINE, CollectorHarness, Stored
from segment.analytics.client import Client

CONTEXT = {"app": {"name": "shop", "version": "1.2.3"}, "locale": "en-US"}


def send_all(sdk: Any) -> None:
    """One call of each type, with the fields the SDK lets a caller set."""
    sdk.track(
        "user-1",
        "Order Completed",
        {"total": 99.5, "items": ["a", "b"]},
        context=CONTEXT,
        message_id="sdk-track-1",
    )
    sdk.identify("user-1", {"plan": "pro", "age": 42}, message_id="sdk-identify-1")
    sdk.page(
        "user-1",
        category="Docs",
        name="Intro",
        properties={"url": "https://x.test/docs"},
        message_id="sdk-page-1",
    )
    sdk.screen("user-1", name="Home", properties={"tab": "feed"}, message_id="sdk-screen-1")
    sdk.group("user-1", "group-7", {"name": "Acme", "employees": 12}, message_id="sdk-group-1")
    sdk.alias("anon-previous", "user-1", message_id="sdk-alias-1")
    sdk.track(
        anonymous_id="anon-9",
        event="Signed Up",
        timestamp=dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        message_id="sdk-track-2",
    )


def check_stored(warehouse: list[Stored], crm: list[Stored], prefix: str = "") -> None:
    events = {s.event["messageId"]: s.event for s in warehouse}
    assert set(events) == {
        prefix + m
        for m in (
            "sdk-track-1",
            "sdk-identify-1",
            "sdk-page-1",
            "sdk-screen-1",
            "sdk-group-1",
            "sdk-alias-1",
            "sdk-track-2",
        )
    }
    assert {s.event["messageId"] for s in crm} == {prefix + "sdk-track-1", prefix + "sdk-track-2"}
    for event in events.values():
        assert event["connectionId"] == SOURCE_ID
        assert event["context"]["library"]["name"] == "analytics-python"
        assert event["context"]["library"]["version"] == analytics.VERSION
    track = events[prefix + "sdk-track-1"]
    assert (track["type"], track["userId"], track["event"]) == (
        "track",
        "user-1",
        "Order Completed",
    )
    assert track["properties"] == {"total": 99.5, "items": ["a", "b"]}
    assert track["context"]["app"] == {"name": "shop", "version": "1.2.3"}
    assert track["context"]["locale"] == "en-US"
    identify = events[prefix + "sdk-identify-1"]
    assert (identify["type"], identify["userId"]) == ("identify", "user-1")
    assert identify["traits"] == {"plan": "pro", "age": 42}
    page = events[prefix + "sdk-page-1"]
    assert (page["type"], page["name"], page["category"]) == ("page", "Intro", "Docs")
    assert page["properties"] == {"url": "https://x.test/docs"}
    screen = events[prefix + "sdk-screen-1"]
    assert (screen["type"], screen["name"], screen["properties"]) == (
        "screen",
        "Home",
        {"tab": "feed"},
    )
    group = events[prefix + "sdk-group-1"]
    assert (group["type"], group["groupId"], group["userId"]) == ("group", "group-7", "user-1")
    assert group["traits"] == {"name": "Acme", "employees": 12}
    alias = events[prefix + "sdk-alias-1"]
    assert (alias["type"], alias["previousId"], alias["userId"]) == (
        "alias",
        "anon-previous",
        "user-1",
    )
    anonymous = events[prefix + "sdk-track-2"]
    assert anonymous["anonymousId"] == "anon-9" and "userId" not in anonymous
    # The SDK's timestamp is the client clock: kept as originalTimestamp.
    assert anonymous["originalTimestamp"] == "2030-01-02T03:04:05.000Z"


@pytest.fixture
def module_sdk(collector: CollectorHarness) -> Iterator[Any]:
    """The SDK's module-level API, pointed at the collector; restored afterwards."""
    saved = {
        name: getattr(analytics, name)
        for name in ("write_key", "host", "sync_mode", "on_error", "default_client")
    }
    errors: list[Any] = []
    analytics.write_key = collector.write_key
    analytics.host = collector.url
    analytics.sync_mode = True
    analytics.on_error = lambda error, items: errors.append(error)
    analytics.default_client = None
    try:
        yield analytics
    finally:
        for name, value in saved.items():
            setattr(analytics, name, value)
        assert errors == []


async def test_sdk_module_api_in_sync_mode(collector: CollectorHarness, module_sdk: Any) -> None:
    await asyncio.to_thread(send_all, module_sdk)
    warehouse = await collector.take(WAREHOUSE_PIPELINE, expected=7)
    crm = await collector.take(CRM_PIPELINE, expected=2)
    check_stored(warehouse, crm)


async def test_sdk_batches_in_the_background_with_gzip(collector: CollectorHarness) -> None:
    """The SDK's default mode: a consumer thread batches and uploads, here gzipped."""
    errors: list[Any] = []
    client = Client(
        collector.write_key,
        host=collector.url,
        gzip=True,
        upload_interval=0.05,
        max_retries=0,
        on_error=lambda error, items: errors.append(error),
    )

    def run() -> None:
        try:
            send_all(client)
            client.flush()
        finally:
            client.join()

    await asyncio.to_thread(run)
    assert errors == []
    warehouse = await collector.take(WAREHOUSE_PIPELINE, expected=7)
    crm = await collector.take(CRM_PIPELINE, expected=2)
    check_stored(warehouse, crm)


async def test_sdk_sees_an_unknown_write_key_as_an_error(collector: CollectorHarness) -> None:
    client = Client("Z" * 32, host=collector.url, sync_mode=True)
    with pytest.raises(Exception) as info:
        await asyncio.to_thread(client.track, "user-1", "Order Completed")
    assert getattr(info.value, "status", None) == 401
    assert await collector.stream_messages() == 0
