"""Timestamps: parsing, UTC wire form, sentAt defaults and clock-skew correction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from krenalis.events.timestamps import format_timestamp

from ._helpers import RECEIVED_AT_TEXT, decode, one, reason, track


def test_received_at_is_truncated_to_milliseconds() -> None:
    event = one(track(), received_at=datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=UTC))
    assert event["receivedAt"] == "2026-01-02T03:04:05.999Z"


def test_received_at_may_be_naive_utc_or_another_zone() -> None:
    naive = one(track(), received_at=datetime(2026, 1, 2, 3, 4, 5))
    zoned = one(
        track(), received_at=datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    )
    assert naive["receivedAt"] == zoned["receivedAt"] == "2026-01-02T03:04:05.000Z"


def test_without_timestamps_everything_is_received_at() -> None:
    event = one(track())
    assert event["sentAt"] == event["timestamp"] == event["originalTimestamp"] == RECEIVED_AT_TEXT


def test_timestamp_alone_is_corrected_by_the_clock_skew() -> None:
    # Client clock 1 hour behind: sent at 04:29:01 (client) and received at 05:29:02.123.
    body = {
        "batch": [track(timestamp="2026-11-26T04:29:00.000Z")],
        "sentAt": "2026-11-26T04:29:01Z",
    }
    event = decode(body).events[0]
    assert event["originalTimestamp"] == "2026-11-26T04:29:00.000Z"
    assert event["sentAt"] == "2026-11-26T04:29:01.000Z"
    assert event["timestamp"] == "2026-11-26T05:29:01.123Z"


def test_event_sent_at_wins_over_the_batch_sent_at() -> None:
    event = track(timestamp="2026-11-26T05:00:00Z", sentAt="2026-11-26T05:00:02.123Z")
    decoded = decode({"batch": [event], "sentAt": "2020-01-01T00:00:00Z"}).events[0]
    assert decoded["sentAt"] == "2026-11-26T05:00:02.123Z"
    assert decoded["timestamp"] == "2026-11-26T05:29:00.000Z"


def test_skew_uses_the_untruncated_received_at() -> None:
    # receivedAt 05:29:02.123456, sentAt = timestamp = 05:29:02.000600: +122.856 ms -> .122
    event = one(
        track(timestamp="2026-11-26T05:29:02.000600Z", sentAt="2026-11-26T05:29:02.000600Z")
    )
    assert event["timestamp"] == "2026-11-26T05:29:02.123Z"
    assert event["originalTimestamp"] == "2026-11-26T05:29:02.000Z"


def test_original_timestamp_alone_is_the_client_clock_and_is_corrected() -> None:
    # RudderStack's SDKs send originalTimestamp and sentAt; Segment's rule is the same:
    # timestamp = receivedAt - (sentAt - originalTimestamp). Client clock 1 hour behind.
    body = {
        "batch": [track(originalTimestamp="2026-11-26T04:29:00.000Z")],
        "sentAt": "2026-11-26T04:29:01Z",
    }
    event = decode(body).events[0]
    assert event["originalTimestamp"] == "2026-11-26T04:29:00.000Z"
    assert event["timestamp"] == "2026-11-26T05:29:01.123Z"


def test_original_timestamp_and_timestamp_are_both_kept() -> None:
    # Both sent: the event was corrected before (a replay, a relay); sentAt changes nothing.
    event = one(
        track(
            originalTimestamp="2026-11-26T05:00:00+01:00",
            timestamp="2026-11-26T05:00:00Z",
            sentAt="2020-01-01T00:00:00Z",
        )
    )
    assert event["originalTimestamp"] == "2026-11-26T04:00:00.000Z"
    assert event["timestamp"] == "2026-11-26T05:00:00.000Z"


def test_corrected_timestamp_out_of_range_falls_back_to_received_at() -> None:
    event = one(track(timestamp="9999-12-31T23:00:00Z", sentAt="2000-01-01T00:00:00Z"))
    assert event["timestamp"] == RECEIVED_AT_TEXT
    assert event["originalTimestamp"] == "9999-12-31T23:00:00.000Z"


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("2026-11-26T05:29:02.123Z", "2026-11-26T05:29:02.123Z"),
        ("2026-11-26T05:29:02Z", "2026-11-26T05:29:02.000Z"),
        ("2026-11-26T05:29:02.123456789Z", "2026-11-26T05:29:02.123Z"),
        ("2026-11-26T07:29:02.5+02:00", "2026-11-26T05:29:02.500Z"),
        ("2026-11-26T00:29:02-0500", "2026-11-26T05:29:02.000Z"),
        ("2026-11-26T05:29:02", "2026-11-26T05:29:02.000Z"),  # no offset: UTC
        ("2026-11-26", "2026-11-26T00:00:00.000Z"),
    ],
)
def test_accepted_iso_8601_forms(value: str, wire: str) -> None:
    event = one(track(timestamp=value, originalTimestamp=value))
    assert event["timestamp"] == event["originalTimestamp"] == wire


@pytest.mark.parametrize("name", ["timestamp", "sentAt"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("yesterday", "is not a valid ISO 8601 timestamp"),
        ("2026-13-01T00:00:00Z", "is not a valid ISO 8601 timestamp"),
        ("0000-01-01T00:00:00Z", "has an invalid year value"),
        ("0001-01-01T00:00:00+01:00", "has an invalid year value"),
        ("9999-12-31T23:00:00-02:00", "has an invalid year value"),
    ],
)
def test_invalid_timestamps(name: str, value: str, problem: str) -> None:
    assert reason(track(**{name: value})) == f"property '{name}' {problem}"


def test_original_timestamp_is_validated_too() -> None:
    event = track(originalTimestamp="nope", timestamp="2026-11-26T05:29:02Z")
    assert reason(event) == "property 'originalTimestamp' is not a valid ISO 8601 timestamp"


@given(st.datetimes(timezones=st.just(UTC)))
def test_format_timestamp_is_the_iso_form_to_the_millisecond(value: datetime) -> None:
    expected = value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert format_timestamp(value) == expected
