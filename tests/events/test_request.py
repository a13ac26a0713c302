"""Request-level decoding: body forms, envelope properties, limits and request errors."""

from __future__ import annotations

import msgspec
import pytest

from krenalis.errors import RequestError
from krenalis.events import MAX_BATCH_EVENTS, MAX_EVENT_BYTES

from ._helpers import REMOTE_IP, decode, track


def error(body: object, **options: object) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode(body, **options)
    return info.value


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "request's body is empty"),
        (b"{", "error parsing the request body as JSON: it is not terminated"),
        (b"[1,", "error parsing the request body as JSON: it is not terminated"),
        (b'{"a":1,}', "error parsing the request body as JSON: trailing comma in object (byte 7)"),
        (b"[1] x", "error parsing the request body as JSON: trailing characters (byte 5)"),
        (b"\xff\xfe", "error parsing the request body as JSON: invalid character (byte 0)"),
        (b'["\\q"]', "error parsing the request body as JSON: invalid escaped character (byte 3)"),
        (b"[" * 5000, "error parsing the request body as JSON: it is not terminated"),
        (b"1e400", "request's content is not a valid JSON object or array"),
        (
            b'{"batch":[{}],"context":{"n":1e400}}',
            "property 'context' cannot be decoded: number out of range",
        ),
        (b'{"batch":[1e400]', "error parsing the request body as JSON: it is not terminated"),
        (b"5", "request's content is not a valid JSON object or array"),
        (b'"text"', "request's content is not a valid JSON object or array"),
        (b"null", "request's content is not a valid JSON object or array"),
        (b"[]", "batch must contain at least one event"),
        (b'{"batch":[]}', "batch must contain at least one event"),
        (b'{"batch":null}', "property 'batch' is not a valid array"),
        (b'{"batch":{}}', "property 'batch' is not a valid array"),
        (b'{"batch":[{}],"context":5}', "property 'context' is not a valid object"),
        (b'{"batch":[{}],"context":null}', "property 'context' is not a valid object"),
        (b'{"batch":[{}],"sentAt":5}', "property 'sentAt' is not a valid string"),
        (
            b'{"batch":[{}],"sentAt":"yesterday"}',
            "property 'sentAt' is not a valid ISO 8601 timestamp",
        ),
        (b'{"batch":[{}],"sentAt":""}', "property 'sentAt' is not a valid ISO 8601 timestamp"),
        (
            b'{"batch":[{}],"sentAt":"0000-01-01T00:00:00Z"}',
            "property 'sentAt' has an invalid year value",
        ),
        (b'{"batch":[{}],"writeKey":5}', "property 'writeKey' is not a valid string"),
        (b'{"batch":[{}],"writeKey":""}', "property 'writeKey' cannot be empty"),
        (b'{"batch":[{}],"connectionId":5}', "property 'connectionId' is not a string"),
        (
            b'{"batch":[{}],"connectionId":"0OIl"}',
            "property 'connectionId' is not a valid connection identifier",
        ),
        (b'{"batch":[{}],"context":{"app":5}}', "property 'context.app' is not a valid object"),
        (b'{"type":"track","context":[]}', "property 'context' is not a valid object"),
    ],
)
def test_request_errors(body: bytes, message: str) -> None:
    exc = error(body)
    assert (exc.status, exc.code, exc.message) == (400, "BadRequest", message)
    assert str(exc) == message


def test_typed_endpoint_rejects_a_non_object_as_an_event() -> None:
    decoded = decode(b"[]", event_type="track")
    assert decoded.events == []
    assert decoded.rejected[0].reason == "expected an object for the event, but found array instead"


def test_unknown_event_type_is_not_found() -> None:
    assert error(track(), event_type="purchase").status == 404


def test_body_over_the_limit_is_refused() -> None:
    exc = error(b" " * (500 * 1024 + 1))
    assert (exc.status, exc.message) == (413, "Request Entity Too Large")


def test_array_is_a_batch() -> None:
    decoded = decode([track(), track(event="Other")])
    assert [e["event"] for e in decoded.events] == ["Signed Up", "Other"]
    assert decoded.write_key is None


def test_envelope_reads_write_key_and_connection_id() -> None:
    decoded = decode({"batch": [track()], "writeKey": "wk", "connectionId": "a1B2c3D4e5F6"})
    assert len(decoded.events) == 1
    assert (decoded.write_key, decoded.connection_id) == ("wk", "a1B2c3D4e5F6")


def test_envelope_ignores_other_keys() -> None:
    body = {"batch": [track()], "integrations": {"All": False}, "whatever": [1]}
    assert len(decode(body).events) == 1


def test_single_event_object_reads_its_write_key() -> None:
    decoded = decode(track(writeKey="wk"))
    assert len(decoded.events) == 1
    assert decoded.write_key == "wk"


