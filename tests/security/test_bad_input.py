"""Bad input costs only itself: an event the decoder or the rules refuse is rejected alone, with
its reason in the answer's "rejected", and every other event of the request is stored.

What is defended, each test failing without the defence it names:
- a lone UTF-16 surrogate escape becomes U+FFFD (the event is kept);
- a number out of range, a string that is not UTF-8, nesting deeper than 64 levels (whether or
  not the decoder could go that deep): that event is rejected;
- only a body that is not JSON, or whose top is not an object or array, is a 400;
- a body built to be slow costs a bounded time;
- ids longer than 255 characters, and ids or keys that a NUL character would merge in the
  warehouse, are rejected;
- a client clock far in the future or before 2000 does not date the event there;
- an X-Forwarded-For that is not an address does not fail the request.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest
from helpers_collector import WAREHOUSE_PIPELINE, CollectorHarness, bearer
from psycopg.rows import dict_row

from events.bench_decode import hostile_bodies
from fixtures.events import stored
from krenalis.errors import RequestError
from krenalis.events import MAX_BODY_BYTES, DecodedRequest, decode_request, encode_event
from krenalis.sinks.base import DELIVERED
from krenalis.sinks.warehouse import WarehouseSink, init_db
from krenalis.sinks.warehouse.schema import event_to_row

RECEIVED_AT = datetime(2026, 11, 26, 5, 29, 2, 123456, tzinfo=UTC)
RECEIVED_AT_TEXT = "2026-11-26T05:29:02.123Z"
PEER = "203.0.113.7"
TOO_DEEP = "event is nested more than 64 levels deep"


def track(**extra: Any) -> dict[str, Any]:
    """A valid track event with a fresh messageId."""
    return {
        "type": "track",
        "event": "Bad Input",
        "anonymousId": "anon-1",
        "messageId": f"bad-input-{uuid.uuid4()}",
        **extra,
    }


def raw(event: dict[str, Any], value: bytes) -> bytes:
    """The event's JSON with the string "RAW" replaced by `value`, bytes as they are."""
    return msgspec.json.encode(event).replace(b'"RAW"', value)


def nested(levels: int) -> bytes:
    """Arrays `levels` deep: [[[...]]]."""
    return b"[" * levels + b"]" * levels


def array(*events: bytes) -> bytes:
    return b"[" + b",".join(events) + b"]"


def decode(body: bytes, **options: Any) -> DecodedRequest:
    options.setdefault("event_type", None)
    return decode_request(
        body, received_at=RECEIVED_AT, remote_ip=PEER, source_id="website", **options
    )


def reasons(decoded: DecodedRequest) -> dict[int, str]:
    return {r.index: r.reason for r in decoded.rejected}


# -- through the collector ------------------------------------------------------------------


async def test_one_bad_event_of_each_kind_among_100_costs_only_itself(
    collector: CollectorHarness,
) -> None:
    good = [track(anonymousId=f"anon-{i}") for i in range(100)]
    body = [msgspec.json.encode(event) for event in good]
    surrogate = dict(good[10], event="RAW")
    body[10] = raw(surrogate, b'"cut \\ud83d"')  # kept: the half becomes U+FFFD
    bad = {
        20: (raw(dict(good[20], properties={"n": "RAW"}), b"1e400"), "number out of range"),
        30: (raw(dict(good[30], event="RAW"), b'"\xff\xfe"'), "not valid UTF-8"),
        40: (raw(dict(good[40], properties={"a": "RAW"}), nested(3000)), TOO_DEEP),
        50: (raw(dict(good[50], properties={"a": "RAW"}), nested(63)), TOO_DEEP),  # 65 levels
        60: (msgspec.json.encode(dict(good[60], userId="u" * 256)), "longer than 255"),
        70: (msgspec.json.encode(dict(good[70], properties={"a": 1, "a\0": 2})), "NUL"),
    }
    for index, (event, _) in bad.items():
        body[index] = event
    async with collector.client() as client:
        response = await client.post("/v1/batch", content=array(*body), headers=bearer())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 100 - len(bad)
    rejected = {r["index"]: r["reason"] for r in answer["rejected"]}
    assert set(rejected) == set(bad)
    for index, (_, reason) in bad.items():
        assert reason in rejected[index]
    stored = await collector.take(WAREHOUSE_PIPELINE, expected=100 - len(bad))
    expected = {e["messageId"] for i, e in enumerate(good) if i not in bad}
    assert {s.event["messageId"] for s in stored} == expected
    by_id = {s.event["messageId"]: s.event for s in stored}
    assert by_id[good[10]["messageId"]]["event"] == "cut \ufffd"


