"""Every endpoint and auth form stores each event in the right pipeline subjects, once.

Real nats-server, real uvicorn on loopback, real HTTP with httpx: what a 200 promises is checked
by reading the pipelines' durable consumers.
"""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

from helpers_collector import (
    CRM_PIPELINE,
    SOURCE_ID,
    TYPES,
    WAREHOUSE_PIPELINE,
    WRITE_KEY,
    CollectorHarness,
    Stored,
    basic,
    bearer,
    event,
)

WAREHOUSE_SUBJECT = f"events.v1.{WAREHOUSE_PIPELINE}.0"
CRM_SUBJECT = f"events.v1.{CRM_PIPELINE}.0"


def by_message_id(stored: list[Stored]) -> dict[str, Stored]:
    found = {s.event["messageId"]: s for s in stored}
    assert len(found) == len(stored), "a messageId was stored twice in one pipeline"
    return found


def check_copies(warehouse: list[Stored], crm: list[Stored], sent: list[dict[str, Any]]) -> None:
    """Every sent event is in the warehouse pipeline; exactly the tracks are in the crm one."""
    in_warehouse = by_message_id(warehouse)
    in_crm = by_message_id(crm)
    assert set(in_warehouse) == {e["messageId"] for e in sent}
    tracks = {e["messageId"] for e in sent if e["type"] == "track"}
    assert set(in_crm) == tracks
    for message_id, copy in in_warehouse.items():
        assert copy.subject == WAREHOUSE_SUBJECT
        assert copy.msg_id == f"{message_id}/{WAREHOUSE_PIPELINE}"
        assert copy.event["connectionId"] == SOURCE_ID
    for message_id, copy in in_crm.items():
        assert copy.subject == CRM_SUBJECT
        assert copy.msg_id == f"{message_id}/{CRM_PIPELINE}"
        assert copy.event["connectionId"] == SOURCE_ID
        assert copy.event["type"] == "track"


def copies(events: list[dict[str, Any]]) -> int:
    """How many copies the workspace makes: one to the warehouse, one more for a track."""
    return sum(2 if e["type"] == "track" else 1 for e in events)


async def test_typed_endpoints_in_both_forms(collector: CollectorHarness) -> None:
    sent = []
    async with collector.client() as client:
        for prefix in ("/v1/events/", "/v1/"):
            for event_type in TYPES:
                body = event(event_type, typed=False)  # the path gives the type
                response = await client.post(prefix + event_type, json=body, headers=bearer())
                assert response.status_code == 200, (prefix, event_type, response.text)
                stored = 2 if event_type == "track" else 1
                assert response.json() == {"success": True, "accepted": 1, "stored": stored}
                sent.append({**body, "type": event_type})
    warehouse = await collector.take(WAREHOUSE_PIPELINE, expected=len(sent))
    crm = await collector.take(CRM_PIPELINE, expected=2)
    check_copies(warehouse, crm, sent)
    stored = by_message_id(warehouse)
    for body in sent:
        got = stored[body["messageId"]].event
        assert got["type"] == body["type"]
        for key in ("event", "userId", "anonymousId", "groupId", "previousId", "name"):
            if key in body:
                assert got[key] == body[key], key
        for key in ("properties", "traits"):
            if key in body:
                assert got[key] == body[key], key


async def test_generic_endpoints_take_envelope_array_and_single_event(
    collector: CollectorHarness,
) -> None:
    sent: list[dict[str, Any]] = []
    async with collector.client() as client:
        # Krenalis envelope, with the batch's default context and sentAt.
        batch = [event(t) for t in TYPES]
        envelope = {
            "batch": batch,
            "sentAt": "2030-01-02T03:04:05.000Z",
            "context": {"app": {"name": "shop"}, "locale": "it-IT"},
            "writeKey": WRITE_KEY,
        }
        response = await client.post("/v1/events", json=envelope)
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True, "accepted": 6, "stored": 7}
        sent += batch
        # A bare array (the key in the header: an array has nowhere else to carry it).
        array = [event(t) for t in TYPES]
        response = await client.post("/v1/events", json=array, headers=bearer())
        assert response.json() == {"success": True, "accepted": 6, "stored": 7}
        sent += array
        # One event object.
        single = event("track")
        response = await client.post("/v1/events", json=single, headers=bearer())
        assert response.json() == {"success": True, "accepted": 1, "stored": 2}
        sent.append(single)
        # Segment's batch endpoint.
        segment_batch = [event(t) for t in TYPES]
        response = await client.post("/v1/batch", json={"batch": segment_batch}, headers=basic())
        assert response.json() == {"success": True, "accepted": 6, "stored": 7}
        sent += segment_batch
    warehouse = await collector.take(WAREHOUSE_PIPELINE, expected=len(sent))
    crm = await collector.take(CRM_PIPELINE, expected=4)
    check_copies(warehouse, crm, sent)
    stored = by_message_id(warehouse)
    for body in batch:  # the envelope's context and sentAt apply to its events
        got = stored[body["messageId"]].event
        assert got["context"]["app"] == {"name": "shop"}
        assert got["context"]["locale"] == "it-IT"
        assert got["sentAt"] == "2030-01-02T03:04:05.000Z"


