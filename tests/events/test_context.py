"""The event context: sections, drops, consents, session, locale, IP, screen, batch merge."""

from __future__ import annotations

import pytest

from ._helpers import REMOTE_IP, decode, one, reason, track


def context_of(context: dict, **options: object) -> dict:
    options.setdefault("fallback_to_request_ip", False)
    return one(track(context=context), **options).get("context", {})


def test_sections_keep_typed_values_and_drop_empty_ones() -> None:
    context = {
        "app": {"name": "Shop", "version": "", "build": "42", "unknown": "x"},
        "device": {"id": "d1", "adTrackingEnabled": False, "manufacturer": "Apple"},
        "network": {"wifi": True, "cellular": False, "carrier": ""},
        "location": {"city": "Rome", "latitude": 41.9, "longitude": 0, "speed": 3},
        "campaign": {"name": "", "source": ""},
        "page": {"path": "/", "url": "https://example.com/"},
        "library": {"name": "analytics.js", "version": "1.0"},
        "referrer": {"id": "r", "type": "link"},
        "timezone": "Europe/Rome",
        "userAgent": "",
    }
    assert context_of(context) == {
        "app": {"name": "Shop", "build": "42"},
        "device": {"id": "d1", "manufacturer": "Apple"},
        "network": {"wifi": True},
        "location": {"city": "Rome", "latitude": 41.9, "speed": 3.0},
        "page": {"path": "/", "url": "https://example.com/"},
        "library": {"name": "analytics.js", "version": "1.0"},
        "referrer": {"id": "r", "type": "link"},
        "timezone": "Europe/Rome",
    }


def test_unknown_and_unschematized_keys_are_dropped() -> None:
    context = {"direct": True, "groupId": "g", "whatever": {"a": 1}, "library": {"name": "x"}}
    assert context_of(context) == {"library": {"name": "x"}}


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"app": "x"}, "property 'context.app' is not a valid object"),
        ({"app": {"name": 1}}, "property 'context.app.name' is not a string"),
        ({"page": {"url": None}}, "property 'context.page.url' is not a string"),
        ({"network": {"wifi": 1}}, "property 'context.network.wifi' is not a boolean"),
        ({"location": {"latitude": "1"}}, "property 'context.location.latitude' is not a number"),
        ({"location": {"speed": True}}, "property 'context.location.speed' is not a number"),
        (
            {"location": {"speed": 10**400}},
            "property 'context.location.speed' is not a valid 64-bit floating-point number",
        ),
        (
            {"screen": {"width": 1.5}},
            "property 'context.screen.width' is not a valid 16-bit integer",
        ),
        (
            {"screen": {"density": 10.5}},
            "property 'context.screen.density' exceeds the allowed precision of 3",
        ),
        ({"session": {"id": 2**63}}, "property 'context.session.id' is not a valid 64-bit integer"),
        ({"ip": 5}, "property 'context.ip' is not a valid string"),
        ({"locale": None}, "property 'context.locale' is not a valid string"),
        ({"userAgent": []}, "property 'context.userAgent' is not a valid string"),
        ({"groupId": 1}, "property 'context.groupId' is not a valid string"),
        ({"direct": "yes"}, "property 'context.direct' is not a valid boolean"),
        ({"sessionStart": 1}, "property 'context.sessionStart' is not a valid boolean"),
        ({"sessionId": "1"}, "property 'context.sessionId' is not a valid number"),
        ({"sessionId": 1.5}, "property 'context.sessionId' is not a 64-bit integer"),
        ({"sessionId": 2**63}, "property 'context.sessionId' is not a 64-bit integer"),
        ({"traits": [1]}, "property 'context.traits' is not a valid object"),
        ({"consents": []}, "property 'context.consents' is not a valid object"),
        ({"consents": {"": True}}, "property 'context.consents' contains an empty purpose"),
        (
            {"consents": {"ads": "yes"}},
            "value of \"ads\" in 'context.consents' is not a valid boolean",
        ),
    ],
)
def test_context_errors(context: dict, message: str) -> None:
    assert reason(track(context=context)) == message


def test_session_from_segment_keys_is_a_number() -> None:
    context = context_of({"sessionId": 1732598942123, "sessionStart": True})
    assert context == {"session": {"id": 1732598942123, "start": True}}
    assert context_of({"sessionStart": False}) == {}
    assert context_of({"session": {"id": 7, "start": False}, "sessionStart": True}) == {
        "session": {"id": 7, "start": True}
    }


def test_consents() -> None:
    assert context_of({"consents": {"ads": True, "analytics": False}}) == {
        "consents": {"ads": True, "analytics": False}
    }
    assert context_of({"consents": {}}) == {}


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("en-US", "en-US"),
        ("fr-CA", "fr-CA"),
        ("en_us", "en-US"),
        ("IT-it", "it-IT"),
        ("en", "en-US"),
        ("fr", "fr-FR"),
        ("de", "de-DE"),
        ("pt", "pt-BR"),
        ("xx", None),
        ("english", None),
        ("e1-US", None),
        ("", None),
    ],
)
def test_locale(locale: str, expected: str | None) -> None:
    assert context_of({"locale": locale}).get("locale") == expected


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("198.51.100.20", "198.51.100.20"),
        ("2001:db8:1:2::3", "2001:db8:1:2::3"),
        ("::ffff:198.51.100.20", "198.51.100.20"),
        ("255.255.255.255", REMOTE_IP),
        ("255.255.255.0", "203.0.113.0"),
        ("255.255.0.0", "203.0.0.0"),
        ("0.0.0.0", None),
    ],
)
def test_ip_values(ip: str, expected: str | None) -> None:
    assert context_of({"ip": ip}, fallback_to_request_ip=True).get("ip") == expected


