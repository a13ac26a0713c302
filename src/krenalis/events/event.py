"""One event: validation and enrichment of a decoded JSON object into its wire form.

Limits that keep a bad event from costing more than itself (each is a rejection of that event
alone, with its reason in the answer's "rejected"):

- Nesting: the values an event keeps as they came (properties, traits, context.traits) may nest
  objects and arrays down to `MAX_DEPTH` (64) levels, the event itself being level 1. A deeper
  one would reach every sink that encodes it again (the warehouse's JSON columns, the webhook's
  body). The other parts of an event are not stored, so their depth does not matter.
- Ids: anonymousId, userId, groupId and previousId are at most `MAX_ID_LENGTH` (255)
  characters (users.py says why); messageId fewer than 100, as Segment documents.
- NUL characters: PostgreSQL text cannot hold them and the warehouse strips them, so ids and
  keys that differ only by a NUL would become one (two events with one primary key, two
  properties with one name). An event with a NUL in an id or in a key of properties, traits or
  context.consents is rejected, naming it.

Campaign: a page URL's utm_* parameters fill context.campaign when the event has none (SDKs
that do not read them, pixels, hand-made requests); a campaign the SDK sent is kept as it is.

Timestamps (`_timestamps`): the client's clock gives originalTimestamp, and timestamp is it
corrected by the client's clock skew, as Segment does: timestamp = receivedAt - (sentAt -
originalTimestamp). A timestamp that would be more than `FUTURE_TOLERANCE` (1 minute) after
receivedAt, or before 2000-01-01 (`EARLIEST`), is a clock that is wrong, not an event from then:
timestamp is receivedAt and originalTimestamp keeps what the client sent.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec

from krenalis.errors import EventError

from .context import campaign_from_url, decode_context, merge_context
from .ip import ClientAddress
from .timestamps import format_timestamp, is_wire_form, parse_timestamp
from .useragent import normalize_browser, normalize_os, parse_user_agent
from .users import MAX_ID_LENGTH

__all__ = [
    "EARLIEST",
    "EVENT_TYPES",
    "FUTURE_TOLERANCE",
    "MAX_DEPTH",
    "RequestState",
    "build_event",
]

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
# category is Segment's for page; RudderStack's SDKs send it on screen too.
_PERMISSIONS = (
    ("category", frozenset(), frozenset(("page", "screen"))),
    ("event", frozenset(("track",)), frozenset(("track",))),
    ("groupId", frozenset(("group",)), frozenset(("group",))),
    ("name", frozenset(), frozenset(("page", "screen"))),
    ("previousId", frozenset(("alias",)), frozenset(("alias",))),
)
_WITH_PROPERTIES = frozenset(("page", "screen", "track"))
_WITH_TRAITS = frozenset(("identify", "group"))
_MAX_MESSAGE_ID = 100  # Segment: messageId must be "fewer than 100 characters"
_IDS = frozenset(("anonymousId", "userId", "groupId", "previousId"))
_NUL_FREE = ("anonymousId", "userId", "groupId", "previousId", "messageId")  # keys in a sink

MAX_DEPTH = 64  # levels of objects and arrays in an event, the event itself being the first
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # an earlier timestamp is a clock that was reset
FUTURE_TOLERANCE = timedelta(minutes=1)  # a later timestamp is a clock that runs ahead
_TOO_DEEP = f"event is nested more than {MAX_DEPTH} levels deep"
_CONTAINERS = frozenset((dict, list))


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
        "latest",
        "check_nul",
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
        check_nul: bool = True,
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
        self.latest = received_at + FUTURE_TOLERANCE  # the latest plausible timestamp
        # Whether an event may hold a NUL character: only a body with a "\u0000" escape can,
        # so the others skip the scan of their keys.
        self.check_nul = check_nul


def _article(event_type: str) -> str:
    return "an" if event_type in ("identify", "alias") else "a"


def _strings(raw: dict) -> dict[str, str]:
    """The string properties of an event, type-checked, ids not too long; empty strings are
    absent."""
    values = {}
    get = raw.get
    for name in _NULLABLE:
        value = get(name)
        if value is not None:
            if type(value) is not str:
                raise EventError(f"property '{name}' is not a valid string")
            if value:
                if len(value) > MAX_ID_LENGTH and name in _IDS:
                    raise EventError(_too_long(name))
                values[name] = value
    for name in _NOT_NULL:
        value = get(name, _MISSING)
        if value is not _MISSING:
            if type(value) is not str:
                raise EventError(f"property '{name}' is not a valid string")
            if value:
                if len(value) > MAX_ID_LENGTH and name in _IDS:
                    raise EventError(_too_long(name))
                values[name] = value
    return values


def _too_long(name: str) -> str:
    return f"property '{name}' is longer than {MAX_ID_LENGTH} characters"


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


def _check_nul(
    strings: dict[str, str], properties: dict | None, traits: dict | None, context: dict
) -> None:
    """No NUL character in ids, nor in the keys of the free-form values the event keeps."""
    for name in _NUL_FREE:
        if "\x00" in strings.get(name, ""):
            raise EventError(f"property '{name}' contains a NUL character")
    for name, value in (
        ("properties", properties),
        ("traits", traits),
        ("context.consents", context.get("consents")),
    ):
        key = _key_with_nul(value) if value else None
        if key is not None:
            shown = msgspec.json.encode(key).decode()  # the NUL as the client wrote it: \u0000
            raise EventError(f"property '{name}' has a key with a NUL character: {shown}")


def _deeper_than(value: dict | list, levels: int) -> bool:
    """Whether value, itself one level, nests objects or arrays more than `levels` deep."""
    # Recursion stops at `levels` (at most MAX_DEPTH), far from Python's limit.
    for item in value.values() if type(value) is dict else value:
        if type(item) in _CONTAINERS and (levels <= 1 or _deeper_than(item, levels - 1)):
            return True
    return False


def _key_with_nul(value: object) -> str | None:
    """The first key holding a NUL character in value's objects, at any level; None if none."""
    if type(value) is dict:
        for key, item in value.items():
            if "\x00" in key:
                return key
            found = _key_with_nul(item)
            if found is not None:
                return found
    elif type(value) is list:
        for item in value:
            found = _key_with_nul(item)
            if found is not None:
                return found
    return None


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

    The client's clock is "timestamp" (Segment's SDKs) or "originalTimestamp" (RudderStack's):
    originalTimestamp keeps it, and timestamp is it moved by (receivedAt - sentAt), Segment's
    skew correction; without sentAt there is nothing to correct by. With both, the event was
    corrected before (a replay, a relay): both are kept. Either way an implausible timestamp
    becomes receivedAt (module docstring).
    """
    sent_text = strings.get("sentAt")
    if sent_text is None:
        sent_at_text, skew = state.sent_at_text, state.skew
    else:
        sent_at = _parse(sent_text, "sentAt")
        sent_at_text, skew = _wire(sent_text, sent_at), state.received_at - sent_at
    original_text = strings.get("originalTimestamp")
    timestamp_text = strings.get("timestamp")
    if original_text is not None and timestamp_text is not None:
        original = _wire(original_text, _parse(original_text, "originalTimestamp"))
        timestamp = _parse(timestamp_text, "timestamp")
        if EARLIEST <= timestamp <= state.latest:
            return sent_at_text, original, _wire(timestamp_text, timestamp)
        return sent_at_text, original, state.received_at_text
    if timestamp_text is not None:
        client_text, client = timestamp_text, _parse(timestamp_text, "timestamp")
    elif original_text is not None:
        client_text, client = original_text, _parse(original_text, "originalTimestamp")
    else:
        return sent_at_text, state.received_at_text, state.received_at_text
    original = _wire(client_text, client)
    try:
        corrected = client + skew
    except OverflowError:  # the corrected year left 1..9999
        return sent_at_text, original, state.received_at_text
    if EARLIEST <= corrected <= state.latest:
        return sent_at_text, original, format_timestamp(corrected) if skew else original
    return sent_at_text, original, state.received_at_text


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
    if "campaign" not in context and "page" in context:
        campaign = campaign_from_url(context["page"].get("url"))
        if campaign:
            context["campaign"] = campaign
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
    # The free-form values the event keeps; properties and traits are level 2.
    if properties and _deeper_than(properties, MAX_DEPTH - 1):
        raise EventError(_TOO_DEEP)
    if traits and _deeper_than(traits, MAX_DEPTH - 1):
        raise EventError(_TOO_DEEP)
    if state.check_nul:
        _check_nul(strings, properties, traits, context)
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
