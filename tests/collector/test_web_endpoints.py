"""What browsers and emails use: analytics.js's short paths and text/plain bodies, the script,
its chunks and its settings, RudderStack's source config and beacon, the pixel.

A real collector on a real nats-server (the `collector` fixture); requests go over real
sockets, as a browser's would (tests/browser/ drives a real one).
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from ipaddress import ip_network

import pytest
from helpers_collector import (
    OTHER_KEY,
    SOURCE_ID,
    WAREHOUSE_PIPELINE,
    WORKSPACE_YAML,
    CollectorHarness,
    basic,
    event,
)

from krenalis.collector.web import ASSETS, GIF
from krenalis.workspace.load import parse_workspace

SHORT_PATHS = {
    "t": "track",
    "p": "page",
    "s": "screen",
    "i": "identify",
    "g": "group",
    "a": "alias",
}
TEXT_PLAIN = {"Content-Type": "text/plain"}
PAGE = "https://shop.example.com"


def restricted(collector: CollectorHarness) -> None:
    """The source takes events only from pages of PAGE."""
    text = WORKSPACE_YAML.replace(
        f'    write_key: "{collector.write_key}"\n',
        f'    write_key: "{collector.write_key}"\n    allowed_origins: ["{PAGE}"]\n',
    )
    collector.collector.set_workspace(parse_workspace(text, "web-test.yaml", environ={}))


# -- what analytics.js posts ---------------------------------------------------------------------


@pytest.mark.parametrize(("letter", "event_type"), SHORT_PATHS.items())
async def test_short_paths_take_what_analytics_js_posts(
    collector: CollectorHarness, letter: str, event_type: str
) -> None:
    # analytics.js: text/plain (no preflight for the type), the key in the body and in Basic.
    body = {**event(event_type), "writeKey": collector.write_key}
    headers = {"Content-Type": "text/plain;charset=UTF-8", **basic()}
    async with collector.client() as client:
        answer = await client.post(f"/v1/{letter}", content=json.dumps(body), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"success": True, "accepted": 1, "stored": 1 + (letter == "t")}
    [stored] = await collector.take(WAREHOUSE_PIPELINE, expected=1)
    assert stored.event["type"] == event_type
    assert stored.event["messageId"] == body["messageId"]


async def test_short_batch_path(collector: CollectorHarness) -> None:
    batch = [event("track"), event("page"), event("identify")]
    async with collector.client() as client:
        answer = await client.post("/v1/b", content=json.dumps({"batch": batch}), headers=basic())
    assert answer.json()["accepted"] == 3
    stored = await collector.take(WAREHOUSE_PIPELINE, expected=3)
    assert sorted(s.event["type"] for s in stored) == ["identify", "page", "track"]


async def test_a_beacon_without_credentials_lands(collector: CollectorHarness) -> None:
    """navigator.sendBeacon: text/plain, no Authorization, the key in the body, answer unread."""
    body = {**event("track"), "writeKey": collector.write_key}
    headers = {"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://any.example"}
    async with collector.client() as client:
        answer = await client.post("/v1/t", content=json.dumps(body), headers=headers)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "*"
    [stored] = await collector.take(WAREHOUSE_PIPELINE, expected=1)
    assert stored.event["context"]["ip"] == "127.0.0.1"  # the connection's


async def test_rudderstack_beacon_names_the_key_in_the_url(collector: CollectorHarness) -> None:
    batch = {"batch": [event("track"), event("page")], "sentAt": "2026-01-01T00:00:00.000Z"}
    async with collector.client() as client:
        url = f"/beacon/v1/batch?writeKey={collector.write_key}"
        answer = await client.post(url, content=json.dumps(batch), headers=TEXT_PLAIN)
        assert answer.status_code == 200, answer.text
        refused = await client.post(
            f"/beacon/v1/batch?writeKey={OTHER_KEY}", content=json.dumps(batch), headers=TEXT_PLAIN
        )
        assert refused.status_code == 401
        # Only the beacon path reads a key from the URL: a URL ends up in logs.
        other = await client.post(
            f"/v1/batch?writeKey={collector.write_key}", content=json.dumps(batch)
        )
        assert other.status_code == 401
    assert len(await collector.take(WAREHOUSE_PIPELINE, expected=2)) == 2


# -- analytics.js and its chunks -----------------------------------------------------------------


async def test_analytics_js_is_served_with_the_write_key_written_in(
    collector: CollectorHarness,
) -> None:
    vendored = (ASSETS / "standalone.js").read_bytes()
    async with collector.client() as client:
        answer = await client.get(f"/analytics.js/v1/{collector.write_key}/analytics.min.js")
        head = await client.head(f"/analytics.js/v1/{collector.write_key}/analytics.min.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
    assert answer.content == vendored.replace(
        b'"__WRITE_KEY__"', f'"{collector.write_key}"'.encode()
    )
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(answer.content))


async def test_the_vendored_chunks_are_served_where_the_script_asks(
    collector: CollectorHarness,
) -> None:
    bundles = sorted(ASSETS.glob("*.bundle.*.js"))
    assert {b.name.partition(".")[0] for b in bundles} == {"queryString", "auto-track"}
    async with collector.client() as client:
        for bundle in bundles:
            answer = await client.get(f"/analytics-next/bundles/{bundle.name}")
            assert answer.status_code == 200
            assert answer.content == bundle.read_bytes()
            assert "immutable" in answer.headers["cache-control"]
        for missing in ("standalone.js", "README.md", "..%2F..%2Fweb.py", "nope.bundle.1.js"):
            answer = await client.get(f"/analytics-next/bundles/{missing}")
            assert answer.status_code == 404, missing


async def test_unknown_keys_get_404_with_no_detail(collector: CollectorHarness) -> None:
    async with collector.client() as client:
        for path in (
            f"/analytics.js/v1/{OTHER_KEY}/analytics.min.js",
            f"/v1/projects/{OTHER_KEY}/settings",
        ):
            answer = await client.get(path)
            assert answer.status_code == 404
            assert answer.json() == {"error": {"code": "NotFound", "message": "not found"}}


# -- settings ------------------------------------------------------------------------------------


async def test_settings_point_analytics_js_at_this_collector(collector: CollectorHarness) -> None:
    host = collector.url.removeprefix("http://")
    async with collector.client() as client:
        answer = await client.get(f"/v1/projects/{collector.write_key}/settings")
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "*"
    settings = answer.json()
    assert settings["integrations"] == {
        "Segment.io": {"apiKey": collector.write_key, "apiHost": f"{host}/v1", "protocol": "http"}
    }
    assert settings["metrics"] == {"sampleRate": 0}  # nothing sent to Segment's API
    assert settings["remotePlugins"] == []


async def test_settings_follow_the_host_the_page_used(collector: CollectorHarness) -> None:
    path = f"/v1/projects/{collector.write_key}/settings"
    headers = {"Host": "events.example.com", "X-Forwarded-Proto": "https"}
    async with collector.client() as client:
        # From a peer that is no trusted proxy, X-Forwarded-* is not believed.
        plain = await client.get(path, headers={**headers, "X-Forwarded-Host": "evil.example"})
        collector.collector.settings = replace(
            collector.collector.settings, trusted_proxies=(ip_network("127.0.0.0/8"),)
        )
        proxied = await client.get(path, headers=headers)
        forwarded = await client.get(
            path, headers={"X-Forwarded-Host": "a.example, cdn.example:8443"}
        )
        bad = await client.get(path, headers={"Host": "bad host/x"})
    assert plain.json()["integrations"]["Segment.io"]["apiHost"] == "events.example.com/v1"
    assert plain.json()["integrations"]["Segment.io"]["protocol"] == "http"
    assert proxied.json()["integrations"]["Segment.io"]["protocol"] == "https"
    assert forwarded.json()["integrations"]["Segment.io"]["apiHost"] == "cdn.example:8443/v1"
    assert bad.status_code == 400
    assert "Host header" in bad.json()["error"]["message"]


async def test_a_source_with_allowed_origins_gives_settings_only_to_its_pages(
    collector: CollectorHarness,
) -> None:
    restricted(collector)
    path = f"/v1/projects/{collector.write_key}/settings"
    async with collector.client() as client:
        mine = await client.get(path, headers={"Origin": PAGE})
        other = await client.get(path, headers={"Origin": "https://other.example"})
        script = await client.get(
            f"/analytics.js/v1/{collector.write_key}/analytics.min.js",
            headers={"Origin": "https://other.example"},
        )
    assert mine.status_code == 200
    assert mine.headers["access-control-allow-origin"] == PAGE
    assert other.status_code == 403
    assert "access-control-allow-origin" not in other.headers
    assert "allowed_origins" in other.json()["error"]["message"]
    assert script.status_code == 200  # the script is public; what it sends is checked


# -- RudderStack's source config -----------------------------------------------------------------


async def test_rudderstack_source_config(collector: CollectorHarness) -> None:
    async with collector.client() as client:
        by_header = await client.get("/sourceConfig/?p=npm&v=3.34.1", headers=basic())
        by_query = await client.get(f"/sourceConfig?writeKey={collector.write_key}")
        missing = await client.get("/sourceConfig/")
        wrong = await client.get("/sourceConfig/", headers=basic(OTHER_KEY))
    assert by_header.status_code == 200
    source = by_header.json()["source"]
    assert (source["id"], source["enabled"], source["destinations"]) == (SOURCE_ID, True, [])
    assert source["config"] == {}  # no error or metrics reporting to RudderStack
    assert by_query.json() == by_header.json()
    assert (missing.status_code, wrong.status_code) == (401, 401)


# -- the pixel -----------------------------------------------------------------------------------


def pixel_data(body: dict, *, urlsafe: bool = False) -> str:
    raw = json.dumps(body).encode()
    if urlsafe:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return base64.b64encode(raw).decode()


async def test_a_pixel_stores_its_event_and_answers_a_gif(collector: CollectorHarness) -> None:
    opened = {
        "userId": "u1",
        "event": "Email Opened",
        "properties": {"subject": "Winter sale ~~ ??? >>>"},  # "+" and "/" in base64
        "writeKey": collector.write_key,
    }
    async with collector.client() as client:
        answer = await client.get("/v1/pixel/track", params={"data": pixel_data(opened)})
        urlsafe = await client.get(
            "/v1/pixel/track", params={"data": pixel_data(opened, urlsafe=True)}
        )
        # A "+" left unescaped in the URL reads as a space: it is taken back.
        raw = pixel_data(opened)
        assert "+" in raw
        unescaped = await client.get(f"/v1/pixel/track?data={raw}")
    for response in (answer, urlsafe, unescaped):
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/gif"
        assert response.content == GIF
    stored = await collector.take(WAREHOUSE_PIPELINE, expected=3)
    for item in stored:
        assert (item.event["type"], item.event["event"]) == ("track", "Email Opened")
        assert item.event["properties"] == opened["properties"]
        assert item.event["context"]["ip"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ("", 400, '"data" query parameter'),
        ("?data=not*base64", 400, "not base64"),
        (f"?data={base64.b64encode(b'not json').decode()}", 400, "JSON"),
        (f"?data={base64.b64encode(b'{}').decode()}", 401, "write key is missing"),
    ],
)
async def test_a_bad_pixel_says_what_is_wrong(
    collector: CollectorHarness, query: str, status: int, says: str
) -> None:
    async with collector.client() as client:
        answer = await client.get(f"/v1/pixel/track{query}")
    assert answer.status_code == status
    assert says in answer.json()["error"]["message"]


async def test_pixel_paths_take_only_get(collector: CollectorHarness) -> None:
    async with collector.client() as client:
        answer = await client.post("/v1/pixel/track", content=b"{}")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, OPTIONS"


def test_the_vendored_licence_and_readme_travel_with_the_script() -> None:
    assert "MIT" in (ASSETS / "LICENSE.MD").read_text()
    readme = (ASSETS / "README.md").read_text()
    assert "@segment/analytics-next" in readme and "make analytics-js" in readme
    for script in ASSETS.glob("*.js"):
        assert f"`{script.name}`" in readme
