"""`krenalis transform test`: each step's diff, and which dead letters would now pass, with a
workspace file and no NATS."""

from __future__ import annotations

import json

from helpers_transforms import SECRET, wire, workspace_with

from krenalis.cli import main

STEPS = """\
      - python: fns.py:tag
      - hash: [userId]
        secret: ${HASH_SECRET}
      - drop_bots
      - set: {properties.channel: web}
"""
FUNCTIONS = """
def tag(event):
    if event["event"] == "Boom":
        raise ValueError("no boom here")
    event["properties"]["tagged"] = True
    return event
"""


def setup(tmp_path, monkeypatch):
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    (tmp_path / "krenalis.yaml").write_text(workspace_with(STEPS))
    monkeypatch.setenv("HASH_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")


def test_an_event_step_by_step(tmp_path, monkeypatch, capsys):
    setup(tmp_path, monkeypatch)
    (tmp_path / "event.json").write_text(json.dumps(wire("m1", userId="u1")))
    code = main(["transform", "test", "p", "--event", "event.json", "--workspace", "krenalis.yaml"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Step 1: python fns.py:tag" in out and '+    "tagged": true' in out
    assert "Step 2: hash" in out and '-  "userId": "u1"' in out
    assert "Step 3: drop_bots" in out and "no change" in out
    assert '+    "channel": "web"' in out
    assert "Passes: delivered as 1 event." in out


def test_dead_letters_from_a_file_say_which_would_pass(tmp_path, monkeypatch, capsys):
    setup(tmp_path, monkeypatch)
    letters = [
        {"seq": 7, "reason": "old failure", "event": wire("m1"), "first_attempt": ""},
        {"seq": 8, "reason": "old failure", "event": wire("m2", event="Boom")},
        {"seq": 9, "reason": "old failure", "event": wire("m3", context={"userAgent": "curl/8"})},
    ]
    (tmp_path / "letters.json").write_text(json.dumps(letters))
    code = main(["transform", "test", "p", "--from-dlq", "letters.json",
                 "--workspace", "krenalis.yaml"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Dead letter 8 (it failed: old failure)" in out
    assert "failed: ValueError: no boom here" in out
    assert "Dropped: nothing is delivered" in out
    assert "2 of 3 dead letters would now pass the steps" in out


def test_a_step_that_does_not_load_is_named_with_its_line(tmp_path, monkeypatch, capsys):
    setup(tmp_path, monkeypatch)
    (tmp_path / "fns.py").write_text("x = 1\n")
    (tmp_path / "event.json").write_text("{}")
    code = main(["transform", "test", "p", "--event", "event.json", "--workspace", "krenalis.yaml"])
    err = capsys.readouterr().err
    assert code == 1
    assert (
        'krenalis.yaml:9: pipeline "p": transform[0] (python fns.py:tag): fns.py has no function'
        in err
    )
