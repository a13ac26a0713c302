"""Per-event rules: types, string properties, identity, permissions, messageId, wire form."""

from __future__ import annotations

import uuid

import pytest

from krenalis.events import EVENT_TYPES

from ._helpers import RECEIVED_AT_TEXT, decode, one, reason, track

# A minimal valid event of each type.
VALID = {
    "track": {"type": "track", "event": "E", "anonymousId": "a"},
    "page": {"type": "page", "anonymousId": "a"},
    "screen": {"type": "screen", "anonymousId": "a"},
    "identify": {"type": "identify", "userId": "u"},
    "group": {"type": "group", "groupId": "g", "anonymousId": "a"},
    "alias": {"type": "alias", "userId": "u", "previousId": "p"},
}


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_each_type_has_a_valid_minimal_event(event_type: str) -> None:
    event = one(VALID[event_type])
    assert event["type"] == event_type
    assert event["traits"] == {}
    assert ("properties" in event) == (event_type in ("track", "page", "screen"))


def test_wire_form_of_a_minimal_event() -> None:
    event = one(track(), source_id="src-1", fallback_to_request_ip=False)
    message_id = event.pop("messageId")
    assert message_id.startswith("krenalis-")
    assert event == {
        "connectionId": "src-1",
        "anonymousId": "anon-1",
        "event": "Signed Up",
        "properties": {},
        "receivedAt": RECEIVED_AT_TEXT,
        "sentAt": RECEIVED_AT_TEXT,
        "originalTimestamp": RECEIVED_AT_TEXT,
        "timestamp": RECEIVED_AT_TEXT,
        "traits": {},
        "type": "track",
    }


def test_unknown_keys_and_client_connection_id_are_dropped() -> None:
    event = one(track(integrations={"All": False}, connectionId="evil", kpid="x"), source_id="s")
    assert "integrations" not in event and "kpid" not in event
    assert event["connectionId"] == "s"


def test_invalid_type() -> None:
    assert reason(track(type="purchase")) == "property 'type' is not a valid event type"


@pytest.mark.parametrize("name", ["channel", "event", "name", "sentAt", "type", "previousId"])
def test_null_is_an_error_for_some_strings(name: str) -> None:
    assert reason(track(**{name: None})) == f"property '{name}' is not a valid string"


@pytest.mark.parametrize("name", ["category", "groupId", "messageId", "originalTimestamp"])
def test_null_is_absent_for_other_strings(name: str) -> None:
    event = one(track(**{name: None}))  # accepted even where the property is not permitted
    assert None not in event.values()


@pytest.mark.parametrize("name", ["anonymousId", "userId", "channel", "messageId", "timestamp"])
def test_strings_must_be_strings(name: str) -> None:
    assert reason(track(**{name: 5})) == f"property '{name}' is not a valid string"


def test_empty_strings_are_absent() -> None:
    event = one(track(channel="", userId="", category=""))
    assert "channel" not in event and "userId" not in event and "category" not in event


def test_channel_is_kept() -> None:
    assert one(track(channel="server"))["channel"] == "server"


@pytest.mark.parametrize("event_type", ["identify", "alias"])
def test_identify_and_alias_need_a_user_id(event_type: str) -> None:
    event = {**VALID[event_type], "userId": None, "anonymousId": "a"}
    assert one(event)["anonymousId"] == "a"  # anonymousId alone is enough
    del event["anonymousId"]
    assert reason(event) == f"property 'userId' is required for an {event_type} event"


@pytest.mark.parametrize("event_type", ["track", "page", "screen", "group"])
def test_other_types_need_an_identity(event_type: str) -> None:
    event = {**VALID[event_type], "anonymousId": ""}
    assert reason(event) == (
        f"either 'anonymousId' or 'userId' properties are required for a {event_type} event"
    )


def test_anonymous_id_is_generated_per_event_when_only_user_id() -> None:
    decoded = decode([track(anonymousId=None, userId="u")] * 2)
    first, second = (e["anonymousId"] for e in decoded.events)
    assert first != second
    assert uuid.UUID(first).version == 4
    assert decoded.events[0]["userId"] == "u"


def test_message_id_is_generated_when_missing() -> None:
    decoded = decode([track(), track(messageId="")])
    ids = [e["messageId"] for e in decoded.events]
    assert ids[0] != ids[1]
    assert all(uuid.UUID(i.removeprefix("krenalis-")).version == 4 for i in ids)


def test_message_id_is_kept_and_limited_to_99_characters() -> None:
    assert one(track(messageId="m" * 99))["messageId"] == "m" * 99
    assert reason(track(messageId="m" * 100)) == (
        "property 'messageId' must be fewer than 100 characters"
    )


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("category", "c", ["page", "screen"]),
        ("name", "n", ["page", "screen"]),
        ("event", "e", ["track"]),
        ("groupId", "g", ["group"]),
        ("previousId", "p", ["alias"]),
    ],
)
def test_permissions(name: str, value: str, allowed: list[str]) -> None:
    for event_type, event in VALID.items():
        event = {**event, name: value}
        if event_type in allowed:
            assert one(event)[name] == value
        else:
            article = "an" if event_type in ("identify", "alias") else "a"
            assert (
                reason(event)
                == f"property '{name}' is not permitted for {article} {event_type} event"
            )


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"type": "track", "anonymousId": "a"}, "property 'event' is required for a track event"),
        ({"type": "group", "anonymousId": "a"}, "property 'groupId' is required for a group event"),
        ({"type": "alias", "userId": "u"}, "property 'previousId' is required for an alias event"),
    ],
)
def test_required_properties(event: dict, message: str) -> None:
    assert reason(event) == message


def test_properties_permissions() -> None:
    assert one(track(properties={"plan": "pro"}))["properties"] == {"plan": "pro"}
    assert one(track(properties=None))["properties"] == {}
    assert reason(track(properties=[1])) == "property 'properties' is not a valid object"
    identify = {**VALID["identify"], "properties": {}}
    assert reason(identify) == "property 'properties' is not permitted for an identify event"


def test_traits_for_identify_and_group() -> None:
    for event_type in ("identify", "group"):
        event = {**VALID[event_type], "traits": {"plan": "pro"}, "context": {"traits": {"x": 1}}}
        decoded = one(event)
        assert decoded["traits"] == {"plan": "pro"}
        assert "context" not in decoded or "traits" not in decoded["context"]
    assert reason({**VALID["identify"], "traits": "x"}) == "property 'traits' is not a valid object"


def test_other_types_take_traits_from_the_context() -> None:
    event = one(track(context={"traits": {"email": "a@example.com"}}))
    assert event["traits"] == {"email": "a@example.com"}
    assert "traits" not in event.get("context", {})
    assert one(track(traits=None))["traits"] == {}
    assert reason(track(traits={"a": 1})) == (
        "property 'traits' must be specified as 'context.traits' for a track event"
    )


def test_context_must_be_an_object() -> None:
    assert reason(track(context=5)) == "property 'context' is not a valid object"


def test_empty_context_is_removed() -> None:
    event = one(track(context={"app": {"name": ""}, "locale": "xx"}), fallback_to_request_ip=False)
    assert "context" not in event


def test_category_on_screen_is_kept() -> None:
    """RudderStack's Python SDK sends category on screen: refusing it lost the event."""
    event = one({"type": "screen", "userId": "u1", "name": "Home", "category": "Onboarding"})
    assert (event["name"], event["category"]) == ("Home", "Onboarding")
