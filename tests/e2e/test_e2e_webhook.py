"""End to end with a real HTTP receiver: retries, dead letters, isolation, order, heartbeats."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from e2e_support import (
    OTHER_KEY,
    WRITE_KEY,
    collector_answer,
    file_events,
    jetstream,
    make_event,
    stream_empty,
    stream_messages,
    subject_counts,
    wait_for,
)

from krenalis.stream.deadletters import list_dead_letters
from krenalis.stream.layout import STREAM, consumer_name
from sinks.webhook_receiver import ReceivedRequest, Response, WebhookReceiver


def posts(rx: WebhookReceiver) -> list[ReceivedRequest]:
    return [r for r in rx.requests if r.method == "POST"]


async def test_a_5xx_is_retried_until_delivered_and_a_400_is_dead_lettered(deployment):
    async with (
        WebhookReceiver(500, 200) as flaky,
        WebhookReceiver(Response(400, body="unknown field 'plan'")) as strict,
        jetstream(deployment.nats_url) as js,
    ):
        deployment.write_workspace(f"""\
sources:
  web:
    write_key: "{WRITE_KEY}"
  app:
    write_key: "{OTHER_KEY}"
destinations:
  flaky:
    type: webhook
    url: "{flaky.url}"
  strict:
    type: webhook
    url: "{strict.url}"
pipelines:
  web-flaky:
    source: web
    to: flaky
  app-strict:
    source: app
    to: strict
""")
        serve = deployment.start("serve")
        await serve.wait_healthy()
        await collector_answer(serve.base_url, [make_event("retry-me")])
        await collector_answer(
            serve.base_url, [make_event("reject-1"), make_event("reject-2", user="u2")], OTHER_KEY
        )

        # 500, then 200: delivered by the first retry, about a second later.
        await wait_for(lambda: len(posts(flaky)) >= 2, what="the retry", processes=[serve])
        first, second = posts(flaky)
        assert first.json["messageId"] == second.json["messageId"] == "retry-me"
        assert second.headers["idempotency-key"] == "web:retry-me"
        assert 0.4 <= second.at - first.at <= 3.0, second.at - first.at

        # 400: dead-lettered with the reason, once, and removed from EVENTS.
        letters = await wait_for(
            lambda: letters_of(js, "app-strict", 2), what="2 dead letters", processes=[serve]
        )
        assert sorted(letter.message_id for letter in letters) == ["reject-1", "reject-2"]
        for letter in letters:
            assert letter.pipeline == "app-strict"
            assert letter.reason == "HTTP 400: unknown field 'plan'"
            assert letter.attempts == 1
            assert letter.first_attempt
        await wait_for(lambda: stream_empty(js), what="EVENTS to empty", processes=[serve])
        await asyncio.sleep(1.0)  # no further request may come
        assert len(posts(strict)) == 2  # a 400 is not retried
        assert len(posts(flaky)) == 2
        assert await list_dead_letters(js, "web-flaky") == []
        assert serve.stop() == 0


async def letters_of(js, pipeline: str, count: int):
    letters = await list_dead_letters(js, pipeline)
    return letters if len(letters) >= count else None


async def test_a_hanging_webhook_does_not_slow_another_pipeline(deployment, tmp_path: Path):
    out = tmp_path / "archive"
    async with (
        WebhookReceiver(Response(200, delay=30)) as hanging,
        jetstream(deployment.nats_url) as js,
    ):
        deployment.write_workspace(f"""\
sources:
  web:
    write_key: "{WRITE_KEY}"
destinations:
  slow:
    type: webhook
    url: "{hanging.url}"
    timeout: 1s
  archive:
    type: file
    path: "{out}"
pipelines:
  web-slow:
    source: web
    to: slow
  web-file:
    source: web
    to: archive
