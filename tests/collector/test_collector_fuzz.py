"""Random bodies and headers never make the collector fail (no 5xx), and it keeps serving.

Hypothesis drives a synchronous httpx client in a thread while the collector serves on the
test's event loop.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import string
from typing import Any

import httpx
from helpers_collector import WAREHOUSE_PIPELINE, WRITE_KEY, CollectorHarness, basic, bearer, event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ALLOWED = {200, 400, 401, 413, 415}
PATHS = ("/v1/events", "/v1/batch", "/v1/track", "/v1/events/identify", "/v1/alias")

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
strings = st.one_of(st.text(max_size=30), st.sampled_from(["", "2030-01-01T00:00:00Z", "x" * 120]))
# Objects that look like events, so that the event rules (not only JSON parsing) are exercised.
event_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(
            st.sampled_from(["track", "page", "screen", "identify", "group", "alias"]), json_values
        ),
        "event": st.one_of(strings, json_values),
        "userId": st.one_of(strings, json_values),
        "anonymousId": strings,
        "messageId": strings,
        "groupId": strings,
        "previousId": strings,
        "name": strings,
        "category": strings,
        "timestamp": st.one_of(strings, json_values),
        "originalTimestamp": strings,
        "sentAt": strings,
        "properties": json_values,
        "traits": json_values,
        "context": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "ip": strings,
                    "locale": strings,
                    "userAgent": strings,
                    "library": json_values,
                    "screen": json_values,
                    "session": json_values,
                    "location": json_values,
                    "traits": json_values,
                    "consents": json_values,
                },
            ),
        ),
    },
)
documents = st.one_of(
    json_values,
    event_like,
    st.lists(event_like, max_size=5),
    st.fixed_dictionaries(
        {"batch": st.one_of(st.lists(event_like, max_size=5), json_values)},
        optional={
            "writeKey": st.one_of(st.just(WRITE_KEY), json_values),
            "sentAt": st.one_of(strings, json_values),
            "context": json_values,
            "connectionId": st.one_of(strings, json_values),
        },
    ),
)
ascii_text = st.text(string.printable.strip() + " ", max_size=40).map(str.strip)
authorization = st.one_of(
    st.none(),
    st.just(bearer()),
    st.just(basic()),
    ascii_text.map(lambda v: {"Authorization": v} if v else {}),
    ascii_text.map(lambda v: {"Authorization": f"Basic {v}"} if v else {}),
    ascii_text.map(lambda v: {"Authorization": f"Bearer {v}"} if v else {}),
)
content_types = st.sampled_from(
    [None, "application/json", "text/plain", "application/json; charset=utf-8", "text/xml"]
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    path = draw(st.sampled_from(PATHS))
    if draw(st.booleans()):
        body = json.dumps(draw(documents)).encode()
    else:
        body = draw(st.binary(max_size=300))
    headers: dict[str, str] = dict(draw(authorization) or {})
    content_type = draw(content_types)
    if content_type:
        headers["Content-Type"] = content_type
    encoding = draw(st.sampled_from([None, "gzip", "gzip-raw", "br"]))
    if encoding == "gzip":
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    elif encoding is not None:
        headers["Content-Encoding"] = "gzip" if encoding == "gzip-raw" else encoding
    return path, body, headers


def fuzz(base_url: str) -> dict[int, int]:
    seen: dict[int, int] = {}
    with httpx.Client(base_url=base_url, timeout=30) as client:

        @settings(
            max_examples=300,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(requests())
        def one(request: tuple[str, bytes, dict[str, str]]) -> None:
            path, body, headers = request
            response = client.post(path, content=body, headers=headers)
            assert response.status_code in ALLOWED, (path, body[:200], headers, response.text)
            if response.status_code != 200:
                error = response.json()["error"]
                assert error["code"] and isinstance(error["message"], str)
            else:
                answer = response.json()
                assert answer["accepted"] + len(answer.get("rejected", [])) >= 1
            seen[response.status_code] = seen.get(response.status_code, 0) + 1

        one()
    return seen


async def test_random_requests_never_fail_the_server(collector: CollectorHarness) -> None:
    seen = await asyncio.to_thread(fuzz, collector.url)
    assert {200, 400, 401} <= set(seen), seen  # the strategies reach past parsing and auth
    valid: dict[str, Any] = event("track")
    async with collector.client() as client:
        response = await client.post("/v1/batch", json={"batch": [valid]}, headers=bearer())
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == 2
        health = await client.get("/health")
        assert health.status_code == 200
    stored = await collector.take(WAREHOUSE_PIPELINE)
    assert valid["messageId"] in {s.event["messageId"] for s in stored}
