"""Request decoding: from an HTTP body to validated, enriched events ready for the stream.

Bad input costs only itself. The whole body is decoded at once (the fast path); only when the
decoder refuses it does the slow path run, and it refuses the request only when the body is not
JSON at all or its top is not an object or array:

- a lone UTF-16 surrogate escape ("\\ud83d": JavaScript cut an emoji in half) becomes U+FFFD,
  as Go's encoding/json decodes it;
- nesting deeper than the decoder can go (about 1,000 levels) is cut at 100 levels, and the event
  that held it is rejected as nested more than 64 levels (event.py, `MAX_DEPTH`);
- then, if the body still cannot be decoded as a whole (a number out of range such as 1e400, a
  string that is not UTF-8), each event is decoded alone, and one that cannot be is rejected
  alone with the decoder's reason.

The slow path costs a few regular-expression passes and, when nesting must be cut, one loop
over the bytes: a 500 KiB body built to be slow costs up to about 8 times the CPU of 500 KiB of
good events (80 against 10 ms on a 2-core VM; tests/events/bench_decode.py).

Duplicate JSON keys: msgspec keeps the last value of a repeated key, and so do we. Refusing them
("property '<n>' is specified multiple times", as Krenalis's Go implementation does) would need a
token-level parser in Python on the hot path, which costs far more than the check is worth.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import msgspec

from krenalis.errors import EventError, RequestError

from .envelope import BATCH_NOT_ARRAY, Envelope
from .event import EVENT_TYPES, MAX_DEPTH, RequestState, build_event
from .ip import client_address
from .jsontext import (
    JSON_ERRORS,
    cut_deep_nesting,
    json_error_detail,
    may_hold_nul,
    replace_lone_surrogates,
)
from .timestamps import to_utc

__all__ = [
    "EVENT_TYPES",
    "MAX_BATCH_EVENTS",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "DecodedRequest",
    "ParsedRequest",
    "Rejection",
    "build_events",
    "decode_request",
    "parse_request",
]

MAX_BODY_BYTES = 500 * 1024  # request body limit (after decompression), enforced by the collector
MAX_EVENT_BYTES = 32 * 1024  # limit on the size of one event's JSON in the request
MAX_BATCH_EVENTS = 20_000

_BATCH_TYPE_MISSING = "property 'type' is required for a batch request"
_SINGLE_TYPE_MISSING = "property 'type' is required for a single-event request"
_WHITESPACE = b" \t\r\n"
# Nesting is cut at this level on the slow path: above MAX_DEPTH plus the envelope's two
# levels (so a cut value is still too deep for its event), far below the decoder's limit.
_CUT_LEVEL = 100
_NOT_DECODED = object()
_KINDS = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}

_decode_json = msgspec.json.Decoder().decode


class _BatchSpans(msgspec.Struct):
    """Second look at an envelope, only to learn the size in bytes of each event."""

    batch: list[msgspec.Raw]


_decode_spans = msgspec.json.Decoder(list[msgspec.Raw]).decode
_decode_envelope_spans = msgspec.json.Decoder(_BatchSpans).decode
_decode_top = msgspec.json.Decoder(dict[str, msgspec.Raw] | list[msgspec.Raw]).decode
_AUTH_FIELDS = ("writeKey", "connectionId")
_ENVELOPE_FIELDS = ("writeKey", "connectionId", "context", "sentAt")


@dataclass
class Rejection:
    """An event of the request that was refused, and why."""

    index: int  # position in the batch (0 for a single event)
    reason: str


@dataclass
class DecodedRequest:
    """The outcome of decoding a request body."""

    events: list[dict]  # valid, enriched events in wire form, ready to publish
    rejected: list[Rejection]
    write_key: str | None  # the body's "writeKey", None if absent
    connection_id: str | None = None  # the body's "connectionId" (API-key auth)


def _not_json(exc: Exception) -> RequestError:
    return RequestError(f"error parsing the request body as JSON: {json_error_detail(exc)}")


class _Undecodable:
    """An event the decoder refused, in place of its value: rejected alone, with the reason."""

    __slots__ = ("reason",)

    def __init__(self, exc: Exception) -> None:
        self.reason = f"event cannot be decoded: {json_error_detail(exc)}"


_Split = tuple[list, "list[int] | None", "Envelope", str]


def _split(parsed: object, body: bytes, event_type: str | None) -> _Split:
    """The events of a body, their sizes (None when all are small), envelope, missing-type text."""
    if event_type is not None:
        # A typed endpoint's body is one event; a non-object is rejected as that event (with a
        # reason in "rejected"), not as a malformed request.
        envelope = Envelope(parsed if type(parsed) is dict else {}, auth_only=True)
        return [parsed], _single_size(body), envelope, _SINGLE_TYPE_MISSING
    if type(parsed) is list:
        _check_count(len(parsed))
        sizes = _batch_sizes(body, parsed, _decode_spans)
        return parsed, sizes, Envelope({}, auth_only=True), _BATCH_TYPE_MISSING
    if type(parsed) is not dict:
        raise RequestError("request's content is not a valid JSON object or array")
    envelope = Envelope(parsed, auth_only=False)
    if envelope.batch is None:
        return [parsed], _single_size(body), envelope, _SINGLE_TYPE_MISSING
    _check_count(len(envelope.batch))
    sizes = _batch_sizes(body, envelope.batch, _decode_envelope_spans)
    return envelope.batch, sizes, envelope, _BATCH_TYPE_MISSING


def _split_slowly(body: bytes, event_type: str | None) -> _Split:
    """_split for a body the decoder refused: lone surrogates become U+FFFD, nesting too deep
    for the decoder is cut, and if the body still cannot be decoded whole, its events are
    decoded one by one."""
    body = replace_lone_surrogates(body)
    parsed = _NOT_DECODED
    try:
        parsed = _decode_json(body)
    except RecursionError:
        body = cut_deep_nesting(body, _CUT_LEVEL)
        with contextlib.suppress(*JSON_ERRORS):
            parsed = _decode_json(body)
    except JSON_ERRORS:
        pass
    if parsed is _NOT_DECODED:
        return _split_one_by_one(body, event_type)
    return _split(parsed, body, event_type)


def _split_one_by_one(body: bytes, event_type: str | None) -> _Split:
    """_split that decodes each event alone: an event that cannot be is rejected alone."""
    top, body = _top_values(body)
    if event_type is None and type(top) is list:
        _check_count(len(top))
        sizes = [len(raw) for raw in top]
        return _decode_each(top), sizes, Envelope({}, auth_only=True), _BATCH_TYPE_MISSING
    if event_type is None and type(top) is dict and "batch" in top:
        fields = _decode_fields(top, _ENVELOPE_FIELDS)
        try:
            batch = _decode_spans(top["batch"])
        except JSON_ERRORS:
            raise RequestError(BATCH_NOT_ARRAY) from None
        fields["batch"] = _decode_each(batch)
        envelope = Envelope(fields, auth_only=False)
        _check_count(len(batch))
        return envelope.batch, [len(raw) for raw in batch], envelope, _BATCH_TYPE_MISSING
    # The body is one event, and it cannot be decoded: rejected, once its sender is known.
    fields = _decode_fields(top, _AUTH_FIELDS) if type(top) is dict else {}
    return [_decode_item(body)], None, Envelope(fields, auth_only=True), _SINGLE_TYPE_MISSING


def _top_values(body: bytes) -> tuple[dict | list, bytes]:
    """The body's top object or array with its values undecoded, and the body (cut when it
    nests too deep for the decoder); RequestError when the body is not JSON."""
    try:
        try:
            return _decode_top(body), body
        except RecursionError:
            body = cut_deep_nesting(body, _CUT_LEVEL)
            return _decode_top(body), body
    except msgspec.ValidationError:  # JSON, but neither an object nor an array
        raise RequestError("request's content is not a valid JSON object or array") from None
    except JSON_ERRORS as exc:
        raise _not_json(exc) from None


def _decode_fields(values: dict[str, msgspec.Raw], names: tuple[str, ...]) -> dict:
    """The envelope properties `names` of a body's top object, decoded."""
    fields = {}
    for name in names:
        if name in values:
            try:
                fields[name] = _decode_json(values[name])
            except JSON_ERRORS as exc:
                raise RequestError(
                    f"property '{name}' cannot be decoded: {json_error_detail(exc)}"
                ) from None
    return fields


