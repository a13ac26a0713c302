"""Bad requests get a JSON error naming the problem, with the right status, and store nothing."""

from __future__ import annotations

import base64
import gzip
import json
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from helpers_collector import (
    CRM_PIPELINE,
    OTHER_KEY,
    WAREHOUSE_PIPELINE,
    WRITE_KEY,
    CollectorHarness,
    basic,
    bearer,
    event,
)

from krenalis.events import MAX_BATCH_EVENTS, MAX_BODY_BYTES, MAX_EVENT_BYTES


def assert_error(response: httpx.Response, status: int, code: str, message: str = "") -> str:
    """The answer is `status` with {"error": {"code", "message"}}; `message` is in its text."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert message in body["error"]["message"], body["error"]["message"]
    return body["error"]["message"]


def batch_body(**extra: Any) -> bytes:
    return json.dumps({"batch": [event("track")], **extra}).encode()


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """The body without Content-Length (Transfer-Encoding: chunked)."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture
async def client(collector: CollectorHarness) -> AsyncIterator[httpx.AsyncClient]:
    async with collector.client() as http:
        yield http
    # Whatever was refused left nothing in the stream.
    assert await collector.stream_messages() == 0


async def test_missing_write_key(client: httpx.AsyncClient) -> None:
    for path in ("/v1/batch", "/v1/events"):
        response = await client.post(path, content=batch_body())
        message = assert_error(response, 401, "Unauthorized", "write key is missing")
        assert "Authorization: Bearer" in message
    response = await client.post("/v1/track", json=event("track"))
    assert_error(response, 401, "Unauthorized", "write key is missing")


async def test_unknown_write_key(client: httpx.AsyncClient) -> None:
    for headers in (bearer(OTHER_KEY), basic(OTHER_KEY), bearer(WRITE_KEY[:-1])):
        response = await client.post("/v1/batch", content=batch_body(), headers=headers)
        assert_error(response, 401, "Unauthorized", "Authorization header is not valid")
    # The key as the Basic *password* is not the Segment form: the user name is the key.
    response = await client.post(
        "/v1/batch", content=batch_body(), headers=basic("someone", WRITE_KEY)
    )
    assert_error(response, 401, "Unauthorized")
    response = await client.post("/v1/batch", content=batch_body(writeKey=OTHER_KEY))
    assert_error(response, 401, "Unauthorized", "request body does not exist")
    response = await client.post("/v1/events", content=batch_body(writeKey=OTHER_KEY))
    assert_error(response, 401, "Unauthorized", "request body does not exist")
    # A valid key in the body does not rescue an invalid one in the header.
    response = await client.post(
        "/v1/events", content=batch_body(writeKey=WRITE_KEY), headers=bearer(OTHER_KEY)
    )
    assert_error(response, 401, "Unauthorized")


async def test_malformed_authorization(client: httpx.AsyncClient) -> None:
    not_utf8 = base64.b64encode(b"\xff\xfe:").decode()
    for value in (
        "Token abc",
        "Bearer",
        WRITE_KEY,
        "Basic",
        "Basic !!!not-base64!!!",
        f"Basic {not_utf8}",
        "Digest username=x",
    ):
        response = await client.post(
            "/v1/batch", content=batch_body(), headers={"Authorization": value}
        )
        assert_error(response, 400, "BadRequest", "Authorization header is invalid")


async def test_writekey_of_the_wrong_kind(client: httpx.AsyncClient) -> None:
    for value in (123, None, ["k"]):
        response = await client.post("/v1/events", content=batch_body(writeKey=value))
        assert_error(response, 400, "BadRequest", "property 'writeKey' is not a valid string")
    response = await client.post("/v1/events", content=batch_body(writeKey=""))
    assert_error(response, 400, "BadRequest", "property 'writeKey' cannot be empty")


async def test_invalid_json(client: httpx.AsyncClient) -> None:
    for body in (b"{", b'{"batch": [}', b"nul", b"\xff\xfe", b'[{"type": "track",]'):
        response = await client.post("/v1/events", content=body, headers=bearer())
        assert_error(response, 400, "BadRequest", "error parsing the request body as JSON")
    response = await client.post("/v1/track", content=b"{", headers=bearer())
    message = assert_error(response, 400, "BadRequest", "error parsing the request body as JSON")
    assert "not terminated" in message
    # Deep nesting is JSON: its one event is rejected alone (tests/security/test_bad_input.py).
    nested = b"[" * 100_000 + b"]" * 100_000
    response = await client.post("/v1/events", content=nested, headers=bearer())
    assert response.status_code == 200
    assert response.json()["rejected"][0]["index"] == 0