async def test_a_single_bad_event_is_rejected_once_its_sender_is_known(
    collector: CollectorHarness,
) -> None:
    # The write key is in the body: the undecodable event does not hide who sent it.
    event = track(writeKey=collector.write_key, properties={"n": "RAW"})
    async with collector.client() as client:
        generic = await client.post("/v1/events", content=raw(event, b"-1e400"))
        typed = await client.post("/v1/track", content=raw(event, nested(5000)))
    assert generic.status_code == typed.status_code == 200, (generic.text, typed.text)
    assert "number out of range" in generic.json()["rejected"][0]["reason"]
    assert typed.json()["rejected"][0]["reason"] == TOO_DEEP


async def test_only_a_body_that_is_not_json_is_a_400(collector: CollectorHarness) -> None:
    async with collector.client() as client:
        for body, message in (
            (b"\xff\xfe[]", "error parsing the request body as JSON"),
            (b"[1e400", "error parsing the request body as JSON"),
            (b"1e400", "not a valid JSON object or array"),
            (b'"\\ud83d"', "not a valid JSON object or array"),
        ):
            response = await client.post("/v1/batch", content=body, headers=bearer())
            assert response.status_code == 400, body
            assert message in response.json()["error"]["message"]
        response = await client.post("/v1/batch", content=nested(3000), headers=bearer())
    assert response.status_code == 200  # JSON: its one element is not an event


# -- each kind, decoded ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        (b'"\\ud83d"', "\ufffd"),  # a high half at the end
        (b'"\\ud83dx"', "\ufffdx"),
        (b'"\\ude00 and \\ud83d\\ude00"', "\ufffd and \U0001f600"),  # a low half, then a pair
        (b'"\\ud83d\\ud83d\\ude00"', "\ufffd\U0001f600"),
        # An escaped backslash, then text; then an escaped backslash, then a lone half.
        (b'"\\\\ud83d \\\\\\ud83d"', "\\ud83d \\\ufffd"),
    ],
)
def test_a_lone_surrogate_becomes_the_replacement_character(text: bytes, decoded: str) -> None:
    event = track(event="RAW", properties={"RAW": 1})  # in a value and in a key
    result = decode(array(raw(event, text), msgspec.json.encode(track())))
    assert result.rejected == []
    assert result.events[0]["event"] == decoded
    assert result.events[0]["properties"] == {decoded: 1}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"1e400", "event cannot be decoded: number out of range"),
        (b"-1e400", "event cannot be decoded: number out of range"),
        (b"1" + b"0" * 5000, "event cannot be decoded: integer value out of range"),
        (b'"\xc3\x28"', "event cannot be decoded: it is not valid UTF-8"),
        (b'"\xed\xa0\xbd"', "event cannot be decoded: it is not valid UTF-8"),  # a raw surrogate
        (nested(500), TOO_DEEP),  # the decoder could, the rule does not
        (nested(3000), TOO_DEEP),  # the decoder could not
    ],
)
@pytest.mark.parametrize("envelope", [False, True])
def test_an_undecodable_event_is_rejected_alone(value: bytes, reason: str, envelope: bool) -> None:
    events = [track(), track(properties={"x": "RAW"}), track()]
    items = [raw(event, value) for event in events]
    body = array(*items)
    if envelope:
        body = b'{"sentAt":"2026-11-26T05:29:02Z","batch":' + body + b',"writeKey":"wk"}'
    result = decode(body)
    assert reasons(result) == {1: reason}
    assert [e["messageId"] for e in result.events] == [
        events[0]["messageId"],
        events[2]["messageId"],
    ]
    if envelope:
        assert result.write_key == "wk"


