"""The stream's wire form: encode_event / decode_event / read_event, and the package's public
surface."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import krenalis.events
from krenalis.errors import InvalidEvent
from krenalis.events import StoredEvent, decode_event, encode_event, read_event
from krenalis.events.users import user_key
from krenalis.events.wire import _SCHEMA_KEYS

from ._helpers import decode, one, track

FULL_TRACK = track(
    userId="u-1",
    channel="browser",
    messageId="m-1",
    timestamp="2026-11-26T05:29:00.000Z",
    properties={"price": 19.99, "tags": ["a", "b"], "big": 2**70, "nested": {"x": None}},
    context={
        "sessionId": 1732598942123,
        "userAgent": "curl/8.5.0",
        "consents": {"ads": False},
        "screen": {"width": 390, "density": 3},
    },
)


def test_encode_is_compact_json_in_schema_order() -> None:
    data = encode_event(one(FULL_TRACK))
    assert b'": ' not in data and b', "' not in data
    keys = list(msgspec.json.decode(data))
    assert keys == [
        "connectionId",
        "anonymousId",
        "channel",
        "context",
        "event",
        "messageId",
        "properties",
        "receivedAt",
        "sentAt",
        "originalTimestamp",
        "timestamp",
        "traits",
        "type",
        "userId",
    ]
    assert b'"session":{"id":1732598942123}' in data  # a JSON number, not a string


@pytest.mark.parametrize(
    "event",
    [
        FULL_TRACK,
        {"type": "identify", "userId": "u", "traits": {"email": "a@example.com"}},
        {"type": "alias", "userId": "u", "previousId": "p"},
        {"type": "group", "groupId": "g", "anonymousId": "a"},
        {"type": "page", "anonymousId": "a", "name": "Home", "category": "Docs"},
        {"type": "screen", "anonymousId": "a", "name": "Home"},
    ],
)
def test_round_trip(event: dict) -> None:
    decoded = one(event, source_id="src")
    assert decode_event(encode_event(decoded)) == decoded


@pytest.mark.parametrize(
    "data",
    [
        b"{",
        b"[]",
        b"\xff",
        b'{"type":"track"}',
        b'{"kpid":"x"}',
    ],
)
def test_decode_event_refuses_what_is_not_an_event(data: bytes) -> None:
    with pytest.raises(InvalidEvent):
        decode_event(data)


BAD_CHANGES = [
    {"type": "buy"},
    {"traits": []},
    {"traits": None},
    {"userId": 5},
    {"userId": None},
    {"context": "x"},
    {"properties": None},
    {"properties": [1]},
    {"kpid": "x"},
]


@pytest.mark.parametrize("read", [decode_event, read_event])
@pytest.mark.parametrize("change", BAD_CHANGES)
def test_reading_checks_types(read, change: dict) -> None:
    good = one(track())
    with pytest.raises(InvalidEvent):
        read(encode_event({**good, **change}))


@pytest.mark.parametrize("read", [decode_event, read_event])
def test_reading_needs_every_required_field(read) -> None:
    incomplete = dict(one(track()))
    del incomplete["messageId"]
    with pytest.raises(InvalidEvent, match="messageId"):
        read(encode_event(incomplete))
    assert issubclass(InvalidEvent, ValueError)


@pytest.mark.parametrize("data", [b"{", b"[]", b"\xff", b'{"type":"track"}', b"null"])
def test_read_event_gives_decode_events_reason(data: bytes) -> None:
    with pytest.raises(InvalidEvent) as expected:
        decode_event(data)
    with pytest.raises(InvalidEvent) as got:
        read_event(data)
    assert str(got.value) == str(expected.value)


def test_read_event_refuses_bad_utf8_inside_an_object_as_decode_event_does() -> None:
    # msgspec skips an object's members without checking their UTF-8: read_event must not.
    good = encode_event(one(track(properties={"name": "caf\u00e9"}), source_id="src"))
    bad = good.replace("caf\u00e9".encode(), b"caf\xff")
    assert read_event(good).fields["properties"]["name"] == "caf\u00e9"
    with pytest.raises(InvalidEvent) as expected:
        decode_event(bad)
    with pytest.raises(InvalidEvent) as got:
        read_event(bad)
    assert str(got.value) == str(expected.value)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from(sorted(_SCHEMA_KEYS) + ["extra"]),
    value=_JSON_VALUES,
    drop=st.booleans(),
)
def test_read_event_agrees_with_decode_event(name: str, value: object, drop: bool) -> None:
    event = dict(one(FULL_TRACK, source_id="src"))
    if drop:
        event.pop(name, None)
    else:
        event[name] = value
    data = encode_event(event)
    try:
        expected = decode_event(data)
    except InvalidEvent as exc:
        with pytest.raises(InvalidEvent) as got:
            read_event(data)
        assert str(got.value) == str(exc)
        return
    stored = read_event(data)
    assert stored.fields == expected
    assert (stored.message_id, stored.user) == (expected["messageId"], user_key(expected))


def test_read_event_keeps_the_bytes_and_what_the_worker_needs() -> None:
    anonymous = one(track(anonymousId="a-1", messageId="m-9"), source_id="src")
    known = one(track(userId="u-1"), source_id="src")
    for event in (FULL_TRACK_DECODED := one(FULL_TRACK, source_id="src"), anonymous, known):
        data = encode_event(event)
        stored = read_event(data)
        assert stored.data is data
        assert stored.fields == event == decode_event(data)
        assert (stored.message_id, stored.connection_id) == (event["messageId"], "src")
        assert stored.user == krenalis.events.user_key(event)
        assert stored.received_at == event["receivedAt"]
    assert read_event(encode_event(anonymous)).user == "a-1"
    assert FULL_TRACK_DECODED["messageId"] == "m-1"


def test_stored_event_of_an_object_is_unchecked() -> None:
    odd = StoredEvent.of({"messageId": 7, "userId": "u"})
    assert (odd.message_id, odd.user, odd.received_at) == ("", "u", "")
    assert msgspec.json.decode(odd.data) == odd.fields == {"messageId": 7, "userId": "u"}


def test_exported_members() -> None:
    exported = set(krenalis.events.__all__)
    assert exported == {
        "EVENT_TYPES",
        "MAX_BATCH_EVENTS",
        "MAX_BODY_BYTES",
        "MAX_DEPTH",
        "MAX_EVENT_BYTES",
        "MAX_ID_LENGTH",
        "DecodedRequest",
        "ParsedRequest",
        "Rejection",
        "StoredEvent",
        "build_events",
        "decode_event",
        "decode_request",
        "encode_event",
        "parse_request",
        "read_event",
        "user_key",
    }
    assert all(hasattr(krenalis.events, name) for name in exported)
    assert krenalis.events.EVENT_TYPES == ("track", "page", "screen", "identify", "group", "alias")
    assert (krenalis.events.MAX_BODY_BYTES, krenalis.events.MAX_EVENT_BYTES) == (512_000, 32_768)
    assert (krenalis.events.MAX_DEPTH, krenalis.events.MAX_ID_LENGTH) == (64, 255)


def test_every_published_event_decodes() -> None:
    events = decode([FULL_TRACK, track(), track(context={"ip": "255.255.0.0"})]).events
    for event in events:
        assert decode_event(encode_event(event)) == event
