"""Webhook signatures follow Standard Webhooks: what the sink sends verifies with the
`standardwebhooks` package (the reference verifier), for each of two rotated secrets, through a
real HTTP receiver; a retry carries the same webhook-id; `verify_signature` never raises on what
a request may hold."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from fixtures.events import stored
from krenalis.errors import WorkspaceError
from krenalis.sinks.base import DELIVERED, Retry
from krenalis.sinks.webhook import WebhookOptions, WebhookSink, sign, verify_signature
from krenalis.workspace.load import parse_workspace
from sinks.webhook_receiver import ReceivedRequest, WebhookReceiver


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


NEW, OLD = new_secret(), new_secret()


def event(n: int, user: str = "user-a") -> dict:
    return {
        "messageId": f"msg-{n}",
        "anonymousId": user,
        "type": "track",
        "event": "Order Completed",
        "properties": {"n": n, "note": "café ✓"},
        "connectionId": "website",
    }


@pytest.fixture
async def rx() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as receiver:
        yield receiver


async def deliver(url: str, events: list[dict], **options: object) -> list:
    sink = WebhookSink(WebhookOptions(url=url, **options))  # type: ignore[arg-type]
    try:
        return await sink.write(stored(events))
    finally:
        await sink.aclose()


def assert_verifies(secret: str | bytes, request: ReceivedRequest) -> None:
    """The reference verifier accepts the request as received (it raises otherwise)."""
    assert Webhook(secret).verify(request.body, request.headers) == request.json


@pytest.mark.parametrize("batch", [False, True])
async def test_each_of_two_rotated_secrets_verifies_with_the_reference(
    rx: WebhookReceiver, batch: bool
) -> None:
    assert (
        await deliver(rx.url, [event(1), event(2)], secret=[NEW, OLD], batch=batch)
        == [DELIVERED] * 2
    )
    for request in rx.requests:
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        assert_verifies(NEW, request)  # a receiver that already moved to the new secret
        assert_verifies(OLD, request)  # and one still on the old one
        with pytest.raises(WebhookVerificationError):
            Webhook(new_secret()).verify(request.body, request.headers)
        assert verify_signature(NEW, request.headers, request.body)
        assert verify_signature([OLD], request.headers, request.body)


async def test_a_secret_from_the_workspace_file_signs(rx: WebhookReceiver) -> None:
    text = f"""
sources:
  website:
    write_key: "{"k" * 32}"
destinations:
  hook:
    type: webhook
    url: "{rx.url}"
    secret:
      - ${{HOOK_SECRET}}
      - ${{HOOK_SECRET_OLD}}
"""
    env = {"HOOK_SECRET": NEW, "HOOK_SECRET_OLD": OLD}
    options = parse_workspace(text, environ=env).destinations["hook"].options
    sink = options.build()
    try:
        assert await sink.write(stored([event(1)])) == [DELIVERED]
    finally:
        await sink.aclose()
    assert_verifies(NEW, rx.requests[0])
    assert_verifies(OLD, rx.requests[0])


async def test_a_retry_carries_the_same_id_and_a_fresh_signature(rx: WebhookReceiver) -> None:
    rx.respond_with(503, 200)
    assert await deliver(rx.url, [event(1)], secret=NEW) == [Retry("HTTP 503")]
    assert await deliver(rx.url, [event(1)], secret=NEW) == [DELIVERED]
    first, second = rx.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "website:msg-1"
    for request in (first, second):
        assert_verifies(NEW, request)


async def test_an_event_without_a_message_id_still_gets_a_stable_id(rx: WebhookReceiver) -> None:
    rx.respond_with(500, 200)
    no_id = event(1) | {"messageId": None}
    await deliver(rx.url, [no_id], secret=NEW)
    await deliver(rx.url, [no_id], secret=NEW)
    first, second = rx.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert_verifies(NEW, second)


async def test_a_secret_written_before_the_standard_still_signs(rx: WebhookReceiver) -> None:
    plain = "an old shared secret"
    assert await deliver(rx.url, [event(1)], secret=plain) == [DELIVERED]
    assert_verifies(plain.encode(), rx.requests[0])
    assert_verifies("whsec_" + base64.b64encode(plain.encode()).decode(), rx.requests[0])


def test_a_workspace_secret_that_is_not_a_key_is_refused_without_being_shown() -> None:
    text = f"""
sources:
  website:
    write_key: "{"k" * 32}"
destinations:
  hook:
    type: webhook
    url: https://example.com/hook
    secret: ${{HOOK_SECRET}}
"""
    with pytest.raises(WorkspaceError) as info:
        parse_workspace(text, environ={"HOOK_SECRET": "whsec_Zx9-not*base64"})
    assert 'destination "hook": secret: a "whsec_" secret must go on with the base64' in str(
        info.value
    )
    assert "Zx9" not in str(info.value)


# --- verify_signature on whatever a request holds ----------------------------------------------

NAMES = ["webhook-id", "webhook-timestamp", "webhook-signature", "Webhook-Signature", "other"]
header_values = st.one_of(
    st.text(),
    st.from_regex(r"v1,[A-Za-z0-9+/=]{0,60}( v1,[A-Za-z0-9+/=]{0,60})?", fullmatch=True),
    st.from_regex(r"[0-9]{1,12}", fullmatch=True),
    st.integers().map(str),
)
headers = st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=20), header_values)


# Text no sender could have signed (lone surrogates), timestamps int() would choke on or misread.
NOW = str(int(time.time()))
STRANGE = [
    {"webhook-id": "\ud800", "webhook-timestamp": NOW, "webhook-signature": "v1,AAAA"},
    {"webhook-id": "m", "webhook-timestamp": "9" * 5000, "webhook-signature": "v1,AAAA"},
    {"webhook-id": "m", "webhook-timestamp": "١٢٣", "webhook-signature": "v1,AAAA"},
    {"webhook-id": "m", "webhook-timestamp": NOW, "webhook-signature": "v1,\udc80 v1"},
]


@settings(max_examples=500, deadline=None)
@given(headers=headers, body=st.binary() | st.text(), secret=st.sampled_from([NEW, "plain"]))
@example(headers=STRANGE[0], body="x", secret=NEW)
@example(headers=STRANGE[1], body=b"x", secret=NEW)
@example(headers=STRANGE[2], body=b"x", secret=NEW)
@example(headers=STRANGE[3], body="\udc80", secret=NEW)
def test_verify_signature_never_raises_on_what_a_request_holds(
    headers: dict[str, str], body: bytes | str, secret: str
) -> None:
    assert verify_signature(secret, headers, body) is False


@settings(max_examples=200, deadline=None)
@given(message_id=st.text(min_size=1), body=st.binary())
def test_what_is_signed_verifies_and_nothing_else(message_id: str, body: bytes) -> None:
    try:
        message_id.encode()
    except UnicodeEncodeError:  # a lone surrogate: no header can carry it
        return
    signed = sign([OLD, NEW], message_id, body)
    assert verify_signature(NEW, signed, body)
    assert not verify_signature(NEW, signed, body + b"x")
    assert not verify_signature(NEW, signed | {"webhook-id": message_id + "x"}, body)
