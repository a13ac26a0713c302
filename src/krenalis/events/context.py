"""The event context: typed sections, consents, session, locale, and the batch default merge.

Values are JSON values decoded by msgspec (dict, list, str, int, float, bool, None). Empty strings,
zero numbers and false booleans inside sections are dropped, and so is a section left empty:
they carry nothing, and the warehouse stores NULL for them. Unknown keys are skipped. Errors
raise EventError naming the property, as the client sees it in the answer's "rejected".
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from krenalis.errors import EventError

from .locales import normalize_locale

__all__ = ["SECTIONS", "campaign_from_url", "decode_context", "merge_context"]

# Kinds of section properties.
STRING, BOOLEAN, FLOAT, INT16, INT64, DECIMAL = "s", "b", "f", "i16", "i64", "d"

SECTIONS: dict[str, dict[str, str]] = {
    "app": {"name": STRING, "version": STRING, "build": STRING, "namespace": STRING},
    "browser": {"name": STRING, "version": STRING},
    "campaign": {
        "name": STRING,
        "source": STRING,
        "medium": STRING,
        "term": STRING,
        "content": STRING,
    },
    "device": {
        "id": STRING,
        "advertisingId": STRING,
        "adTrackingEnabled": BOOLEAN,
        "manufacturer": STRING,
        "model": STRING,
        "name": STRING,
        "type": STRING,
        "token": STRING,
    },
    "library": {"name": STRING, "version": STRING},
    "location": {
        "city": STRING,
        "country": STRING,
        "latitude": FLOAT,
        "longitude": FLOAT,
        "speed": FLOAT,
    },
    "network": {"bluetooth": BOOLEAN, "carrier": STRING, "cellular": BOOLEAN, "wifi": BOOLEAN},
    "os": {"name": STRING, "version": STRING},
    "page": {"path": STRING, "referrer": STRING, "search": STRING, "title": STRING, "url": STRING},
    "referrer": {"id": STRING, "type": STRING},
    "screen": {"width": INT16, "height": INT16, "density": DECIMAL},
    "session": {"id": INT64, "start": BOOLEAN},
}

# A page URL's query parameters -> context.campaign keys, as Segment's and RudderStack's
# browser SDKs map them (utm_campaign is the campaign's name).
_UTM = {
    "utm_campaign": "name",
    "utm_source": "source",
    "utm_medium": "medium",
    "utm_term": "term",
    "utm_content": "content",
}

# Top-level context strings. "groupId" is read (and type-checked) but is not in the event schema.
_STRINGS = frozenset(("ip", "locale", "groupId", "timezone", "userAgent"))
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def decode_context(raw: dict) -> dict:
    """Decode a raw context object into its schema form (top-level "traits" kept for the caller)."""
    context: dict = {}
    session_id = session_start = None
    for key, value in raw.items():
        spec = SECTIONS.get(key)
        if spec is not None:
            section = _section(key, spec, value)
            if section:
                context[key] = section
        elif key in _STRINGS:
            if type(value) is not str:
                raise EventError(f"property 'context.{key}' is not a valid string")
            if key == "locale":
                value = normalize_locale(value)
            if value and key != "groupId":
                context[key] = value
        elif key == "traits":
            if value is not None:
                if type(value) is not dict:
                    raise EventError("property 'context.traits' is not a valid object")
                context["traits"] = value
        elif key == "consents":
            consents = _consents(value)
            if consents:
                context["consents"] = consents
        elif key == "sessionId":
            session_id = _session_id(value)
        elif key == "sessionStart" or key == "direct":
            if type(value) is not bool:
                raise EventError(f"property 'context.{key}' is not a valid boolean")
            if key == "sessionStart":
                session_start = value
        # "direct" and unknown keys are not in the event schema: skipped.
    if session_id is not None or session_start:
        _set_session(context, session_id, session_start)
    return context


def _set_session(context: dict, session_id: int | None, start: bool | None) -> None:
    """Apply the Segment-style sessionId/sessionStart keys onto context.session."""
    session = dict(context.get("session", ()))
    if session_id is not None:
        session["id"] = session_id
    if start:
        session["start"] = True
    context["session"] = session


def _session_id(value: object) -> int:
    if type(value) is float:
        raise EventError("property 'context.sessionId' is not a 64-bit integer")
    if type(value) is not int:
        raise EventError("property 'context.sessionId' is not a valid number")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise EventError("property 'context.sessionId' is not a 64-bit integer")
    return value


def _consents(value: object) -> dict:
    if type(value) is not dict:
        raise EventError("property 'context.consents' is not a valid object")
    for purpose, granted in value.items():
        if not purpose:
            raise EventError("property 'context.consents' contains an empty purpose")
        if type(granted) is not bool:
            raise EventError(f"value of \"{purpose}\" in 'context.consents' is not a valid boolean")
    return value


def _section(name: str, spec: dict[str, str], value: object) -> dict:
    if type(value) is not dict:
        raise EventError(f"property 'context.{name}' is not a valid object")
    section = {}
    for key, item in value.items():
        kind = spec.get(key)
        if kind is None:
            continue
        if kind is STRING:
            if type(item) is not str:
                raise EventError(f"property 'context.{name}.{key}' is not a string")
            if item:
                section[key] = item
            continue
        item = _typed(name, key, kind, item)
        if item:
            section[key] = item
    if name == "screen" and section:
        _check_screen(section)
    return section


def _typed(name: str, key: str, kind: str, item: object) -> object:
    """Check a non-string section value; a falsy result means "drop it"."""
    if kind is BOOLEAN:
        if type(item) is not bool:
            raise EventError(f"property 'context.{name}.{key}' is not a boolean")
        return item
    if type(item) is not int and type(item) is not float:
        raise EventError(f"property 'context.{name}.{key}' is not a number")
    if kind is INT16 or kind is INT64:
        if type(item) is float or not _INT64_MIN <= item <= _INT64_MAX:
            bits = 16 if kind is INT16 else 64
            raise EventError(f"property 'context.{name}.{key}' is not a valid {bits}-bit integer")
        return item
    try:
        number = float(item)
    except OverflowError:  # an integer too large for a float
        raise EventError(
            f"property 'context.{name}.{key}' is not a valid 64-bit floating-point number"
        ) from None
    if kind is DECIMAL:
        # decimal(3,2): two decimals are kept, one digit before the point.
        number = round(number, 2)
        if not -10 < number < 10:
            raise EventError(f"property 'context.{name}.{key}' exceeds the allowed precision of 3")
    return number


def _check_screen(screen: dict) -> None:
    for key in ("width", "height"):
        size = screen.get(key)
        if size is not None and not 1 <= size <= 32767:
            raise EventError(f"screen {key} value is outside the allowed range [1, 32767]")
    density = screen.get("density")
    if density is not None and density <= 0:
        raise EventError("screen density value must be a positive number")


def merge_context(context: dict, default: dict) -> dict:
    """Merge the batch default context into an event context: event keys win, sections merge.

    Section dicts taken from the default are copied, because later steps change them per event.
    """
    for key, value in default.items():
        own = context.get(key)
        if own is None:
            context[key] = dict(value) if type(value) is dict else value
        elif key in SECTIONS:
            context[key] = {**value, **own}
    return context


def campaign_from_url(url: str | None) -> dict[str, str]:
    """context.campaign from the utm_* parameters of a page URL; empty when it has none."""
    if not url or "utm_" not in url:  # the common case costs one substring search
        return {}
    try:
        query = urlsplit(url).query
    except ValueError:  # an unreadable URL (a bad IPv6 literal...) has no campaign to read
        return {}
    campaign = {}
    for name, value in parse_qsl(query):
        key = _UTM.get(name.lower())
        if key is not None and value and key not in campaign:
            campaign[key] = value
    return campaign
