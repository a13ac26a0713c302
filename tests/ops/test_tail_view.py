"""`krenalis tail`'s lines: messages from collectors and workers flattened, and one line each
for people, with what clients sent shown as text, never as markup or terminal codes."""

from __future__ import annotations

from rich.console import Console

from krenalis.ops.tail_view import lines, render


def shown(line: dict) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(render(line), no_wrap=True)
    return console.export_text().rstrip("\n")


def test_a_request_becomes_one_line_per_event() -> None:
    record = {
        "kind": "request", "time": "2026-11-28T10:00:01.123Z", "source": "web", "path": "/v1/batch",
        "accepted": [{"event": {"type": "track", "event": "Paid", "userId": "u1",
                                "messageId": "m1"}, "pipelines": ["a"], "filtered": ["b"]}],
        "rejected": [{"index": 1, "reason": "anonymousId is too long", "event": None}],
    }  # fmt: skip
    accepted, rejected = lines(record)
    assert accepted["kind"] == "accepted" and accepted["source"] == "web"
    assert accepted["pipelines"] == ["a"] and accepted["event"]["messageId"] == "m1"
    assert shown(accepted) == (
        '10:00:01.123 web                ✓ accepted      track "Paid" user u1 id m1 → a '
        "(filtered out by b)"
    )
    assert shown(rejected).endswith("✗ rejected      event #1: anonymousId is too long")


def test_outcomes_become_one_line_each() -> None:
    record = {
        "kind": "outcomes", "time": "2026-11-28T10:00:02.000Z", "pipeline": "web-hook",
        "source": "web", "shard": 0, "outcomes": [
            {"outcome": "retried", "messageId": "m1", "type": "track", "event": "Paid",
             "reason": "HTTP 503", "attempts": 2, "next_in": 2.1},
            {"outcome": "filtered", "messageId": "m2", "type": "page", "event": None,
             "step": "1:drop_bots"},
        ],
    }  # fmt: skip
    retried, filtered = lines(record)
    assert (retried["kind"], retried["pipeline"], retried["attempts"]) == ("retried", "web-hook", 2)
    assert shown(retried).endswith('track "Paid" id m1: HTTP 503 (attempt 2, again in 2.1s)')
    assert shown(filtered).endswith("∅ filtered      page id m2 by step 1:drop_bots")
    assert lines({"kind": "something else"}) == []


def test_what_clients_sent_is_shown_as_text() -> None:
    line = {"kind": "rejected", "time": "t" * 23, "source": "web", "index": 0,
            "reason": "bad [bold]x[/bold] \x1b[31mred\nnext"}  # fmt: skip
    text = shown(line)
    assert "[bold]x[/bold]" in text and "\x1b" not in text and "\n" not in text
    assert "\\n" in text
