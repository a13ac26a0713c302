"""Websites and emails send to a real `krenalis serve`, proven in a real browser (Chromium).

Each test writes a page, serves it from a static server on another port (another origin than
the collector), opens it in Chromium and reads the rows the warehouse got. Nothing mocked:
analytics.js is the vendored build the collector serves, the snippet is what
`krenalis snippet` prints, RudderStack's SDK is the npm release.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from browser_support import PageServer

from e2e.e2e_support import WRITE_KEY, Deployment, KrenalisProcess, wait_for, warehouse_rows

#: The warehouse columns the tests read: name -> SQL.
COLUMNS = {
    name: name
    for name in [
        "event",
        "user_id",
        "anonymous_id",
        "group_id",
        "previous_id",
        "name",
        "category",
        "properties",
        "traits",
        "context_page_url",
        "context_page_path",
        "context_page_referrer",
        "context_page_search",
        "context_page_title",
        "context_user_agent",
        "context_library_name",
        "context_campaign_source",
        "context_campaign_name",
    ]
} | {
    "type": "type::text",
    "context_browser_name": "context_browser_name::text",
    "context_ip": "host(context_ip)",
}
SELECT = f"SELECT {', '.join(COLUMNS.values())} FROM krenalis_events ORDER BY timestamp, type"


def workspace(dsn: str, *, allowed_origins: str | None = None) -> str:
    origins = f"\n    allowed_origins: [{allowed_origins}]" if allowed_origins else ""
    return f"""\
warehouse:
  dsn: "{dsn}"
sources:
  website:
    write_key: "{WRITE_KEY}"{origins}
pipelines:
  website-warehouse:
    source: website
    to: warehouse
