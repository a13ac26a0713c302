"""The event model: request decoding, validation, enrichment and the stream's wire form."""

from __future__ import annotations

from .decode import (
    EVENT_TYPES,
    MAX_BATCH_EVENTS,
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_EVENT_BYTES,
    DecodedRequest,
    ParsedRequest,
    Rejection,
    build_events,
    decode_request,
    parse_request,
)
from .users import MAX_ID_LENGTH, user_key
from .wire import StoredEvent, decode_event, encode_event, read_event

__all__ = [
    "EVENT_TYPES",
    "MAX_BATCH_EVENTS",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_ID_LENGTH",
    "MAX_EVENT_BYTES",
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
]
