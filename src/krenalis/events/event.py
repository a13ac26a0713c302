"""One event: validation and enrichment of a decoded JSON object into its wire form."""

from __future__ import annotations

import uuid
from datetime import datetime

from krenalis.errors import EventError

from .context import decode_context, merge_context
from .ip import ClientAddress
from .timestamps import format_timestamp, is_wire_form, parse_timestamp
from .useragent import normalize_browser, normalize_os, parse_user_agent

__all__ = ["EVENT_TYPES", "RequestState", "build_event"]

EVENT_TYPES = ("track", "page", "screen", "identify", "group", "alias")
_TYPES = frozenset(EVENT_TYPES)

# String properties: for the first group JSON null means "absent", for the second it is an error.
_NULLABLE = (
    "anonymousId",
    "category",
    "groupId",
    "messageId",
    "originalTimestamp",
    "timestamp",
    "userId",
)
_NOT_NULL = ("channel", "event", "name", "sentAt", "type", "previousId")
_MISSING = object()

# Per-type permissions: property -> (types where it is required, types where it is allowed).
_PERMISSIONS = (
    ("category", frozenset(), frozenset(("page",))),
    ("event", frozenset(("track",)), frozenset(("track",))),
    ("groupId", frozenset(("group",)), frozenset(("group",))),
    ("name", frozenset(), frozenset(("page", "screen"))),
    ("previousId", frozenset(("alias",)), frozenset(("alias",))),
)
_WITH_PROPERTIES = frozenset(("page", "screen", "track"))
_WITH_TRAITS = frozenset(("identify", "group"))
_MAX_MESSAGE_ID = 100  # Segment: messageId must be "fewer than 100 characters"


class RequestState:
    """What every event of one request shares."""

    __slots__ = (
        "connection_id",
        "default_type",
        "missing_type_error",
        "received_at",
        "received_at_text",
        "sent_at",
        "sent_at_text",
        "skew",
        "default_context",
        "address",
        "fallback_to_request_ip",
    )

    def __init__(
        self,
        *,
        connection_id: str,
        default_type: str | None,
        missing_type_error: str,
        received_at: datetime,
        sent_at: datetime,
        default_context: dict | None,
        address: ClientAddress,
        fallback_to_request_ip: bool,
    ) -> None:
        self.connection_id = connection_id
        self.default_type = default_type
        self.missing_type_error = missing_type_error
        self.received_at = received_at
        self.received_at_text = format_timestamp(received_at)
        self.sent_at = sent_at
        self.sent_at_text = format_timestamp(sent_at)
        self.skew = received_at - sent_at
        self.default_context = default_context
        self.address = address
        self.fallback_to_request_ip = fallback_to_request_ip


def _article(event_type: str) -> str:
    return "an" if event_type in ("identify", "alias") else "a"


def _strings(raw: dict) -> dict[str, str]:
    """The string properties of an event, type-checked; empty strings are absent."""
    values = {}
    get = raw.get
    for name in _NULLABLE:
        value = get(name)
        if value is not None:
            if type(value) is not str:
                raise EventError(f"property '{name}' is not a valid string")
            if value:
                values[name] = value
    for name in _NOT_NULL:
        value = get(name, _MISSING)
        if value is not _MISSING:
            if type(value) is not str:
                raise EventError(f"property '{name}' is not a valid string")
            if value:
                values[name] = value
    return values


def _event_type(strings: dict[str, str], state: RequestState) -> str:
    event_type = strings.get("type")
    if event_type is None:
        if state.default_type is None:
            raise EventError(state.missing_type_error)
        return state.default_type
    if event_type not in _TYPES:
        raise EventError("property 'type' is not a valid event type")
    return event_type


def _check_permissions(strings: dict[str, str], event_type: str) -> None:
    for name, required_for, allowed_for in _PERMISSIONS:
        if name in strings:
            if event_type not in allowed_for:
                article = _article(event_type)
                raise EventError(
                    f"property '{name}' is not permitted for {article} {event_type} event"
                )
        elif event_type in required_for:
            raise EventError(
                f"property '{name}' is required for {_article(event_type)} {event_type} event"
            )


def _object(raw: dict, name: str) -> dict | None:
    value = raw.get(name)
    if value is not None and type(value) is not dict:
        raise EventError(f"property '{name}' is not a valid object")
    return value


def _identity(strings: dict[str, str], event_type: str) -> tuple[str, str | None]:
    anonymous_id = strings.get("anonymousId")
    user_id = strings.get("userId")
    if anonymous_id is None:
        if user_id is None:
            if event_type == "identify" or event_type == "alias":
                raise EventError(f"property 'userId' is required for an {event_type} event")
            raise EventError(
                f"either 'anonymousId' or 'userId' properties are required for a {event_type} event"
            )
        anonymous_id = str(uuid.uuid4())
    return anonymous_id, user_id