async def test_every_auth_form(collector: CollectorHarness) -> None:
    forms: list[tuple[str, str, dict[str, Any], dict[str, str]]] = []
    for name, headers in (
        ("bearer", bearer()),
        ("bearer lower-case scheme", {"Authorization": f"bearer {WRITE_KEY}"}),
        ("basic, empty password", basic()),
        (
            "basic, lower-case scheme",
            {"Authorization": basic()["Authorization"].lower()[:6] + basic()["Authorization"][6:]},
        ),
    ):
        forms.append((name, "/v1/track", event("track", typed=False), headers))
        forms.append((name, "/v1/batch", {"batch": [event("track")]}, headers))
    body_key = {"writeKey": WRITE_KEY}
    forms += [
        ("envelope writeKey", "/v1/events", {"batch": [event("track")], **body_key}, {}),
        ("segment batch writeKey", "/v1/batch", {"batch": [event("track")], **body_key}, {}),
        ("single event writeKey", "/v1/events", {**event("track"), **body_key}, {}),
        (
            "typed event writeKey",
            "/v1/events/track",
            {**event("track", typed=False), **body_key},
            {},
        ),
    ]
    sent = []
    async with collector.client() as client:
        for name, path, body, headers in forms:
            response = await client.post(path, json=body, headers=headers)
            assert response.status_code == 200, (name, path, response.text)
            assert response.json() == {"success": True, "accepted": 1, "stored": 2}, name
            sent.append(body["batch"][0] if "batch" in body else {**body, "type": "track"})
    warehouse = await collector.take(WAREHOUSE_PIPELINE, expected=len(sent))
    crm = await collector.take(CRM_PIPELINE, expected=len(sent))
    check_copies(warehouse, crm, sent)
    for copy in warehouse:
        assert "writeKey" not in copy.event


async def test_header_key_wins_over_a_body_key(collector: CollectorHarness) -> None:
    body = {"batch": [event("page")], "writeKey": "Z" * 32}
    async with collector.client() as client:
        response = await client.post("/v1/events", json=body, headers=bearer())
    assert response.status_code == 200, response.text
    warehouse = await collector.take(WAREHOUSE_PIPELINE, expected=1)
    assert warehouse[0].event["connectionId"] == SOURCE_ID


async def test_filter_sends_only_tracks_to_crm(collector: CollectorHarness) -> None:
    batch = [event(t) for t in TYPES for _ in range(3)]
    async with collector.client() as client:
        response = await client.post("/v1/batch", json={"batch": batch}, headers=bearer())
    assert response.json() == {"success": True, "accepted": 18, "stored": 21}
    warehouse = await collector.take(WAREHOUSE_PIPELINE, expected=18)
    crm = await collector.take(CRM_PIPELINE, expected=3)
    check_copies(warehouse, crm, batch)


async def test_per_event_rejections_keep_the_good_events(collector: CollectorHarness) -> None:
    good = [event("track"), event("identify"), event("page")]
    batch: list[Any] = [
        good[0],
        {"type": "track", "userId": "u1"},  # a track without "event"
        good[1],
        "not an event",
        good[2],
    ]
    async with collector.client() as client:
        response = await client.post("/v1/batch", json={"batch": batch}, headers=bearer())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 3 and answer["stored"] == 4
    assert answer["rejected"] == [
        {"index": 1, "reason": "property 'event' is required for a track event"},
        {"index": 3, "reason": "expected an object for the event, but found string instead"},
    ]
    warehouse = await collector.take(WAREHOUSE_PIPELINE, expected=3)
    crm = await collector.take(CRM_PIPELINE, expected=1)
    check_copies(warehouse, crm, good)


async def test_a_batch_of_only_bad_events_stores_nothing(collector: CollectorHarness) -> None:
    batch = [{"type": "alias", "userId": "u"}, {"type": "nope", "userId": "u"}]
    async with collector.client() as client:
        response = await client.post("/v1/events", json=batch, headers=bearer())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["accepted"], answer["stored"]) == (0, 0)
    assert [r["index"] for r in answer["rejected"]] == [0, 1]
    assert "previousId" in answer["rejected"][0]["reason"]
    assert "type" in answer["rejected"][1]["reason"]
    assert await collector.stream_messages() == 0


