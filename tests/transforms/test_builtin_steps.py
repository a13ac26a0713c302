"""The built-in steps, each on real events, through the same Chain the transform process runs."""

from __future__ import annotations

import hashlib
import hmac
import json

from helpers_transforms import LONDON, SECRET, make_geoip_db, pipeline_with, wire

from krenalis.events import encode_event
from krenalis.transforms.builtin import mask_ip
from krenalis.transforms.chain import Chain, build_steps, time_limits


def run(steps: str, event: dict, base=None) -> list[dict] | str:
    """``event`` through the steps: the events delivered, or the failure's reason."""
    pipeline = pipeline_with(steps)
    built, _ = build_steps(pipeline.transform, base)
    with time_limits():
        result = Chain(built, "web", "p").run(encode_event(event), 0.0)
    if isinstance(result, str):
        return result
    return [json.loads(data) for data in result[1]]


def test_rename_moves_fields_and_makes_missing_parents():
    event = wire("m1", properties={"price": 3, "keep": 1}, userId="u9")
    [out] = run("      - rename: {properties.price: properties.amount, userId: traits.id}\n", event)
    assert out["properties"] == {"keep": 1, "amount": 3}
    assert "userId" not in out and out["traits"] == {"id": "u9"}


def test_rename_of_a_missing_field_changes_nothing():
    event = wire("m1", properties={"a": 1})
    assert run("      - rename: {properties.nothing: properties.b}\n", event) == [event]


def test_drop_removes_nested_fields_and_ignores_missing_ones():
    event = wire("m1", properties={"card": "4111", "sku": "A"}, context={"ip": "1.2.3.4"})
    [out] = run("      - drop: [context.ip, properties.card, traits.not.there]\n", event)
    assert out["properties"] == {"sku": "A"} and out["context"] == {}


def test_set_writes_values_and_objects_each_event_its_own():
    steps = "      - set: {properties.channel: web, context.tags: [a, b], traits.vip: true}\n"
    [first] = run(steps, wire("m1"))
    [second] = run(steps, wire("m2"))
    assert first["properties"]["channel"] == "web" and first["traits"]["vip"] is True
    assert first["context"]["tags"] == ["a", "b"] == second["context"]["tags"]


def test_set_through_a_value_that_is_not_an_object_fails_the_event():
    reason = run("      - set: {properties.sku.x: 1}\n", wire("m1", properties={"sku": "A"}))
    assert isinstance(reason, str)
    assert "step 1:set failed" in reason and "properties.sku is str, not an object" in reason


def test_keep_is_an_allow_list_of_properties():
    event = wire("m1", properties={"amount": 3, "currency": "EUR", "card": "4111",
                                   "address": {"city": "Rome", "street": "Via Roma"}})  # fmt: skip
    steps = "      - keep: [properties.amount, properties.currency, properties.address.city]\n"
    [out] = run(steps, event)
    assert out["properties"] == {"amount": 3, "currency": "EUR", "address": {"city": "Rome"}}
    assert out["context"] == event["context"]  # only properties are touched


def test_hash_is_hmac_sha256_with_the_secret_and_stable():
    event = wire("m1", userId="u-42", traits={"email": "ada@example.com", "age": 42})
    steps = "      - hash: [traits.email, userId, traits.age, traits.none]\n        secret: ${HASH_SECRET}\n"
    [out] = run(steps, event)
    [again] = run(steps, dict(event, messageId="m2"))

    def expected(text: str) -> str:
        return hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()

    assert out["traits"]["email"] == expected("ada@example.com") == again["traits"]["email"]
    assert out["userId"] == expected("u-42")
    assert out["traits"]["age"] == expected("42")  # a number: its JSON text
    assert "none" not in out["traits"]


def test_mask_ip_zeroes_the_last_octet_or_80_bits():
    assert mask_ip("81.2.69.160") == "81.2.69.0"
    assert mask_ip("2a02:8010:1234:5678:9abc::1") == "2a02:8010:1234::"
    assert mask_ip("::ffff:81.2.69.160") == "::ffff:81.2.69.0"
    assert mask_ip("not an address") is None and mask_ip(42) is None
    [out] = run("      - mask_ip\n", wire("m1", context={"ip": "81.2.69.160"}))
    assert out["context"]["ip"] == "81.2.69.0"
    [out] = run("      - mask_ip\n", wire("m1", context={"ip": "garbage"}))
    assert "ip" not in out["context"]  # what cannot be masked is not kept whole


def test_drop_bots_uses_the_parser_flag_and_the_crawler_list():
    googlebot = ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1; "
                 "+http://www.google.com/bot.html) Chrome/120.0.0.0 Safari/537.36")  # fmt: skip
    firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
    homemade = "acme-spider/1.0"  # no browser token: the parser itself says Bot
    curl = "curl/8.5.0"  # in the crawler list only
    for agent, dropped in ((googlebot, True), (firefox, False), (homemade, True), (curl, True)):
        out = run("      - drop_bots\n", wire("m1", context={"userAgent": agent}))
        assert (out == []) is dropped, agent
    assert run("      - drop_bots\n", wire("m1")) != []  # no user agent: kept


def test_geoip_fills_the_location_it_lacks(tmp_path):
    make_geoip_db(tmp_path / "city.mmdb")
    steps = "      - geoip: {database: city.mmdb}\n"
    [out] = run(steps, wire("m1", context={"ip": "81.2.69.160"}), tmp_path)
    assert out["context"]["location"] == LONDON
    event = wire("m2", context={"ip": "2a02:8010::7", "location": {"city": "Croydon"}})
    [out] = run(steps, event, tmp_path)
    assert out["context"]["location"] == {**LONDON, "city": "Croydon"}  # the app's own is kept
    [out] = run(steps, wire("m3", context={"ip": "8.8.8.8"}), tmp_path)
    assert "location" not in out["context"]


def test_a_chain_of_built_in_steps_runs_in_order():
    steps = (
        "      - rename: {properties.price: properties.amount}\n"
        "      - set: {properties.channel: web}\n"
        "      - keep: [properties.amount, properties.channel]\n"
        "      - drop: [context.ip]\n"
        "      - hash: [userId]\n        secret: ${HASH_SECRET}\n"
    )
    event = wire(
        "m1", userId="u1", properties={"price": 5, "card": "4111"}, context={"ip": "1.1.1.1"}
    )
    [out] = run(steps, event)
    assert out["properties"] == {"amount": 5, "channel": "web"}
    assert out["context"] == {} and len(out["userId"]) == 64
