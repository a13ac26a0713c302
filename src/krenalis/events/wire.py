"""The stream's wire form of an event: what the collector publishes and a worker reads back.

`build_events` (decode.py) makes the wire form; `encode_event` writes it to the stream and
`decode_event` checks, on the consumer side, that bytes read back are one.
"""

from __future__ import annotations

import msgspec

from krenalis.errors import InvalidEvent

from .event import EVENT_TYPES
from .jsontext import JSON_ERRORS, json_error_detail

__all__ = ["decode_event", "encode_event"]

_decode_json = msgspec.json.Decoder().decode
_encode_json = msgspec.json.Encoder().encode


def encode_event(event: dict) -> bytes:
    """Serialise an event (wire form) to compact JSON bytes for the stream."""
    return _encode_json(event)


# Consumer-side checks: the wire form written by decode_request.
_SCHEMA_KEYS = frozenset(
    (
        "connectionId",
        "anonymousId",
        "channel",
        "category",
        "context",
        "event",
        "groupId",
        "messageId",
        "name",
        "properties",
        "receivedAt",
        "sentAt",
        "originalTimestamp",
        "timestamp",
        "traits",
        "type",
        "previousId",
        "userId",
    )
)
_REQUIRED_STRINGS = (
    "connectionId",
    "anonymousId",
    "messageId",
    "receivedAt",
    "sentAt",
    "originalTimestamp",
    "timestamp",
    "type",
)
_OPTIONAL_STRINGS = ("channel", "category", "event", "groupId", "name", "previousId", "userId")


def decode_event(data: bytes) -> dict:
    """Parse an event read from the stream; raise InvalidEvent if it is not a valid event."""
    try:
        event = _decode_json(data)
    except JSON_ERRORS as exc:
        raise InvalidEvent(f"event is not valid JSON: {json_error_detail(exc)}") from None
    if type(event) is not dict:
        raise InvalidEvent("event is not a JSON object")
    unknown = event.keys() - _SCHEMA_KEYS
    if unknown:
        raise InvalidEvent(f"event has the unknown property '{min(unknown)}'")
    for name in _REQUIRED_STRINGS:
        if type(event.get(name)) is not str:
            raise InvalidEvent(f"event property '{name}' is missing or not a string")
    for name in _OPTIONAL_STRINGS:
        if name in event and type(event[name]) is not str:
            raise InvalidEvent(f"event property '{name}' is not a string")
    if event["type"] not in EVENT_TYPES:
        raise InvalidEvent(f"event type '{event['type']}' is not valid")
    if type(event.get("traits")) is not dict:
        raise InvalidEvent("event property 'traits' is missing or not an object")
    for name in ("properties", "context"):
        if name in event and type(event[name]) is not dict:
            raise InvalidEvent(f"event property '{name}' is not an object")
    return event