def _decode_each(values: list[msgspec.Raw]) -> list:
    return [_decode_item(value) for value in values]


def _decode_item(value: msgspec.Raw | bytes) -> object:
    try:
        return _decode_json(value)
    except JSON_ERRORS as exc:
        return _Undecodable(exc)


def _single_size(body: bytes) -> list[int] | None:
    return None if len(body) <= MAX_EVENT_BYTES else [len(body.strip(_WHITESPACE))]


def _batch_sizes(body: bytes, items: list, decode_spans: Callable) -> list[int] | None:
    """Byte size of each batch element, or None when no element can exceed the limit.

    Only bodies larger than the limit pay for this second, cheaper pass over the JSON.
    """
    if len(body) <= MAX_EVENT_BYTES:
        return None
    spans = decode_spans(body)
    spans = spans if type(spans) is list else spans.batch
    sizes = [len(span) for span in spans]
    return sizes if len(sizes) == len(items) else None


def _check_count(count: int) -> None:
    if count == 0:
        raise RequestError("batch must contain at least one event")
    if count > MAX_BATCH_EVENTS:
        raise RequestError("batch contains too many events")


@dataclass
class ParsedRequest:
    """A request body read as JSON, before its events are validated: enough to know who sent
    it (the body's write key) before doing the work of checking every event."""

    event_type: str | None
    items: list
    sizes: list[int] | None  # byte size of each item; None when none can be too large
    envelope: Envelope
    missing_type_error: str
    may_hold_nul: bool = True  # False when the body has no "\u0000": no event holds a NUL

    @property
    def write_key(self) -> str | None:
        return self.envelope.write_key