def test_ip_masks_of_an_ipv6_client() -> None:
    remote = "2001:db8:aaaa:bbbb::1"
    assert context_of({"ip": "255.255.255.0"}, remote_ip=remote)["ip"] == "2001:db8:aaaa::"
    assert context_of({"ip": "255.255.0.0"}, remote_ip=remote)["ip"] == "2001:db8::"


@pytest.mark.parametrize("ip", ["nope", "1.2.3.256", "fe80::1%eth0", "01.2.3.4"])
def test_invalid_ip(ip: str) -> None:
    assert reason(track(context={"ip": ip})) == "property 'ip' is not a valid IP address"


def test_multicast_ip() -> None:
    message = "property 'ip' cannot be a multicast IP address"
    assert reason(track(context={"ip": "224.0.0.1"})) == message
    assert reason(track(context={"ip": "ff02::1"})) == message


def test_ip_falls_back_to_the_request_address_only_if_asked() -> None:
    assert context_of({}, fallback_to_request_ip=True) == {"ip": REMOTE_IP}
    assert context_of({}, fallback_to_request_ip=False) == {}


def test_screen() -> None:
    screen = {"width": 1920, "height": 1080, "density": 1.3636}
    assert context_of({"screen": screen}) == {
        "screen": {"width": 1920, "height": 1080, "density": 1.36}
    }
    assert context_of({"screen": {"width": 0, "density": 0}}) == {}


@pytest.mark.parametrize(
    ("screen", "message"),
    [
        ({"width": 32768}, "screen width value is outside the allowed range [1, 32767]"),
        ({"height": -1}, "screen height value is outside the allowed range [1, 32767]"),
        ({"density": -2}, "screen density value must be a positive number"),
    ],
)
def test_screen_ranges(screen: dict, message: str) -> None:
    assert reason(track(context={"screen": screen})) == message


def test_batch_context_is_merged_into_each_event() -> None:
    default = {
        "library": {"name": "analytics-python", "version": "2.3"},
        "locale": "en-US",
        "traits": {"plan": "free"},
        "app": {"name": "Shop"},
    }
    own = {"library": {"version": "9.9"}, "locale": "it-IT"}
    batch = [track(context=own), track()]
    first, second = decode(
        {"batch": batch, "context": default}, fallback_to_request_ip=False
    ).events
    assert first["context"] == {
        "library": {"name": "analytics-python", "version": "9.9"},
        "locale": "it-IT",
        "app": {"name": "Shop"},
    }
    assert first["traits"] == second["traits"] == {"plan": "free"}
    assert second["context"]["library"] == {"name": "analytics-python", "version": "2.3"}
    # The events do not share section objects with each other.
    assert first["context"]["app"] is not second["context"]["app"]


def test_batch_context_errors_refuse_the_request() -> None:
    from krenalis.errors import RequestError

    with pytest.raises(RequestError, match=r"property 'context.screen.width' is not a number"):
        decode({"batch": [track()], "context": {"screen": {"width": "big"}}})


# -- campaign from the page URL ------------------------------------------------------------------


def test_utm_parameters_of_the_page_url_fill_the_campaign() -> None:
    url = "https://shop.test/sale?utm_source=news&utm_medium=email&utm_campaign=winter%20sale"
    url += "&utm_term=boots&utm_content=banner&utm_unknown=x&q=1#top"
    assert context_of({"page": {"url": url}})["campaign"] == {
        "source": "news",
        "medium": "email",
        "name": "winter sale",
        "term": "boots",
        "content": "banner",
    }


def test_a_campaign_the_sdk_sent_is_kept_as_it_is() -> None:
    context = {
        "page": {"url": "https://shop.test/?utm_source=news&utm_campaign=winter"},
        "campaign": {"source": "ads"},
    }
    assert context_of(context)["campaign"] == {"source": "ads"}


def test_a_batch_default_campaign_counts_as_sent() -> None:
    body = {
        "batch": [track(context={"page": {"url": "https://shop.test/?utm_source=news"}})],
        "context": {"campaign": {"name": "batch"}},
    }
    [event] = decode(body).events
    assert event["context"]["campaign"] == {"name": "batch"}


@pytest.mark.parametrize(
    "url",
    [
        "https://shop.test/",
        "https://shop.test/?utm_source=",  # empty values carry nothing
        "https://shop.test/utm_source/page",  # not a query parameter
        "http://[::1/?utm_source=news",  # not a URL
    ],
)
def test_no_campaign_without_utm_values(url: str) -> None:
    assert "campaign" not in context_of({"page": {"url": url}})


def test_the_first_of_repeated_utm_parameters_wins() -> None:
    url = "https://shop.test/?utm_source=first&utm_source=second"
    assert context_of({"page": {"url": url}})["campaign"] == {"source": "first"}