def test_an_undecodable_key_is_rejected_alone() -> None:
    body = array(b'{"\xc3\x28":1,"type":"track"}', msgspec.json.encode(track()))
    assert reasons(decode(body)) == {0: "event cannot be decoded: it is not valid UTF-8"}


def test_nesting_is_capped_at_64_levels() -> None:
    # The event is level 1 and properties level 2: 62 more levels inside properties make 64.
    at_limit = track(properties={"a": msgspec.json.decode(nested(62))})
    over = {"type": "identify", "userId": "u", "traits": {"a": msgspec.json.decode(nested(63))}}
    via_context = track(context={"traits": {"a": msgspec.json.decode(nested(63))}})
    result = decode(msgspec.json.encode([at_limit, over, via_context]))
    assert reasons(result) == {1: TOO_DEEP, 2: TOO_DEEP}
    # What is accepted, every sink can encode again: no RecursionError downstream.
    (event,) = result.events
    assert msgspec.json.decode(encode_event(event)) == event
    assert event_to_row(event)


def test_the_batch_context_is_checked_in_each_event() -> None:
    deep = msgspec.json.decode(nested(63))
    body = {"batch": [track(), track()], "context": {"traits": {"a": deep}}}
    result = decode(msgspec.json.encode(body))
    assert reasons(result) == {0: TOO_DEEP, 1: TOO_DEEP}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1e400", "error parsing the request body as JSON: it is not terminated"),
        (b"[" * 5000, "error parsing the request body as JSON: it is not terminated"),
        (b'["\\x"]', "error parsing the request body as JSON: invalid escaped character (byte 3)"),
        (b"1e400", "request's content is not a valid JSON object or array"),
        (b'"\\ud83d"', "request's content is not a valid JSON object or array"),
        (b'{"batch":1e400}', "property 'batch' is not a valid array"),
        (
            b'{"batch":[{}],"context":{"traits":{"n":1e400}}}',
            "property 'context' cannot be decoded: number out of range",
        ),
    ],
)
def test_a_body_that_is_not_json_or_a_bad_envelope_is_a_400(body: bytes, message: str) -> None:
    with pytest.raises(RequestError) as info:
        decode(body)
    assert (info.value.status, info.value.message) == (400, message)


# -- a body built to be slow ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(hostile_bodies()))
def test_a_body_built_to_be_slow_costs_a_bounded_time(name: str) -> None:
    body = hostile_bodies()[name]
    assert len(body) <= MAX_BODY_BYTES
    started = time.process_time()
    result = decode(body)
    spent = time.process_time() - started
    assert result.rejected or result.events
    # At most about 0.1 s on this 2-core VM (tests/events/bench_decode.py); room for slower.
    assert spent < 2.0, f"{name}: {spent:.2f} s of CPU"


# -- ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "event"),
    [
        ("anonymousId", {}),
        ("userId", {}),
        ("groupId", {"type": "group", "event": None, "userId": "u"}),
        ("previousId", {"type": "alias", "event": None, "userId": "u"}),
    ],
)
def test_ids_are_at_most_255_characters(name: str, event: dict[str, Any]) -> None:
    def with_id(length: int) -> dict[str, Any]:
        made = {k: v for k, v in track(**event).items() if v is not None}
        made[name] = "i" * length
        return made

    result = decode(msgspec.json.encode([with_id(255), with_id(256)]))
    assert reasons(result) == {1: f"property '{name}' is longer than 255 characters"}
    assert result.events[0][name] == "i" * 255


# -- NUL characters -------------------------------------------------------------------------