""")
        serve = deployment.start("serve")
        await serve.wait_healthy()
        for round_ in range(4):
            events = [make_event(f"h{round_}-{i}", user=f"u{i}") for i in range(10)]
            posted = time.monotonic()
            await collector_answer(serve.base_url, events)
            want = 10 * (round_ + 1)
            await wait_for(
                lambda want=want: len(file_events(out)) >= want,
                timeout=5,
                interval=0.02,
                what=f"round {round_} in the file while the webhook hangs",
                processes=[serve],
            )
            assert time.monotonic() - posted < 3.0
            await asyncio.sleep(0.5)
        # The webhook pipeline is stuck: its events are all still in EVENTS, none delivered.
        counts = await subject_counts(js)
        assert counts.get("events.v1.web-slow.0") == 40, counts
        assert "events.v1.web-file.0" not in counts
        assert len(posts(hanging)) >= 10  # it was tried (and timed out), not skipped
        assert serve.log_count("Timeout: no answer from 127.0.0.1 within 1s") >= 1
        assert len(file_events(out)) == 40
        assert serve.stop() == 0


async def test_a_users_events_stay_in_order_while_other_users_flow(deployment):
    answers: list[tuple[str, int, float]] = []
    lock = threading.Lock()

    def respond(request: ReceivedRequest) -> int:
        message_id = request.json["messageId"]
        with lock:
            seen = any(m == message_id for m, _, _ in answers)
            status = 500 if message_id == "a1" and not seen else 200
            answers.append((message_id, status, request.at))
        return status

    events = [
        make_event("a1", user="user-a"),
        make_event("a2", user="user-a"),
        make_event("b1", user="user-b"),
        make_event("a3", user="user-a"),
        make_event("b2", user="user-b"),
        make_event("b3", user="user-b"),
    ]
    async with WebhookReceiver(respond) as rx, jetstream(deployment.nats_url) as js:
        deployment.write_workspace(f"""\
sources:
  web:
    write_key: "{WRITE_KEY}"
destinations:
  hook:
    type: webhook
    url: "{rx.url}"
pipelines:
  web-hook:
    source: web
    to: hook
""")
        serve = deployment.start("serve")
        await serve.wait_healthy()
        await collector_answer(serve.base_url, events)
        await wait_for(lambda: stream_empty(js), what="every event delivered", processes=[serve])
        await asyncio.sleep(0.5)

    delivered = [m for m, status, _ in answers if status == 200]
    assert sorted(delivered) == ["a1", "a2", "a3", "b1", "b2", "b3"]  # each once
    sequence = [m for m, _, _ in answers]
    assert sequence.count("a1") == 2
    # User A: a2 and a3 are not even sent before a1 got through, and arrive in order.
    a_requests = [m for m in sequence if m.startswith("a")]
    assert a_requests == ["a1", "a1", "a2", "a3"], sequence
    # User B flows meanwhile: delivered in order before a1's retry.
    retry_at = [at for m, status, at in answers if m == "a1" and status == 200][0]
    b_times = [at for m, _, at in answers if m.startswith("b")]
    assert [m for m in sequence if m.startswith("b")] == ["b1", "b2", "b3"]
    assert max(b_times) < retry_at, answers


async def test_slow_deliveries_with_a_short_ack_wait_are_not_redelivered(deployment):
    async with (
        WebhookReceiver(Response(200, delay=3.0)) as rx,
        jetstream(deployment.nats_url) as js,
    ):
        # No archive: the pipeline's copies then have the stream sequences 1 to 5.
        deployment.write_workspace(f"""\
sources:
  web:
    write_key: "{WRITE_KEY}"
    archive: 0
destinations:
  slow:
    type: webhook
    url: "{rx.url}"
pipelines:
  web-slow:
    source: web
    to: slow
""")
        serve = deployment.start("serve", KRENALIS_NATS_ACK_WAIT="1s")
        await serve.wait_healthy()
        events = [make_event(f"slow-{i}", user=f"u{i}") for i in range(4)]
        events.append(make_event("slow-4", user="u0"))  # after slow-0: 6 s in the worker
        await collector_answer(serve.base_url, events)
        await wait_for(lambda: rx.bodies, what="the first delivery")
        await asyncio.sleep(1.5)  # beyond AckWait, the receiver still working on it
        assert await stream_messages(js) == 5  # nothing acked before a 200
        info = await js.consumer_info(STREAM, consumer_name("web-slow"))
        assert info.num_ack_pending >= 1 and info.num_redelivered == 0, info
        # No delivery beyond the first of each message (stream sequences start at 1).
        assert info.delivered.consumer_seq == info.delivered.stream_seq, info
        await wait_for(lambda: stream_empty(js), what="every event delivered", processes=[serve])
        await asyncio.sleep(1.5)  # a redelivery, if any, would show up now
        assert sorted(b["messageId"] for b in rx.bodies) == sorted(e["messageId"] for e in events)
        info = await js.consumer_info(STREAM, consumer_name("web-slow"))
        assert info.delivered.consumer_seq == 5, info  # NATS delivered each message once
        assert info.ack_floor.stream_seq == 5 and info.num_ack_pending == 0, info
        assert serve.stop() == 0
