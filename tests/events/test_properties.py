"""Property tests: for any body, decode_request answers or raises RequestError, nothing else."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from krenalis.errors import RequestError
from krenalis.events import EVENT_TYPES, decode_event, encode_event

from ._helpers import decode

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)

# Values that look like events, so that generation reaches the deeper rules.
keys = st.sampled_from(
    [
        "type", "event", "anonymousId", "userId", "messageId", "timestamp", "sentAt",
        "originalTimestamp", "properties", "traits", "context", "name", "category", "groupId",
        "previousId", "channel", "batch", "writeKey", "connectionId",
    ]
)  # fmt: skip
context_keys = st.sampled_from(
    [
        "ip", "locale", "userAgent", "sessionId", "sessionStart", "consents", "traits", "screen",
        "browser", "os", "app", "location", "session", "direct", "groupId", "timezone",
    ]
)  # fmt: skip
scalars = (
    st.sampled_from(EVENT_TYPES)
    | st.sampled_from(["2026-11-26T05:29:02.123Z", "0001-01-01T00:00:00Z", "255.255.0.0", "en"])
    | json_values
)
contexts = st.dictionaries(context_keys, scalars | st.dictionaries(st.text(max_size=8), scalars))
events = st.dictionaries(keys, scalars | contexts, max_size=8)


def check(body: bytes, event_type: str | None = None) -> None:
    try:
        decoded = decode(body, event_type=event_type)
    except RequestError as exc:
        assert exc.message is not None
        return
    for event in decoded.events:
        assert decode_event(encode_event(event)) == event


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(body: bytes) -> None:
    check(body)


@settings(max_examples=300)
@given(json_values, st.sampled_from([None, *EVENT_TYPES]))
def test_arbitrary_json_values(value: object, event_type: str | None) -> None:
    check(msgspec.json.encode(value), event_type)


@settings(max_examples=500)
@given(st.lists(events, min_size=1, max_size=5) | events | st.builds(dict, batch=st.lists(events)))
def test_event_like_values(value: object) -> None:
    check(msgspec.json.encode(value))
