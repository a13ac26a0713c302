"""The stream's wire form of an event: what the collector publishes and a worker reads back.

`build_events` (decode.py) makes the wire form; `encode_event` writes it to the stream and
`decode_event` checks, on the consumer side, that bytes read back are one. A worker reads each
message with `read_event` instead: the same checks, and a :class:`StoredEvent` that keeps the
bytes, so a sink that can use them (the warehouse's rows, a webhook's body) never has the event
decoded to a dict and written back (bench/RESULTS.md, "Performance").
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from krenalis.errors import InvalidEvent

from .event import EVENT_TYPES
from .jsontext import JSON_ERRORS, json_error_detail
from .users import user_key

__all__ = [
    "OPTIONAL_OBJECTS",
    "OPTIONAL_STRINGS",
    "REQUIRED_OBJECTS",
    "REQUIRED_STRINGS",
    "StoredEvent",
    "decode_event",
    "encode_event",
    "read_event",
]

_decode_json = msgspec.json.Decoder().decode
_encode_json = msgspec.json.Encoder().encode


def encode_event(event: dict) -> bytes:
    """Serialise an event (wire form) to compact JSON bytes for the stream."""
    return _encode_json(event)


# Consumer-side checks: the wire form written by decode_request. These names make
# decode_event's checks, read_event's Struct (_Checked) and any reader that checks as it does
# (the warehouse's, which makes the row in the same pass: sinks/warehouse/rows.py).
REQUIRED_STRINGS = (
    "connectionId",
    "anonymousId",
    "messageId",
    "receivedAt",
    "sentAt",
    "originalTimestamp",
    "timestamp",
    "type",
)
OPTIONAL_STRINGS = ("channel", "category", "event", "groupId", "name", "previousId", "userId")
REQUIRED_OBJECTS = ("traits",)
OPTIONAL_OBJECTS = ("properties", "context")
_SCHEMA_KEYS = frozenset(REQUIRED_STRINGS + OPTIONAL_STRINGS + REQUIRED_OBJECTS + OPTIONAL_OBJECTS)


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
    for name in REQUIRED_STRINGS:
        if type(event.get(name)) is not str:
            raise InvalidEvent(f"event property '{name}' is missing or not a string")
    for name in OPTIONAL_STRINGS:
        if name in event and type(event[name]) is not str:
            raise InvalidEvent(f"event property '{name}' is not a string")
    if event["type"] not in EVENT_TYPES:
        raise InvalidEvent(f"event type '{event['type']}' is not valid")
    for name in REQUIRED_OBJECTS:
        if type(event.get(name)) is not dict:
            raise InvalidEvent(f"event property '{name}' is missing or not an object")
    for name in OPTIONAL_OBJECTS:
        if name in event and type(event[name]) is not dict:
            raise InvalidEvent(f"event property '{name}' is not an object")
    return event


class StoredEvent(msgspec.Struct, eq=False, gc=False):
    """An event as a worker holds it and a sink gets it: the wire form's bytes (``data``), the
    few values the worker needs, and the decoded object (``fields``), made when first asked.

    A Struct (compared by identity, as an object is) because one is made per message: msgspec
    builds it in C, 0.14 us against 0.96 for a class with ``__slots__`` and an ``__init__``.
    Not tracked by the garbage collector: what it holds never refers back to it."""

    data: bytes
    message_id: str
    connection_id: str
    #: The user whose events keep their order (:func:`krenalis.events.users.user_key`).
    user: str
    #: The wire form's receivedAt text (for the end-to-end latency).
    received_at: str
    _fields: dict[str, Any] | None = None

    @property
    def fields(self) -> dict[str, Any]:
        """The event as a JSON object (decoded once, on first use)."""
        if self._fields is None:
            self._fields = _decode_json(self.data)
        return self._fields

    @classmethod
    def of(cls, fields: dict[str, Any]) -> StoredEvent:
        """The stored form of an event given as an object, unchecked (a sink must still cope
        with what it cannot take: tests hand sinks odd events this way)."""
        return _from_fields(_encode_json(fields), fields)

    def __repr__(self) -> str:
        return f"StoredEvent({self.data!r})"


class _Object(msgspec.Struct, gc=False):
    """Any JSON object: decoding into it checks that the value is one and skips its members
    in C, without building them (nor copying their text, as ``bytes(Raw)`` would)."""


#: The wire form as :func:`decode_event` checks it, read in one pass: the objects are checked
#: to be objects and skipped. Not tracked by the garbage collector: it holds only texts.
_Checked = msgspec.defstruct(
    "_Checked",
    [
        *((name, str) for name in REQUIRED_STRINGS if name != "type"),
        ("type", Literal[EVENT_TYPES]),
        *((name, _Object) for name in REQUIRED_OBJECTS),
        *((name, _Object, msgspec.field(default_factory=_Object)) for name in OPTIONAL_OBJECTS),
        *((name, str, "") for name in OPTIONAL_STRINGS),
    ],
    forbid_unknown_fields=True,
    gc=False,
)
_read_checked = msgspec.json.Decoder(_Checked).decode


def read_event(data: bytes) -> StoredEvent:
    """The event in `data` (a message read from the stream), checked as :func:`decode_event`
    checks it; raise InvalidEvent with its reason if it is not a valid event."""
    try:
        # msgspec does not check the UTF-8 of what it skips; decode_event does (in C: cheap).
        if not data.isascii():
            data.decode()
        head = _read_checked(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        # Not sure: the careful check gives the reason (or finds the event fine after all).
        return _from_fields(data, decode_event(data))
    return StoredEvent(
        data,
        message_id=head.messageId,
        connection_id=head.connectionId,
        user=head.anonymousId or head.userId,
        received_at=head.receivedAt,
    )


def _from_fields(data: bytes, fields: dict[str, Any]) -> StoredEvent:
    def text(name: str) -> str:
        value = fields.get(name)
        return value if isinstance(value, str) else ""

    return StoredEvent(
        data,
        message_id=text("messageId"),
        connection_id=text("connectionId"),
        user=user_key(fields),
        received_at=text("receivedAt"),
        _fields=fields,
    )