async def test_body_shapes_refused_as_a_whole(client: httpx.AsyncClient) -> None:
    for body, message in (
        (b"", "request's body is empty"),
        (b"[]", "batch must contain at least one event"),
        (b'{"batch": []}', "batch must contain at least one event"),
        (b'{"batch": {}}', "property 'batch' is not a valid array"),
        (b"42", "request's content is not a valid JSON object or array"),
        (b'"text"', "request's content is not a valid JSON object or array"),
        (b'{"batch": [], "sentAt": 5}', ""),
        (b'{"batch": [{}], "sentAt": "yesterday"}', "sentAt"),
        (b'{"batch": [{}], "context": []}', "property 'context' is not a valid object"),
    ):
        response = await client.post("/v1/events", content=body, headers=bearer())
        assert_error(response, 400, "BadRequest", message)
    response = await client.post("/v1/batch", content=b"", headers=bearer())
    assert_error(response, 400, "BadRequest", "request's body is empty")


async def test_wrong_content_type_and_charset(client: httpx.AsyncClient) -> None:
    for content_type in (
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/html",
    ):
        response = await client.post(
            "/v1/batch",
            content=batch_body(),
            headers={**bearer(), "Content-Type": content_type},
        )
        assert_error(response, 415, "UnsupportedMediaType", "content type must be")
    for content_type in (
        "application/json; charset=iso-8859-1",
        "text/plain; charset=utf-16",
        "application/json; charset=latin1",
    ):
        response = await client.post(
            "/v1/batch",
            content=batch_body(),
            headers={**bearer(), "Content-Type": content_type},
        )
        assert_error(response, 415, "UnsupportedMediaType", "charset must be 'utf-8'")


async def test_bad_content_encoding(client: httpx.AsyncClient) -> None:
    data = batch_body()
    for encoding in ("br", "deflate", "compress", "zstd", "gzip, br"):
        response = await client.post(
            "/v1/batch", content=data, headers={**bearer(), "Content-Encoding": encoding}
        )
        assert_error(response, 415, "UnsupportedMediaType", "Content-Encoding")
    compressed = gzip.compress(data)
    gz = {**bearer(), "Content-Encoding": "gzip"}
    for bad in (
        data,  # not compressed at all
        compressed[:-6],  # truncated
        compressed[:5],  # a header only
        compressed[:30] + b"\x00" * 10 + compressed[40:],  # corrupted
        compressed + b"trailing garbage",
        zlib.compress(data),  # zlib, not gzip
    ):
        response = await client.post("/v1/batch", content=bad, headers=gz)
        assert_error(response, 415, "UnsupportedMediaType", "not valid gzip")
    response = await client.post("/v1/batch", content=b"", headers=gz)
    assert response.status_code in (400, 415)


async def test_body_over_500_kib(client: httpx.AsyncClient) -> None:
    # A valid batch of small events just over the limit.
    events = []
    while len(json.dumps({"batch": events})) <= MAX_BODY_BYTES:
        events.extend(event("page") for _ in range(100))
    big = json.dumps({"batch": events}).encode()
    assert len(big) > MAX_BODY_BYTES
    response = await client.post("/v1/batch", content=big, headers=bearer())
    assert_error(response, 413, "PayloadTooLarge", str(MAX_BODY_BYTES))
    # Without Content-Length: the limit applies to what arrives.
    response = await client.post("/v1/batch", content=chunked(big), headers=bearer())
    assert_error(response, 413, "PayloadTooLarge")
    # Compressed, the limit applies to the inflated body.
    small = gzip.compress(big)
    assert len(small) < MAX_BODY_BYTES
    gz = {**bearer(), "Content-Encoding": "gzip"}
    response = await client.post("/v1/batch", content=small, headers=gz)
    assert_error(response, 413, "PayloadTooLarge")
    response = await client.post("/v1/batch", content=chunked(small, 1000), headers=gz)
    assert_error(response, 413, "PayloadTooLarge")


async def test_body_at_the_limit_is_accepted(collector: CollectorHarness) -> None:
    """Exactly MAX_BODY_BYTES is still fine (the limit is inclusive), as a chunked gzip too."""
    body = json.dumps({"batch": [event("page")]}).encode()
    body = body + b" " * (MAX_BODY_BYTES - len(body))
    assert len(body) == MAX_BODY_BYTES
    async with collector.client() as client:
        response = await client.post("/v1/batch", content=body, headers=bearer())
        assert response.status_code == 200, response.text
        gz = {**bearer(), "Content-Encoding": "gzip"}
        response = await client.post(
            "/v1/batch", content=chunked(gzip.compress(body), 100), headers=gz
        )
        assert response.status_code == 200, response.text
    assert len(await collector.take(WAREHOUSE_PIPELINE, expected=1)) == 1  # same messageId