def _timestamps(strings: dict[str, str], state: RequestState) -> tuple[str, str, str]:
    """Return (sentAt, originalTimestamp, timestamp) in wire form, correcting clock skew.

    With only "timestamp", it is the client clock: originalTimestamp keeps it and timestamp is
    moved by (receivedAt - sentAt), Segment's skew correction.
    """
    sent_text = strings.get("sentAt")
    if sent_text is None:
        sent_at_text, skew = state.sent_at_text, state.skew
    else:
        sent_at = _parse(sent_text, "sentAt")
        sent_at_text, skew = _wire(sent_text, sent_at), state.received_at - sent_at
    original_text = strings.get("originalTimestamp")
    timestamp_text = strings.get("timestamp")
    if original_text is not None:
        if timestamp_text is None:
            raise EventError(
                "property 'timestamp' is required if the property 'originalTimestamp' is present"
            )
        original = _wire(original_text, _parse(original_text, "originalTimestamp"))
        return sent_at_text, original, _wire(timestamp_text, _parse(timestamp_text, "timestamp"))
    if timestamp_text is None:
        return sent_at_text, state.received_at_text, state.received_at_text
    timestamp = _parse(timestamp_text, "timestamp")
    try:
        corrected = format_timestamp(timestamp + skew) if skew else None
    except OverflowError:  # the corrected year left 1..9999
        corrected = state.received_at_text
    original = _wire(timestamp_text, timestamp)
    return sent_at_text, original, corrected or original


def _wire(text: str, value: datetime) -> str:
    return text if is_wire_form(text) else format_timestamp(value)


def _parse(text: str, name: str) -> datetime:
    try:
        return parse_timestamp(text, name)
    except ValueError as exc:
        raise EventError(str(exc)) from None


def _context(raw: dict, state: RequestState) -> dict:
    """Decode, merge and enrich the event context (browser, OS, IP)."""
    raw_context = raw.get("context", _MISSING)
    if raw_context is _MISSING:
        context = {}
    elif type(raw_context) is dict:
        context = decode_context(raw_context)
    else:
        raise EventError("property 'context' is not a valid object")
    if state.default_context:
        merge_context(context, state.default_context)
    browser = context.get("browser")
    if browser is not None:
        normalize_browser(browser)
    os = context.get("os")
    if os is not None:
        normalize_os(os)
    user_agent = context.get("userAgent")
    if user_agent is not None and (browser is None or os is None):
        parsed_browser, parsed_os = parse_user_agent(user_agent)
        if browser is None:
            context["browser"] = parsed_browser
        if os is None:
            context["os"] = parsed_os
    ip = context.get("ip")
    if ip is not None:
        resolved = state.address.resolve(ip)
        if resolved is None:
            del context["ip"]
        else:
            context["ip"] = resolved
    elif state.fallback_to_request_ip:
        context["ip"] = state.address.full
    return context


def build_event(raw: dict, state: RequestState) -> dict:
    """Validate and enrich one decoded event object; raise EventError with the reason."""
    strings = _strings(raw)
    event_type = _event_type(strings, state)
    anonymous_id, user_id = _identity(strings, event_type)
    _check_permissions(strings, event_type)
    message_id = strings.get("messageId")
    if message_id is None:
        message_id = "krenalis-" + str(uuid.uuid4())
    elif len(message_id) >= _MAX_MESSAGE_ID:
        raise EventError("property 'messageId' must be fewer than 100 characters")
    properties = _object(raw, "properties")
    if event_type in _WITH_PROPERTIES:
        properties = {} if properties is None else properties
    elif properties is not None:
        raise EventError(
            f"property 'properties' is not permitted for {_article(event_type)} {event_type} event"
        )
    traits = _object(raw, "traits")
    context = _context(raw, state)
    context_traits = context.pop("traits", None)
    if event_type not in _WITH_TRAITS:
        if traits is not None:
            raise EventError(
                "property 'traits' must be specified as 'context.traits' for "
                f"{_article(event_type)} {event_type} event"
            )
        traits = context_traits
    sent_at, original_timestamp, timestamp = _timestamps(strings, state)

    # Keys in the schema's order; absent optional keys are omitted.
    event = {"connectionId": state.connection_id, "anonymousId": anonymous_id}
    for name in ("channel", "category"):
        if name in strings:
            event[name] = strings[name]
    if context:
        event["context"] = context
    for name in ("event", "groupId"):
        if name in strings:
            event[name] = strings[name]
    event["messageId"] = message_id
    if "name" in strings:
        event["name"] = strings["name"]
    if properties is not None:
        event["properties"] = properties
    event["receivedAt"] = state.received_at_text
    event["sentAt"] = sent_at
    event["originalTimestamp"] = original_timestamp
    event["timestamp"] = timestamp
    event["traits"] = {} if traits is None else traits
    event["type"] = event_type
    if "previousId" in strings:
        event["previousId"] = strings["previousId"]
    if user_id is not None:
        event["userId"] = user_id
    return event