async def test_gzip_body(collector: CollectorHarness) -> None:
    batch = [event(t) for t in TYPES]
    data = gzip.compress(json.dumps({"batch": batch, "writeKey": WRITE_KEY}).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with collector.client() as client:
        response = await client.post("/v1/batch", content=data, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True, "accepted": 6, "stored": 7}
        # Chunked (no Content-Length), split at awkward places.
        single = event("track", typed=False)
        data = gzip.compress(json.dumps(single).encode())

        async def chunks() -> Any:
            for i in range(0, len(data), 7):
                yield data[i : i + 7]

        response = await client.post("/v1/track", content=chunks(), headers={**headers, **bearer()})
        assert response.status_code == 200, response.text
    warehouse = await collector.take(WAREHOUSE_PIPELINE, expected=7)
    crm = await collector.take(CRM_PIPELINE, expected=2)
    check_copies(warehouse, crm, [*batch, {**single, "type": "track"}])


async def test_text_plain_and_charset_are_accepted(collector: CollectorHarness) -> None:
    """Browsers send text/plain to avoid a preflight; both carry UTF-8 JSON."""
    sent = []
    async with collector.client() as client:
        for content_type in (
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
        ):
            body = {"batch": [event("page")], "writeKey": WRITE_KEY}
            response = await client.post(
                "/v1/events",
                content=json.dumps(body).encode(),
                headers={"Content-Type": content_type},
            )
            assert response.status_code == 200, (content_type, response.text)
            sent += body["batch"]
    warehouse = await collector.take(WAREHOUSE_PIPELINE, expected=len(sent))
    check_copies(warehouse, [], sent)


async def test_cors_preflight_and_response_headers(collector: CollectorHarness) -> None:
    origin = "https://shop.example.com"
    async with collector.client() as client:
        for path in ("/v1/events", "/v1/batch", "/v1/track", "/v1/events/page"):
            response = await client.options(
                path,
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type",
                },
            )
            assert response.status_code == 204, path
            assert response.content == b""
            h = response.headers
            # No source lists allowed_origins: any page, without credentials.
            assert h["access-control-allow-origin"] == "*"
            assert "access-control-allow-credentials" not in h
            assert "POST" in h["access-control-allow-methods"]
            allowed = {x.strip().lower() for x in h["access-control-allow-headers"].split(",")}
            assert {"authorization", "content-type", "content-encoding"} <= allowed
            assert int(h["access-control-max-age"]) > 0
        # The answers themselves carry CORS headers: success and error alike.
        ok = await client.post(
            "/v1/events/track",
            json=event("track", typed=False),
            headers={**bearer(), "Origin": origin},
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "*"
        assert ok.headers["content-type"] == "application/json"
        assert "no-store" in ok.headers["cache-control"]
        bad = await client.post("/v1/events", content=b"{", headers={**bearer(), "Origin": origin})
        assert bad.status_code == 400
        assert bad.headers["access-control-allow-origin"] == "*"
        no_origin = await client.post("/v1/events/track", json=event("track"), headers=bearer())
        assert no_origin.headers["access-control-allow-origin"] == "*"
    await collector.take(WAREHOUSE_PIPELINE, expected=2)


async def test_retried_request_stores_each_copy_once(collector: CollectorHarness) -> None:
    batch = [event(t) for t in TYPES]
    body = json.dumps({"batch": batch, "writeKey": WRITE_KEY}).encode()
    async with collector.client() as client:
        for _ in range(3):
            response = await client.post("/v1/batch", content=body)
            assert response.status_code == 200, response.text
            assert response.json() == {"success": True, "accepted": 6, "stored": 7}
        assert await collector.stream_messages() == 7
        # The same messageIds through another endpoint and auth form are still duplicates.
        for one in batch:
            one_type = one["type"]
            response = await client.post(f"/v1/events/{one_type}", json=one, headers=basic())
            assert response.status_code == 200, response.text
        assert await collector.stream_messages() == 7
        # A retry after the first copies were consumed is still a duplicate (the stream's
        # window tracks ids, not presence).
        warehouse = await collector.take(WAREHOUSE_PIPELINE, expected=6)
        crm = await collector.take(CRM_PIPELINE, expected=1)
        check_copies(warehouse, crm, batch)
        response = await client.post("/v1/batch", content=body)
        assert response.status_code == 200
        assert await collector.stream_messages() == 0
        assert await collector.take(WAREHOUSE_PIPELINE) == []
        # A new messageId is a new event.
        fresh = event("track")
        response = await client.post("/v1/batch", json={"batch": [fresh]}, headers=bearer())
        assert response.json()["stored"] == 2
        assert await collector.stream_messages() == 2


async def test_health(collector: CollectorHarness) -> None:
    async with collector.client() as client:
        response = await client.get("/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "stream": True, "revision": 0}
        head = await client.head("/health")
        assert head.status_code == 200


async def test_distinct_message_ids_are_never_merged_by_dedup(collector: CollectorHarness) -> None:
    ids = ["dup\nid", "dup id", "dup\rid", " lead", "lead"]
    async with collector.client() as client:
        for message_id in ids:
            body = event("page", messageId=message_id)
            response = await client.post("/v1/events", json=body, headers=bearer())
            assert response.status_code == 200, response.text
            assert response.json()["stored"] == 1
    stored = await collector.take(WAREHOUSE_PIPELINE, expected=len(ids), timeout=1.0)
    assert sorted(s.event["messageId"] for s in stored) == sorted(ids)


async def test_keep_alive_requests_are_not_delayed(collector: CollectorHarness) -> None:
    latencies = []
    async with collector.client() as client:
        for _ in range(10):
            started = time.monotonic()
            response = await client.get("/health")
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200
    assert sorted(latencies)[len(latencies) // 2] < 0.02, latencies
