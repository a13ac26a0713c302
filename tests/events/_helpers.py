"""Small helpers shared by the event tests."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from krenalis.events import DecodedRequest, decode_request

RECEIVED_AT = datetime(2026, 11, 26, 5, 29, 2, 123456, tzinfo=UTC)
RECEIVED_AT_TEXT = "2026-11-26T05:29:02.123Z"
REMOTE_IP = "203.0.113.7"


def decode(body: object, **options: object) -> DecodedRequest:
    """Decode a request body (bytes, or any value encoded to JSON first)."""
    if not isinstance(body, bytes):
        body = msgspec.json.encode(body)
    options.setdefault("event_type", None)
    options.setdefault("received_at", RECEIVED_AT)
    options.setdefault("remote_ip", REMOTE_IP)
    return decode_request(body, **options)


def track(**fields: object) -> dict:
    """A minimal valid track event, with fields added or replaced."""
    return {"type": "track", "event": "Signed Up", "anonymousId": "anon-1", **fields}


def one(event: dict, **options: object) -> dict:
    """Decode a one-event batch that must be valid; return the event."""
    decoded = decode([event], **options)
    assert decoded.rejected == []
    return decoded.events[0]


def reason(event: object, **options: object) -> str:
    """Decode a one-event batch that must be rejected; return the reason."""
    decoded = decode([event], **options)
    assert decoded.events == []
    assert [r.index for r in decoded.rejected] == [0]
    return decoded.rejected[0].reason