"""


async def start_serve(
    deployment: Deployment, dsn: str, **workspace_options: Any
) -> KrenalisProcess:
    deployment.write_workspace(workspace(dsn, **workspace_options))
    serve = deployment.start("serve")
    await serve.wait_healthy()
    return serve


async def rows(dsn: str, count: int, serve: KrenalisProcess) -> list[dict[str, Any]]:
    """The warehouse's events once there are `count`, oldest first, as column -> value."""

    async def enough() -> list[tuple] | None:
        found = await warehouse_rows(dsn, SELECT)  # serve made the table before it was healthy
        return found if len(found) >= count else None

    found = await wait_for(enough, what=f"{count} events in the warehouse", processes=[serve])
    return [dict(zip(COLUMNS, row, strict=True)) for row in found]


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def snippet(deployment: Deployment, serve: KrenalisProcess) -> str:
    """What `krenalis snippet` prints for this deployment (from the workspace in NATS)."""
    done = deployment.cli("snippet", "--host", serve.base_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("<script>")
    return done.stdout


# -- 1. the analytics.js snippet ------------------------------------------------------------------


SHOP_QUERY = "utm_source=news&utm_campaign=winter&ajs_aid=visitor-from-link"
SHOP_PAGE = """\
<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>Winter boots</title>
{snippet}
</head>
<body>
<button id="buy">Buy</button>
<script>
  document.getElementById("buy").addEventListener("click", function () {{
    analytics.track("Order Completed", {{total: 42.5, currency: "EUR"}});
  }});
  // alias first: analytics.js sends an identified user's id as every later call's userId.
  analytics.alias("user-42", "visitor-7");
  analytics.identify("user-42", {{email: "ada@example.com", plan: "pro"}});
  analytics.group("acme", {{name: "Acme"}});
</script>
</body>
</html>
"""


async def test_the_snippet_sends_every_call_of_a_page(
    deployment: Deployment, warehouse_dsn: str, pages: PageServer, new_page: Any
) -> None:
    serve = await start_serve(deployment, warehouse_dsn)
    shop = pages.add("shop.html", SHOP_PAGE.format(snippet=snippet(deployment, serve)))
    home = pages.add("index.html", f'<a id="go" href="shop.html?{SHOP_QUERY}">Shop</a>')
    page = await new_page()
    posts: list[str] = []
    loaded: list[str] = []
    page.on("request", lambda r: (posts if r.method == "POST" else loaded).append(r.url))

    await page.goto(home)
    await page.click("#go")  # the shop page has a referrer
    await page.wait_for_function("window.analytics && window.analytics.initialized === true")
    await page.click("#buy")
    found = await rows(warehouse_dsn, 5, serve)
    user_agent = await page.evaluate("navigator.userAgent")

    collector = serve.base_url
    # ajs_aid made analytics.js load its queryString chunk, from the collector, which set the
    # anonymousId of every call.
    assert any(u.startswith(f"{collector}/analytics-next/bundles/queryString.") for u in loaded)
    anonymous_id = await page.evaluate("analytics.user().anonymousId()")
    assert anonymous_id == "visitor-from-link"
    assert f"{collector}/analytics.js/v1/{WRITE_KEY}/analytics.min.js" in loaded
    assert f"{collector}/v1/projects/{WRITE_KEY}/settings" in loaded
    assert sorted(posts) == sorted(f"{collector}/v1/{letter}" for letter in "paigt")
    # Nothing from anywhere else: no destination, no metrics to Segment.
    assert {origin_of(url) for url in posts + loaded} == {collector, pages.origin()}, loaded
    by_type = {row["type"]: row for row in found}
    assert set(by_type) == {"page", "identify", "group", "alias", "track"}
    url = f"{shop}?{SHOP_QUERY}"
    for row in found:
        assert row["anonymous_id"] == anonymous_id
        assert row["context_page_url"] == url
        assert row["context_page_path"] == "/shop.html"
        assert row["context_page_search"] == f"?{SHOP_QUERY}"
        assert row["context_page_title"] == "Winter boots"
        assert row["context_page_referrer"] == home
        assert row["context_browser_name"] == "Chrome"
        assert row["context_user_agent"] == user_agent
        assert row["context_ip"] == "127.0.0.1"  # the connection's
        assert row["context_library_name"] == "analytics.js"
        assert (row["context_campaign_source"], row["context_campaign_name"]) == ("news", "winter")
    assert by_type["track"]["event"] == "Order Completed"
    assert by_type["track"]["properties"] == {"total": 42.5, "currency": "EUR"}
    assert by_type["identify"]["user_id"] == "user-42"
    assert by_type["identify"]["traits"] == {"email": "ada@example.com", "plan": "pro"}
    assert by_type["group"]["group_id"] == "acme"
    assert (by_type["alias"]["user_id"], by_type["alias"]["previous_id"]) == (
        "user-42",
        "visitor-7",
    )


# -- 2. RudderStack's JS SDK v3 ------------------------------------------------------------------


RUDDERSTACK_PAGE = """\
<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>Rudder boots</title>
<script src="rudderstack.js"></script>
<script>
  var rudder = new rudderanalytics.RudderAnalytics();
  rudder.load({key}, {collector}, {{configUrl: {collector}}});
  rudder.ready(function () {{ window.rudderReady = true; }});
  rudder.page("Catalog", "Boots", {{section: "winter"}});
  rudder.alias("user-7", "visitor-3");
  rudder.identify("user-7", {{email: "grace@example.com"}});
  rudder.group("acme", {{name: "Acme"}});
</script>
</head>
<body>
<button id="buy" onclick="rudder.track('Order Completed', {{total: 10}})">Buy</button>
</body>
</html>
"""


async def test_rudderstack_js_sdk_sends_every_call_of_a_page(
    deployment: Deployment,
    warehouse_dsn: str,
    pages: PageServer,
    new_page: Any,
    rudderstack_sdk: Path,
) -> None:
    serve = await start_serve(deployment, warehouse_dsn)
    pages.add("rudderstack.js", rudderstack_sdk.read_bytes())
    collector = json.dumps(serve.base_url)
    url = pages.add(
        "rudder.html", RUDDERSTACK_PAGE.format(key=json.dumps(WRITE_KEY), collector=collector)
    )
    page = await new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(f"{r.method} {r.url.partition('?')[0]}"))

    await page.goto(f"{url}?utm_source=ads&utm_campaign=spring")
    await page.wait_for_function("window.rudderReady === true")
    await page.click("#buy")
    found = await rows(warehouse_dsn, 5, serve)
    anonymous_id = await page.evaluate("rudder.getAnonymousId()")
    user_agent = await page.evaluate("navigator.userAgent")

    assert f"GET {serve.base_url}/sourceConfig/" in requested
    # Nothing else: no plugin, destination or error report from RudderStack's servers.
    origins = {origin_of(r.split()[1]) for r in requested}
    assert origins == {serve.base_url, pages.origin()}, requested
    by_type = {row["type"]: row for row in found}
    assert set(by_type) == {"page", "identify", "group", "alias", "track"}
    for row in found:
        assert row["anonymous_id"] == anonymous_id
        assert row["context_page_url"] == f"{url}?utm_source=ads&utm_campaign=spring"
        assert row["context_page_path"] == "/rudder.html"
        assert row["context_page_title"] == "Rudder boots"
        assert row["context_browser_name"] == "Chrome"
        assert row["context_user_agent"] == user_agent
        assert row["context_ip"] == "127.0.0.1"
        assert row["context_library_name"] == "RudderLabs JavaScript SDK"
        assert (row["context_campaign_source"], row["context_campaign_name"]) == ("ads", "spring")
    assert (by_type["page"]["name"], by_type["page"]["category"]) == ("Boots", "Catalog")
    assert by_type["track"]["event"] == "Order Completed"
    assert by_type["identify"]["user_id"] == "user-7"
    assert by_type["group"]["group_id"] == "acme"
    assert (by_type["alias"]["user_id"], by_type["alias"]["previous_id"]) == ("user-7", "visitor-3")