def parse_request(body: bytes, *, event_type: str | None) -> ParsedRequest:
    """Read a request body as JSON and split it into its events and envelope.

    event_type is the type of a typed endpoint (/v1/track, ...), whose body is one event; None
    for the generic endpoint, which takes a JSON array, a {"batch": [...]} envelope or a single
    event object. Raises RequestError when the whole request must be refused: the body is not
    JSON, its top is not an object or array, or its envelope is wrong. An event that cannot be
    decoded is no reason: build_events rejects it alone.
    """
    if event_type is not None and event_type not in EVENT_TYPES:
        raise RequestError("", status=404, code="NotFound")
    if not body:
        raise RequestError("request's body is empty")
    if len(body) > MAX_BODY_BYTES:
        raise RequestError("Request Entity Too Large", status=413, code="PayloadTooLarge")
    try:
        parsed = _decode_json(body)
    except JSON_ERRORS:
        split = _split_slowly(body, event_type)
    else:
        split = _split(parsed, body, event_type)
    items, sizes, envelope, missing_type = split
    return ParsedRequest(
        event_type, items, sizes, envelope, missing_type, may_hold_nul=may_hold_nul(body)
    )


def build_events(
    request: ParsedRequest,
    *,
    source_id: str,
    received_at: datetime,
    remote_ip: str,
    forwarded_for: str | None = None,
    fallback_to_request_ip: bool = True,
) -> DecodedRequest:
    """Validate and enrich the events of a parsed request into their final wire form, as sent
    by the source `source_id` (their connectionId); invalid ones are listed as rejections."""
    received_at = to_utc(received_at)
    envelope = request.envelope
    state = RequestState(
        connection_id=source_id,
        default_type=request.event_type,
        missing_type_error=request.missing_type_error,
        received_at=received_at,
        sent_at=envelope.sent_at or received_at,
        default_context=envelope.context,
        address=client_address(remote_ip, forwarded_for),
        fallback_to_request_ip=fallback_to_request_ip,
        check_nul=request.may_hold_nul,
    )
    events, rejected = _build_events(request.items, request.sizes, state)
    return DecodedRequest(
        events=events,
        rejected=rejected,
        write_key=envelope.write_key,
        connection_id=envelope.connection_id,
    )


def decode_request(
    body: bytes,
    *,
    event_type: str | None,
    received_at: datetime,
    remote_ip: str,
    forwarded_for: str | None = None,
    source_id: str = "",
    fallback_to_request_ip: bool = True,
) -> DecodedRequest:
    """parse_request, then build_events: a body straight to its valid events and rejections."""
    return build_events(
        parse_request(body, event_type=event_type),
        source_id=source_id,
        received_at=received_at,
        remote_ip=remote_ip,
        forwarded_for=forwarded_for,
        fallback_to_request_ip=fallback_to_request_ip,
    )


def _build_events(
    items: list, sizes: list[int] | None, state: RequestState
) -> tuple[list[dict], list[Rejection]]:
    events: list[dict] = []
    rejected: list[Rejection] = []
    append = events.append
    for index, item in enumerate(items):
        if type(item) is not dict:
            rejected.append(Rejection(index, _not_an_object(item)))
            continue
        if sizes is not None and sizes[index] > MAX_EVENT_BYTES:
            rejected.append(Rejection(index, f"event is larger than {MAX_EVENT_BYTES} bytes"))
            continue
        try:
            append(build_event(item, state))
        except EventError as exc:
            rejected.append(Rejection(index, str(exc)))
    return events, rejected


def _not_an_object(item: object) -> str:
    if type(item) is _Undecodable:
        return item.reason
    kind = _KINDS.get(type(item), "value")
    return f"expected an object for the event, but found {kind} instead"