def test_typed_endpoint_defaults_the_type() -> None:
    event = {"event": "Clicked", "anonymousId": "a", "writeKey": "wk"}
    decoded = decode(event, event_type="track")
    assert decoded.events[0]["type"] == "track"
    assert decoded.write_key == "wk"


def test_typed_endpoint_body_type_wins() -> None:
    decoded = decode({"type": "identify", "userId": "u"}, event_type="track")
    assert decoded.events[0]["type"] == "identify"


def test_missing_type_messages_depend_on_the_form() -> None:
    no_type = {"anonymousId": "a"}
    assert decode(no_type).rejected[0].reason == (
        "property 'type' is required for a single-event request"
    )
    assert decode([no_type]).rejected[0].reason == "property 'type' is required for a batch request"
    assert decode({"batch": [no_type]}).rejected[0].reason == (
        "property 'type' is required for a batch request"
    )


def test_one_bad_event_among_good_ones() -> None:
    batch = [track(), track(event=""), 7, track(event="Third")]
    decoded = decode(batch)
    assert [e["event"] for e in decoded.events] == ["Signed Up", "Third"]
    assert [(r.index, r.reason) for r in decoded.rejected] == [
        (1, "property 'event' is required for a track event"),
        (2, "expected an object for the event, but found number instead"),
    ]


@pytest.mark.parametrize(
    ("item", "kind"),
    [([], "array"), ("x", "string"), (1.5, "number"), (True, "boolean"), (None, "null")],
)
def test_non_object_elements(item: object, kind: str) -> None:
    decoded = decode([item, track()])
    assert (
        decoded.rejected[0].reason == f"expected an object for the event, but found {kind} instead"
    )
    assert len(decoded.events) == 1


def test_batch_limit() -> None:
    assert len(decode([{}] * MAX_BATCH_EVENTS).rejected) == MAX_BATCH_EVENTS
    assert error([{}] * (MAX_BATCH_EVENTS + 1)).message == "batch contains too many events"
    assert (
        error({"batch": [{}] * (MAX_BATCH_EVENTS + 1)}).message == "batch contains too many events"
    )


def big_event(size: int) -> dict:
    """A valid track event whose JSON is exactly size bytes."""
    event = track(properties={"pad": ""})
    padding = size - len(msgspec.json.encode(event))
    event["properties"]["pad"] = "x" * padding
    assert len(msgspec.json.encode(event)) == size
    return event


@pytest.mark.parametrize("envelope", [False, True])
def test_event_size_limit(envelope: bool) -> None:
    batch = [big_event(MAX_EVENT_BYTES), big_event(MAX_EVENT_BYTES + 1), track()]
    decoded = decode({"batch": batch} if envelope else batch)
    assert len(decoded.events) == 2
    assert [(r.index, r.reason) for r in decoded.rejected] == [
        (1, f"event is larger than {MAX_EVENT_BYTES} bytes")
    ]


def test_single_event_size_limit() -> None:
    assert len(decode(big_event(MAX_EVENT_BYTES)).events) == 1
    decoded = decode(big_event(MAX_EVENT_BYTES + 1))
    assert decoded.rejected[0].reason == f"event is larger than {MAX_EVENT_BYTES} bytes"


def test_event_size_counts_the_bytes_as_sent() -> None:
    # Whitespace inside the event counts: it is the event's JSON in the request.
    event = msgspec.json.encode(big_event(MAX_EVENT_BYTES - 2)).replace(b"{", b"{   ", 1)
    body = b"[" + event + b"," + msgspec.json.encode(track()) + b"]"
    assert decode(body).rejected[0].reason == f"event is larger than {MAX_EVENT_BYTES} bytes"


@pytest.mark.parametrize(
    ("forwarded_for", "ip"),
    [
        ("198.51.100.4", "198.51.100.4"),
        (" 198.51.100.4 , 10.0.0.1", "198.51.100.4"),
        ("198.51.100.4:8080", "198.51.100.4"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:198.51.100.4", "198.51.100.4"),
    ],
)
def test_forwarded_for_gives_the_client_address(forwarded_for: str, ip: str) -> None:
    decoded = decode([track()], forwarded_for=forwarded_for)
    assert decoded.events[0]["context"]["ip"] == ip


@pytest.mark.parametrize(
    "forwarded_for", ["unknown", "1.2.3", "fe80::1%eth0", "[::1", "1.2.3.4:x", "1" * 65_536]
)
def test_invalid_forwarded_for_falls_back_to_the_peer(forwarded_for: str) -> None:
    decoded = decode([track()], forwarded_for=forwarded_for)
    assert decoded.events[0]["context"]["ip"] == REMOTE_IP


def test_invalid_remote_ip_is_an_internal_error() -> None:
    assert error([track()], remote_ip="nope").status == 500


def test_duplicate_keys_keep_the_last_value() -> None:
    # Documented choice: duplicates are not detected; the last value wins, as in msgspec.
    body = b'[{"type":"track","event":"first","event":"last","anonymousId":"a"}]'
    assert decode(body).events[0]["event"] == "last"