# -- 3. sendBeacon on page hide ------------------------------------------------------------------


BEACON_PAGE = """\
<!doctype html>
<html>
<head><meta charset="utf-8"><title>Leaving</title></head>
<body>
<script>
  // What a page does to report its last moment: a beacon, which outlives the page, carries no
  // credentials and cannot read the answer; the write key travels in the body.
  addEventListener("pagehide", function () {{
    navigator.sendBeacon({collector} + "/v1/t", JSON.stringify({{
      writeKey: {key},
      event: "Page Left",
      anonymousId: "beacon-visitor",
      properties: {{seconds: 3}},
      context: {{page: {{url: location.href, title: document.title}}, userAgent: navigator.userAgent}}
    }}));
  }});
</script>
</body>
</html>
"""


async def test_a_beacon_sent_on_page_hide_lands(
    deployment: Deployment, warehouse_dsn: str, pages: PageServer, new_page: Any
) -> None:
    serve = await start_serve(deployment, warehouse_dsn)
    url = pages.add(
        "leaving.html",
        BEACON_PAGE.format(collector=json.dumps(serve.base_url), key=json.dumps(WRITE_KEY)),
    )
    page = await new_page()
    await page.goto(url)
    user_agent = await page.evaluate("navigator.userAgent")
    await page.goto("about:blank")  # the page hides: its beacon goes

    [row] = await rows(warehouse_dsn, 1, serve)
    assert (row["type"], row["event"], row["anonymous_id"]) == (
        "track",
        "Page Left",
        "beacon-visitor",
    )
    assert row["properties"] == {"seconds": 3}
    assert (row["context_page_url"], row["context_page_title"]) == (url, "Leaving")
    assert (row["context_browser_name"], row["context_user_agent"]) == ("Chrome", user_agent)
    assert row["context_ip"] == "127.0.0.1"


RUDDERSTACK_BEACON_PAGE = """\
<!doctype html>
<html>
<head><meta charset="utf-8"><title>Rudder beacons</title>
<script src="rudderstack.js"></script>
<script>
  var rudder = new rudderanalytics.RudderAnalytics();
  rudder.load({key}, {collector}, {{configUrl: {collector}, useBeacon: true}});
  rudder.ready(function () {{ window.rudderReady = true; }});
  rudder.track("Video Watched", {{seconds: 30}});
</script>
</head>
<body></body>
</html>
"""


async def test_rudderstack_beacon_mode_lands_when_the_page_hides(
    deployment: Deployment,
    warehouse_dsn: str,
    pages: PageServer,
    new_page: Any,
    rudderstack_sdk: Path,
) -> None:
    """With useBeacon, RudderStack queues events and sends them as one beacon to
    /beacon/v1/batch?writeKey=..., at the latest when the page hides."""
    serve = await start_serve(deployment, warehouse_dsn)
    pages.add("rudderstack.js", rudderstack_sdk.read_bytes())
    url = pages.add(
        "beacons.html",
        RUDDERSTACK_BEACON_PAGE.format(
            key=json.dumps(WRITE_KEY), collector=json.dumps(serve.base_url)
        ),
    )
    page = await new_page()
    await page.goto(url)
    await page.wait_for_function("window.rudderReady === true")
    anonymous_id = await page.evaluate("rudder.getAnonymousId()")
    # The beacon queue holds events (10 minutes or 10 events): nothing is sent yet, where the
    # default queue would have posted the track already.
    await asyncio.sleep(1.5)
    assert await warehouse_rows(warehouse_dsn, "SELECT message_id FROM krenalis_events") == []
    await page.goto("about:blank")  # the page hides: the queue goes as one beacon

    found = await rows(warehouse_dsn, 1, serve)
    tracks = [row for row in found if row["type"] == "track"]
    assert [(row["event"], row["anonymous_id"]) for row in tracks] == [
        ("Video Watched", anonymous_id)
    ]
    assert tracks[0]["properties"] == {"seconds": 30}
    assert tracks[0]["context_page_url"] == url


