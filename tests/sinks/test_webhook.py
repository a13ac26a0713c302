"""WebhookSink against a real local HTTP receiver, and its pure helpers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import unquote

import aiohttp
import httpx
import pytest

from fixtures.events import stored
from krenalis import __version__
from krenalis.sinks.base import DELIVERED, Delivered, Rejected, Retry
from krenalis.sinks.webhook import WebhookOptions, WebhookSink, classify, sign, verify_signature
from krenalis.workspace.values import Duration
from sinks.webhook_receiver import ReceivedRequest, Response, WebhookReceiver, unused_url

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def event(n: int, user: str = "user-a") -> dict:
    return {
        "messageId": f"msg-{user}-{n}",
        "anonymousId": user,
        "type": "track",
        "event": "Order Completed",
        "properties": {"n": n, "total": 12.5, "note": "café"},
        "context": {"library": {"name": "analytics-python", "version": "2.3.0"}},
        "receivedAt": "2026-11-26T05:29:02.123Z",
        "timestamp": "2026-11-26T05:29:01.000Z",
        "sentAt": "2026-11-26T05:29:02.000Z",
        "connectionId": "website",
    }


@pytest.fixture
async def rx() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
async def make_sink() -> AsyncIterator:
    sinks: list[WebhookSink] = []

    def make(url: str, **options: object) -> WebhookSink:
        sinks.append(WebhookSink(WebhookOptions(url=url, **options)))  # type: ignore[arg-type]
        return sinks[-1]

    yield make
    for sink in sinks:
        await sink.aclose()


# --- Delivery through a real receiver ----------------------------------------------------------


async def test_delivered_with_headers_and_a_valid_signature(rx, make_sink) -> None:
    sink = make_sink(rx.url, secret=SECRET, headers={"Authorization": "Bearer t0k"})
    events = [event(1)]

    assert await sink.write(stored(events)) == [DELIVERED]

    (request,) = rx.requests
    assert request.method == "POST"
    assert request.json == events[0]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"krenalis-events/{__version__}"
    assert request.headers["idempotency-key"] == "website:msg-user-a-1"
    assert request.headers["authorization"] == "Bearer t0k"
    assert request.headers["webhook-id"] == "website:msg-user-a-1"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert verify_signature(SECRET, request.headers, request.body)
    assert not verify_signature("another-secret", request.headers, request.body)
    assert SECRET not in str(request.headers) and KEY.hex() not in str(request.headers)


async def test_no_signature_without_a_secret(rx, make_sink) -> None:
    assert await make_sink(rx.url).write(stored([event(1)])) == [DELIVERED]
    headers = rx.requests[0].headers
    assert not {"webhook-id", "webhook-timestamp", "webhook-signature"} & set(headers)


async def test_500_is_retried_then_delivered(rx, make_sink) -> None:
    rx.respond_with(Response(500, body="database down"), 200)
    sink = make_sink(rx.url)

    assert await sink.write(stored([event(1)])) == [Retry("HTTP 500: database down")]
    assert await sink.write(stored([event(1)])) == [DELIVERED]
    assert [r.headers["idempotency-key"] for r in rx.requests] == ["website:msg-user-a-1"] * 2


async def test_429_honours_retry_after(rx, make_sink) -> None:
    rx.respond_with(Response(429, headers={"Retry-After": "7"}))

    (outcome,) = await make_sink(rx.url).write(stored([event(1)]))

    assert isinstance(outcome, Retry)
    assert outcome.after == 7


async def test_400_is_rejected_with_status_and_body(rx, make_sink) -> None:
    rx.respond_with(Response(400, body='{"error": "unknown field"}' + "x" * 500))

    (outcome,) = await make_sink(rx.url).write(stored([event(1)]))

    assert isinstance(outcome, Rejected)
    assert outcome.reason.startswith('HTTP 400: {"error": "unknown field"}')
    assert len(outcome.reason) == len("HTTP 400: ") + 200


async def test_501_is_rejected(rx, make_sink) -> None:
    rx.respond_with(501)
    (outcome,) = await make_sink(rx.url).write(stored([event(1)]))
    assert isinstance(outcome, Rejected)
    assert outcome.reason.startswith("HTTP 501")


async def test_redirects_are_not_followed(rx, make_sink) -> None:
    rx.respond_with(Response(302, headers={"Location": rx.base_url + "/elsewhere"}))

    (outcome,) = await make_sink(rx.url).write(stored([event(1)]))

    assert isinstance(outcome, Rejected)
    assert outcome.reason.startswith("HTTP 302")
    assert [r.path for r in rx.requests] == ["/hook"]


async def test_timeout_is_retried_quickly(rx, make_sink) -> None:
    rx.respond_with(Response(200, delay=10))
    sink = make_sink(rx.url, timeout=Duration(0.3))

    started = time.monotonic()
    (outcome,) = await sink.write(stored([event(1)]))

    assert time.monotonic() - started < 3
    assert isinstance(outcome, Retry)
    assert "Timeout" in outcome.reason and "127.0.0.1" in outcome.reason


async def test_connection_refused_is_retried_without_leaking_the_query(make_sink, caplog) -> None:
    sink = make_sink(unused_url() + "?token=query-secret", secret=SECRET)

    with caplog.at_level(logging.DEBUG, logger="krenalis.sinks.webhook"):
        (outcome,) = await sink.write(stored([event(1)]))

    assert isinstance(outcome, Retry)
    assert "ClientConnectorError" in outcome.reason and "127.0.0.1" in outcome.reason
    assert "query-secret" not in outcome.reason
    assert "Webhook did not deliver" in caplog.text
    logged = caplog.text + str([r.__dict__ for r in caplog.records])
    assert "query-secret" not in logged and SECRET not in logged
    assert "query-secret" not in repr(sink)


async def test_batch_mode_sends_one_request_for_all_events(rx, make_sink) -> None:
    events = [event(1), event(2), event(1, "user-b")]
    sink = make_sink(rx.url, batch=True, secret=SECRET)

    assert await sink.write(stored(events)) == [DELIVERED] * 3
    rx.respond_with(503)
    assert await sink.write(stored(events)) == [Retry("HTTP 503")] * 3

    first, second = rx.requests
    assert first.json == {"batch": events}
    assert verify_signature(SECRET, first.headers, first.body)
    keys = "\n".join(f"website:{e['messageId']}" for e in events)
    assert first.headers["idempotency-key"] == hashlib.sha256(keys.encode()).hexdigest()
    assert second.headers["idempotency-key"] == first.headers["idempotency-key"]
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert first.headers["webhook-id"] == first.headers["idempotency-key"]


async def test_batch_mode_rejection_applies_to_every_event(rx, make_sink) -> None:
    rx.respond_with(Response(422, body="bad batch"))
    outcomes = await make_sink(rx.url, batch=True).write(stored([event(1), event(2)]))
    assert outcomes == [Rejected("HTTP 422: bad batch")] * 2


async def test_batch_mode_sends_the_stored_events_under_one_key(rx, make_sink) -> None:
    events = stored([event(1), event(3)])

    outcomes = await make_sink(rx.url, batch=True).write(events)

    assert outcomes == [DELIVERED] * 2
    assert rx.requests[0].body == b'{"batch":[' + events[0].data + b"," + events[1].data + b"]}"
    keys = "website:msg-user-a-1\nwebsite:msg-user-a-3"
    assert rx.requests[0].headers["idempotency-key"] == hashlib.sha256(keys.encode()).hexdigest()


# --- Idempotency keys: one source cannot collide with another ----------------------------------


async def test_two_sources_with_the_same_message_id_get_different_keys(rx, make_sink) -> None:
    shop, blog = event(1), event(1) | {"connectionId": "blog"}  # the same messageId
    assert await make_sink(rx.url).write(stored([shop, blog])) == [DELIVERED] * 2
    keys = {r.json["connectionId"]: r.headers["idempotency-key"] for r in rx.requests}
    assert keys == {"website": "website:msg-user-a-1", "blog": "blog:msg-user-a-1"}


async def test_batch_keys_of_two_sources_with_the_same_message_ids_differ(rx, make_sink) -> None:
    shop = [event(1), event(2)]
    blog = [e | {"connectionId": "blog"} for e in shop]
    sink = make_sink(rx.url, batch=True)
    assert await sink.write(stored(shop)) == [DELIVERED] * 2
    assert await sink.write(stored(blog)) == [DELIVERED] * 2
    first, second = (r.headers["idempotency-key"] for r in rx.requests)
    assert first != second
    keys = "blog:msg-user-a-1\nblog:msg-user-a-2"
    assert second == hashlib.sha256(keys.encode()).hexdigest()


@pytest.mark.parametrize(
    ("message_id", "key"),
    [
        ("3f2b9c1e-8d4a-4c6b-9a51-2e7f0d9b6a13", "website:3f2b9c1e-8d4a-4c6b-9a51-2e7f0d9b6a13"),
        ("a:b/c?d=e&f", "website:a:b/c?d=e&f"),  # visible ASCII is sent as it is
        ("café 100%", "website:caf%C3%A9%20100%25"),  # a header holds ASCII only
        ("line\nbreak", "website:line%0Abreak"),  # a newline would end the header
    ],
)
async def test_a_key_is_readable_and_any_message_id_can_be_sent(
    rx, make_sink, message_id: str, key: str
) -> None:
    assert await make_sink(rx.url).write(stored([event(1) | {"messageId": message_id}])) == [
        DELIVERED
    ]
    received = rx.requests[0].headers["idempotency-key"]
    assert received == key
    source, _, sent_id = received.partition(":")
    assert (source, unquote(sent_id)) == ("website", message_id)


async def test_an_event_without_a_message_id_gets_no_key(rx, make_sink) -> None:
    assert await make_sink(rx.url).write(stored([event(1) | {"messageId": None}])) == [DELIVERED]
    assert "idempotency-key" not in rx.requests[0].headers


async def test_a_failed_event_holds_back_the_later_events_of_its_user(rx, make_sink) -> None:
    def fail_first_of_a(request: ReceivedRequest) -> int:
        return 500 if request.json["messageId"] == "msg-user-a-1" else 200

    rx.respond_with(fail_first_of_a)
    events = [event(1), event(1, "user-b"), event(2), event(2, "user-b"), event(3)]

    outcomes = await make_sink(rx.url).write(stored(events))

    assert isinstance(outcomes[0], Retry) and outcomes[0].reason.startswith("HTTP 500")
    assert outcomes[1] == outcomes[3] == DELIVERED
    assert outcomes[2] == outcomes[4] == Retry("an earlier event of this user is not delivered yet")
    sent = [body["messageId"] for body in rx.bodies]
    assert "msg-user-a-2" not in sent and "msg-user-a-3" not in sent
    assert [m for m in sent if "user-b" in m] == ["msg-user-b-1", "msg-user-b-2"]


async def test_a_users_events_are_sent_one_at_a_time_in_order(rx, make_sink) -> None:
    rx.respond_with(Response(200, delay=0.05))
    events = [event(n) for n in range(5)]

    assert await make_sink(rx.url).write(stored(events)) == [DELIVERED] * 5

    assert rx.max_in_flight == 1
    assert rx.bodies == events


async def test_events_are_grouped_by_user_key(rx, make_sink) -> None:
    # A userId stands for the user when there is no anonymousId; no user at all: no order.
    rx.respond_with(Response(200, delay=0.2))
    by_user_id = [event(n) | {"anonymousId": None, "userId": "u-9"} for n in range(3)]
    no_user = [event(n, f"nobody-{n}") | {"anonymousId": ""} for n in range(3)]

    started = time.monotonic()
    assert await make_sink(rx.url).write(stored(by_user_id + no_user)) == [DELIVERED] * 6

    assert time.monotonic() - started >= 0.55  # the user's three, one after the other
    assert rx.max_in_flight == 4  # the user's current one and the three without a user
    sent = [body["messageId"] for body in rx.bodies if body.get("userId") == "u-9"]
    assert sent == ["msg-user-a-0", "msg-user-a-1", "msg-user-a-2"]


async def test_concurrency_limit_is_respected(rx, make_sink) -> None:
    rx.respond_with(Response(200, delay=0.3))
    events = [event(1, f"user-{n}") for n in range(12)]

    assert await make_sink(rx.url, max_concurrency=3).write(stored(events)) == [DELIVERED] * 12

    assert rx.max_in_flight == 3
    assert len(rx.requests) == 12


async def test_rate_limit_spaces_requests(rx, make_sink) -> None:
    events = [event(1, f"user-{n}") for n in range(30)]
    sink = make_sink(rx.url, rate_limit=20)

    started = time.monotonic()
    assert await sink.write(stored(events)) == [DELIVERED] * 30

    # 20 tokens at once, then 10 more at 20/s: at least 0.5 s.
    assert time.monotonic() - started >= 0.45


async def test_the_body_is_the_event_as_stored(rx, make_sink) -> None:
    # The stream's bytes go out as they are: never decoded and written back.
    events = stored([event(1, "user-b") | {"properties": {"é": "ü", "n": 1.5}}])
    assert await make_sink(rx.url).write(events) == [DELIVERED]
    assert rx.requests[0].body == events[0].data


async def test_empty_write_sends_nothing(rx, make_sink) -> None:
    assert await make_sink(rx.url).write(stored([])) == []
    assert rx.requests == []


async def test_healthcheck_uses_head_and_never_posts(rx, make_sink) -> None:
    rx.respond_with(405)  # any answer proves the endpoint is reachable
    await make_sink(rx.url).healthcheck()
    assert [r.method for r in rx.requests] == ["HEAD"]


async def test_healthcheck_raises_when_unreachable(make_sink) -> None:
    with pytest.raises(ConnectionError, match="127.0.0.1"):
        await make_sink(unused_url()).healthcheck()


async def test_aclose_closes_only_its_own_client(rx) -> None:
    async with aiohttp.ClientSession() as session:
        shared = WebhookSink(WebhookOptions(url=rx.url), session=session)
        assert await shared.write(stored([event(1)])) == [DELIVERED]
        await shared.aclose()
        assert not session.closed
    own = WebhookSink(WebhookOptions(url=rx.url))
    assert await own.write(stored([event(1)])) == [DELIVERED]
    assert not own.closed
    await own.aclose()
    assert own.closed


def test_options_repr_masks_secrets() -> None:
    options = WebhookOptions(
        url="https://user:pw@example.com:8443/hook?token=zzz",
        secret=SECRET,
        headers={"Authorization": "Bearer t0k"},
    )
    shown = repr(options)
    assert shown.startswith("WebhookOptions(url='https://example.com:8443/hook?***', secret='***'")
    assert "{'Authorization': '***'}" in shown
    for secret in (SECRET, "t0k", "zzz", "pw"):
        assert secret not in shown


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("ftp://example.com/hook", {}),
        ("/relative/hook", {}),
        ("http://example.com/hook", {"max_concurrency": 0}),
        ("http://example.com/hook", {"timeout": 0}),
        ("http://example.com/hook", {"rate_limit": -1}),
    ],
)
def test_bad_settings_fail_at_construction(url: str, options: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(options), "url")):
        WebhookOptions(url=url, **options)


# --- classify ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_classify_2xx_is_delivered(status: int) -> None:
    assert isinstance(classify(status, {}), Delivered)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 507, 599])
def test_classify_transient_statuses_are_retried(status: int) -> None:
    assert classify(status, {}, "oops") == Retry(f"HTTP {status}: oops")


@pytest.mark.parametrize("status", [301, 302, 304, 400, 401, 403, 404, 410, 413, 422, 501, 505])
def test_classify_permanent_statuses_are_rejected(status: int) -> None:
    assert classify(status, {}, "  no  ") == Rejected(f"HTTP {status}: no")


def test_classify_retry_after_seconds_for_429_and_503() -> None:
    assert classify(429, {"Retry-After": "7"}) == Retry("HTTP 429", after=7)
    assert classify(503, {"retry-after": " 120 "}) == Retry("HTTP 503", after=120)
    assert classify(429, httpx.Headers({"RETRY-AFTER": "1.5"})).after == 1.5  # type: ignore[union-attr]


def test_classify_retry_after_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    outcome = classify(503, {"Retry-After": format_datetime(when, usegmt=True)})
    assert isinstance(outcome, Retry) and outcome.after is not None
    assert 25 <= outcome.after <= 31
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert classify(429, {"Retry-After": past}) == Retry("HTTP 429", after=0)


def test_classify_ignores_bad_or_irrelevant_retry_after() -> None:
    assert classify(429, {"Retry-After": "soon"}) == Retry("HTTP 429")
    assert classify(500, {"Retry-After": "7"}) == Retry("HTTP 500")


# --- signatures --------------------------------------------------------------------------------


def test_signature_scheme_is_standard_webhooks() -> None:
    body = b'{"messageId":"m1"}'
    headers = sign(SECRET, "website:m1", body, timestamp=1_700_000_000)
    digest = hmac.new(KEY, b"website:m1.1700000000." + body, hashlib.sha256).digest()
    assert headers == {
        "webhook-id": "website:m1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }
    # A secret that is not "whsec_..." is its own key (the UTF-8 bytes), as before.
    plain = sign("plain secret", "id", body, timestamp=1)["webhook-signature"]
    expected = hmac.new(b"plain secret", b"id.1." + body, hashlib.sha256).digest()
    assert plain == "v1," + base64.b64encode(expected).decode()


def test_verify_signature_checks_body_secret_id_and_age() -> None:
    body = b'{"messageId":"m1"}'
    now = int(time.time())
    assert verify_signature(SECRET, sign(SECRET, "m1", body), body)
    assert verify_signature(SECRET, sign(SECRET, "m1", body), body.decode())
    assert verify_signature([SECRET, "old"], sign(SECRET, "m1", body), body)
    assert not verify_signature(SECRET, sign(SECRET, "m1", body), body + b" ")
    assert not verify_signature("wrong", sign(SECRET, "m1", body), body)
    assert not verify_signature(SECRET, sign(SECRET, "m1", body) | {"webhook-id": "m2"}, body)
    assert not verify_signature(SECRET, sign(SECRET, "m1", body, timestamp=now - 301), body)
    assert not verify_signature(SECRET, sign(SECRET, "m1", body, timestamp=now + 301), body)
    assert verify_signature(
        SECRET, sign(SECRET, "m1", body, timestamp=now - 10), body, tolerance=60
    )
    upper = {k.upper(): v for k, v in sign(SECRET, "m1", body).items()}
    assert verify_signature(SECRET, upper, body)  # header names in any case
    assert verify_signature(SECRET, httpx.Headers(sign(SECRET, "m1", body)), body)
    rotating = sign(["whsec_" + base64.b64encode(b"o" * 24).decode(), SECRET], "m1", body)
    assert len(rotating["webhook-signature"].split(" ")) == 2
    assert verify_signature(SECRET, rotating, body)
    signed = sign(SECRET, "m1", body)
    for name in signed:
        assert not verify_signature(SECRET, {k: v for k, v in signed.items() if k != name}, body)
    for garbage in ["", "v1", "v1,", "v1,!!!", "v2," + signed["webhook-signature"][3:]]:
        assert not verify_signature(SECRET, signed | {"webhook-signature": garbage}, body)
    for garbage in ["", "abc", "-5", "1e9", "١٢٣", str(now) + ".5", "9" * 5000]:
        assert not verify_signature(SECRET, signed | {"webhook-timestamp": garbage}, body)


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!", "whsec_===="])
def test_a_whsec_secret_must_hold_a_key(secret: str) -> None:
    with pytest.raises(ValueError, match="base64") as info:
        WebhookOptions(url="https://example.com/hook", secret=secret)
    hidden = secret.removeprefix("whsec_")
    assert not hidden or hidden not in str(info.value)  # the secret is never shown
    with pytest.raises(ValueError, match=r"secret\[1\]"):
        WebhookOptions(url="https://example.com/hook", secret=[SECRET, secret])


async def test_the_proxy_the_environment_names_is_used_unless_no_proxy_leaves_the_host_out(
    rx, monkeypatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", rx.base_url)  # the receiver plays the proxy
    url = "http://hooks.example.invalid/hook"
    sink = WebhookSink(WebhookOptions(url=url))
    try:
        assert await sink.write(stored([event(1)])) == [DELIVERED]
    finally:
        await sink.aclose()
    assert rx.requests[-1].headers["host"] == "hooks.example.invalid"

    monkeypatch.setenv("NO_PROXY", "hooks.example.invalid")
    direct = WebhookSink(WebhookOptions(url=url, timeout=Duration(3.0)))
    try:
        (outcome,) = await direct.write(stored([event(2)]))
    finally:
        await direct.aclose()
    assert isinstance(outcome, Retry) and "hooks.example.invalid" in outcome.reason
    assert len(rx.requests) == 1


async def test_a_head_answered_with_a_body_does_not_spoil_the_next_post() -> None:
    """Some receivers answer the healthcheck's HEAD with a body: those bytes must not be read
    as the answer of the POST that reuses the connection."""
    posts: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                if head.startswith(b"POST"):
                    posts.append(body)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")  # HEAD too
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = WebhookSink(WebhookOptions(url=f"http://127.0.0.1:{port}/hook", max_concurrency=1))
    try:
        await sink.healthcheck()
        assert await sink.write(stored([event(1), event(2)])) == [DELIVERED, DELIVERED]
        assert len(posts) == 2
    finally:
        await sink.aclose()
        server.close()
        await server.wait_closed()