async def test_gzip_bomb_is_refused_quickly(client: httpx.AsyncClient) -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    data = b"".join(bomb.compress(zeros) for _ in range(50)) + bomb.flush()  # 50 MiB of zeros
    assert len(data) < 100_000
    gz = {**bearer(), "Content-Encoding": "gzip"}
    for content in (data, chunked(data, 4096)):
        started = time.monotonic()
        response = await client.post("/v1/batch", content=content, headers=gz)
        elapsed = time.monotonic() - started
        assert_error(response, 413, "PayloadTooLarge")
        assert elapsed < 1.0, f"the bomb took {elapsed:.2f}s: was it inflated?"


async def test_endless_chunked_gzip_that_inflates_to_nothing(client: httpx.AsyncClient) -> None:
    """Empty gzip members inflate to nothing: the bytes received are limited all the same."""
    empty_member = gzip.compress(b"")
    data = empty_member * (MAX_BODY_BYTES // len(empty_member) + 10)
    gz = {**bearer(), "Content-Encoding": "gzip"}
    response = await client.post("/v1/batch", content=chunked(data), headers=gz)
    assert_error(response, 413, "PayloadTooLarge")


async def test_batch_over_20000_events(client: httpx.AsyncClient) -> None:
    too_many = b"[" + b",".join([b"{}"] * (MAX_BATCH_EVENTS + 1)) + b"]"
    assert len(too_many) < MAX_BODY_BYTES
    response = await client.post("/v1/events", content=too_many, headers=bearer())
    assert_error(response, 400, "BadRequest", "batch contains too many events")
    envelope = b'{"batch":' + too_many + b"}"
    response = await client.post("/v1/batch", content=envelope, headers=bearer())
    assert_error(response, 400, "BadRequest", "batch contains too many events")


async def test_event_over_32_kib_is_rejected_alone(collector: CollectorHarness) -> None:
    small = event("track")
    large = event("track", properties={"blob": "x" * MAX_EVENT_BYTES})
    fits = event("page", properties={"blob": "y" * (MAX_EVENT_BYTES - 300)})
    assert len(json.dumps(fits)) <= MAX_EVENT_BYTES
    async with collector.client() as client:
        response = await client.post(
            "/v1/batch", json={"batch": [small, large, fits]}, headers=bearer()
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["accepted"], answer["stored"]) == (2, 3)
        assert answer["rejected"] == [
            {"index": 1, "reason": f"event is larger than {MAX_EVENT_BYTES} bytes"}
        ]
        response = await client.post("/v1/track", json=large, headers=bearer())
        assert response.status_code == 200
        assert response.json()["rejected"] == [
            {"index": 0, "reason": f"event is larger than {MAX_EVENT_BYTES} bytes"}
        ]
    warehouse = await collector.take(WAREHOUSE_PIPELINE, expected=2)
    assert {s.event["messageId"] for s in warehouse} == {small["messageId"], fits["messageId"]}
    crm = await collector.take(CRM_PIPELINE, expected=1)
    assert crm[0].event["messageId"] == small["messageId"]


async def test_wrong_method_and_unknown_paths(client: httpx.AsyncClient) -> None:
    for path in ("/v1/events", "/v1/batch", "/v1/track", "/v1/events/identify"):
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            response = await client.request(method, path, headers=bearer())
            assert_error(response, 405, "MethodNotAllowed")
            assert "POST" in response.headers["allow"]
    for path in ("/", "/v1", "/v2/events", "/v1/events/nope", "/v1/events/track/x", "/v1/login"):
        response = await client.post(path, content=batch_body(), headers=bearer())
        assert_error(response, 404, "NotFound", path.rstrip("/") or "/")
    response = await client.get("/v1/nothing")
    assert_error(response, 404, "NotFound")


async def test_errors_carry_no_cache_and_cors_headers(client: httpx.AsyncClient) -> None:
    origin = "https://app.example.org"
    response = await client.post(
        "/v1/batch", content=batch_body(), headers={**bearer(OTHER_KEY), "Origin": origin}
    )
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "*"  # no source lists origins
    assert "no-store" in response.headers["cache-control"]