# -- 4. a page on an origin the source does not list ---------------------------------------------


REFUSED_PAGE = """\
<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>Origins</title>
{snippet}
<script>
  var collector = {collector}, key = {key};
  function event(name) {{
    return JSON.stringify({{writeKey: key, event: name, anonymousId: "origin-visitor",
                            context: {{page: {{url: location.href}}}}}});
  }}
  // A fetch with the key in a header: the preflight decides whether it may go.
  window.corsPost = fetch(collector + "/v1/t", {{
    method: "POST", body: event("Fetched"),
    headers: {{"Content-Type": "text/plain", "Authorization": "Basic " + btoa(key + ":")}}
  }}).then(function (r) {{ return "status " + r.status; }}, function (e) {{ return e.name; }});
  // A simple request (as sendBeacon sends), which no preflight stops: the collector must.
  window.simplePost = fetch(collector + "/v1/t", {{method: "POST", mode: "no-cors", body: event("Simple")}})
    .then(function () {{ return "answered"; }}, function (e) {{ return e.name; }});
</script>
</head>
<body></body>
</html>
"""


async def test_a_page_on_an_origin_its_source_does_not_list_is_refused(
    deployment: Deployment, warehouse_dsn: str, pages: PageServer, new_page: Any
) -> None:
    allowed = pages.origin("localhost")  # the same page server under another origin
    serve = await start_serve(deployment, warehouse_dsn, allowed_origins=json.dumps(allowed))
    pages.add(
        "origins.html",
        REFUSED_PAGE.format(
            snippet=snippet(deployment, serve),
            collector=json.dumps(serve.base_url),
            key=json.dumps(WRITE_KEY),
        ),
    )
    answers: dict[str, list[int]] = {}
    refused = await new_page()
    refused.on(
        "response", lambda r: answers.setdefault(r.url.partition("?")[0], []).append(r.status)
    )
    failed: list[str] = []
    refused.on("requestfailed", lambda r: failed.append(r.url))
    await refused.goto(f"{pages.origin()}/origins.html")
    assert await refused.evaluate("window.corsPost") == "TypeError"  # the browser stops it
    assert await refused.evaluate("window.simplePost") == "answered"  # the collector refuses it
    assert answers[f"{serve.base_url}/v1/t"] == [403]
    # The settings' 403 has no CORS header: the browser reports a failure, analytics.js stops.
    settings = f"{serve.base_url}/v1/projects/{WRITE_KEY}/settings"
    await wait_for(lambda: settings in failed, what="analytics.js's settings to be refused")
    assert not await refused.evaluate("window.analytics.initialized === true")

    welcome = await new_page()
    await welcome.goto(f"{allowed}/origins.html")
    assert await welcome.evaluate("window.corsPost") == "status 200"
    assert await welcome.evaluate("window.simplePost") == "answered"
    await welcome.wait_for_function("window.analytics && window.analytics.initialized === true")
    found = await rows(warehouse_dsn, 3, serve)  # Fetched, Simple, and the snippet's page view

    assert sorted(row["event"] or row["type"] for row in found) == ["Fetched", "Simple", "page"]
    assert all(row["context_page_url"] == f"{allowed}/origins.html" for row in found)


# -- 5. the pixel --------------------------------------------------------------------------------


async def test_a_pixel_in_an_email_lands(
    deployment: Deployment, warehouse_dsn: str, pages: PageServer, new_page: Any
) -> None:
    serve = await start_serve(deployment, warehouse_dsn)
    opened = {
        "writeKey": WRITE_KEY,
        "userId": "reader-9",
        "event": "Email Opened",
        "properties": {"campaign": "winter-sale", "subject": "Boots >>> 40% off?"},
        "context": {"page": {"url": "https://mail.example/inbox?utm_source=newsletter"}},
    }
    data = base64.b64encode(json.dumps(opened).encode()).decode()
    pixel = f"{serve.base_url}/v1/pixel/track?data={data}"
    url = pages.add("email.html", f'<p>Winter sale</p><img id="open" src="{pixel}" alt="">')
    page = await new_page()
    await page.goto(url)
    await page.wait_for_function("document.getElementById('open').complete")
    assert await page.evaluate("document.getElementById('open').naturalWidth") == 1

    [row] = await rows(warehouse_dsn, 1, serve)
    assert (row["type"], row["event"], row["user_id"]) == ("track", "Email Opened", "reader-9")
    assert row["properties"] == opened["properties"]
    assert row["context_campaign_source"] == "newsletter"  # from the utm_ parameters
    assert row["context_ip"] == "127.0.0.1"