async def test_what_a_nul_would_merge_in_the_warehouse_is_rejected(warehouse_dsn: str) -> None:
    await init_db(warehouse_dsn)
    good = track(properties={"a": 1, "title": "NUL in a value\0 is stripped, nothing merges"})
    events = [
        good,
        track(properties={"a": 1, "a\0": 2}),
        track(properties={"list": [{"k": 1, "k\0": 2}]}),
        track(context={"traits": {"plan\0": "pro", "plan": "free"}}),
        track(context={"consents": {"ads": True, "ads\0": False}}),
        track(anonymousId="anon-1\0"),
        track(messageId=good["messageId"] + "\0"),
    ]
    result = decode(msgspec.json.encode(events))
    assert reasons(result) == {
        1: "property 'properties' has a key with a NUL character: \"a\\u0000\"",
        2: "property 'properties' has a key with a NUL character: \"k\\u0000\"",
        3: "property 'traits' has a key with a NUL character: \"plan\\u0000\"",
        4: "property 'context.consents' has a key with a NUL character: \"ads\\u0000\"",
        5: "property 'anonymousId' contains a NUL character",
        6: "property 'messageId' contains a NUL character",
    }
    async with WarehouseSink(warehouse_dsn) as sink:
        assert await sink.write(stored(result.events)) == [DELIVERED]
        # What the rejection prevents: the warehouse strips NUL, so the keys would merge.
        merged = track(properties={"a": 1, "a\0": 2})
        assert await sink.write(stored([dict(result.events[0], messageId=merged["messageId"],
                                      properties=merged["properties"])])) == [DELIVERED]  # fmt: skip
    async with await psycopg.AsyncConnection.connect(warehouse_dsn, row_factory=dict_row) as conn:
        rows = await (await conn.execute("SELECT message_id, properties FROM krenalis_events")).fetchall()  # fmt: skip
    by_id = {row["message_id"]: row["properties"] for row in rows}
    assert by_id[good["messageId"]]["title"] == "NUL in a value is stripped, nothing merges"
    assert by_id[merged["messageId"]] == {"a": 2}  # one of the two values is gone


# -- clocks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "original"),
    [
        ({"timestamp": "2031-01-01T00:00:00Z"}, "2031-01-01T00:00:00.000Z"),  # no sentAt
        (  # sentAt earlier than the event: the corrected time is in the future
            {"timestamp": "2026-11-27T05:29:02Z", "sentAt": "2026-11-26T05:29:02Z"},
            "2026-11-27T05:29:02.000Z",
        ),
        ({"timestamp": "1970-01-01T00:00:10Z"}, "1970-01-01T00:00:10.000Z"),  # a reset clock
        ({"originalTimestamp": "1999-12-31T23:59:59Z"}, "1999-12-31T23:59:59.000Z"),
        (
            {"timestamp": "2040-01-01T00:00:00Z", "originalTimestamp": "2040-01-01T00:00:00Z"},
            "2040-01-01T00:00:00.000Z",
        ),
    ],
)
def test_a_clock_far_in_the_future_or_before_2000_does_not_date_the_event(
    fields: dict[str, str], original: str
) -> None:
    result = decode(msgspec.json.encode([track(**fields)]))
    (event,) = result.events
    assert event["timestamp"] == RECEIVED_AT_TEXT
    assert event["originalTimestamp"] == original  # what the client said is kept


def test_a_clock_up_to_a_minute_ahead_is_kept_and_a_reset_one_is_corrected() -> None:
    def ahead(seconds: int) -> dict[str, Any]:
        return track(timestamp=(RECEIVED_AT + timedelta(seconds=seconds)).isoformat())

    reset = track(timestamp="1970-01-01T00:00:10Z", sentAt="1970-01-01T00:00:12Z")
    result = decode(msgspec.json.encode([ahead(30), ahead(61), reset]))
    timestamps = [event["timestamp"] for event in result.events]
    assert timestamps == [
        "2026-11-26T05:29:32.123Z",  # within a minute of receivedAt: kept
        RECEIVED_AT_TEXT,  # past it: receivedAt
        "2026-11-26T05:29:00.123Z",  # sentAt says how wrong the clock is: receivedAt - 2 s
    ]


# -- X-Forwarded-For ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forwarded_for", ["unknown", "999.1.1.1, 10.0.0.1", "[::1", "1" * 65_536, "x" * 65_536 + ",1"]
)
def test_a_forwarded_for_that_is_not_an_address_falls_back_to_the_peer(forwarded_for: str) -> None:
    result = decode(msgspec.json.encode([track()]), forwarded_for=forwarded_for)
    assert result.events[0]["context"]["ip"] == PEER
