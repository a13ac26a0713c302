"""Python step functions: what they return, how they fail, how they are loaded."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest
from helpers_transforms import pipeline_with, wire

from krenalis.events import encode_event
from krenalis.transforms.chain import Chain, LoadFailed, build_steps, time_limits

FUNCTIONS = """
import time

def tag(event, context):
    event["properties"]["seen_by"] = f"{context.source}/{context.pipeline}/{context.stored_at:g}"
    return event

def only_event(event):
    event["properties"]["one"] = True
    return event

def drop_tests(event):
    return None if event["event"] == "Test" else event

def split(event):
    items = event["properties"].get("items", [])
    return [dict(event, event="Item", properties={"sku": sku}) for sku in items]

def raises(event):
    return {}["missing"]

def loops(event):
    while True:
        pass

def sleeps(event):
    time.sleep(30)

def wrong(event):
    return "not an event"

def not_json(event):
    event["properties"]["when"] = object()
    return event

def exits(event):
    raise SystemExit(3)

NOT_CALLABLE = 42

def three(a, b, c):
    return a
"""


@pytest.fixture
def code(tmp_path: Path) -> Path:
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    return tmp_path


def chain(code: Path, *names: str, timeout: str = "") -> Chain:
    extra = f"        timeout: {timeout}\n" if timeout else ""
    steps = "".join(f"      - python: fns.py:{name}\n{extra}" for name in names)
    built, _ = build_steps(pipeline_with(steps).transform, code)
    return Chain(built, "web", "p")


def run(c: Chain, event: dict, stored_at: float = 0.0) -> list[dict] | str:
    with time_limits():
        result = c.run(encode_event(event), stored_at)
    return result if isinstance(result, str) else [json.loads(d) for d in result[1]]


def test_a_function_changes_the_event_and_gets_its_context(code):
    [out] = run(chain(code, "tag", "only_event"), wire("m1"), stored_at=1700000000.5)
    assert out["properties"] == {"seen_by": "web/p/1.7e+09", "one": True}


def test_none_drops_and_a_list_fans_out_with_derived_message_ids(code):
    c = chain(code, "drop_tests", "split")
    assert run(c, wire("m1", event="Test")) == []
    out = run(c, wire("m2", properties={"items": ["A", "B", "C"]}))
    assert [(e["messageId"], e["properties"]["sku"]) for e in out] == [
        ("m2#0", "A"), ("m2#1", "B"), ("m2#2", "C"),
    ]  # fmt: skip
    # The same event again (a replay) gives the same ids: the sinks' idempotency holds.
    assert [e["messageId"] for e in run(c, wire("m2", properties={"items": ["A", "B", "C"]}))] == [
        "m2#0", "m2#1", "m2#2",
    ]  # fmt: skip
    assert run(c, wire("m3", properties={"items": []})) == []  # an empty list drops too
    assert [s[:4] for s in c.stats()] == [[4, 3, 1, 0], [3, 6, 1, 0]]


def test_an_exception_fails_the_event_with_a_short_traceback(code):
    reason = run(chain(code, "raises"), wire("m1"))
    assert reason.startswith("step 1:python fns.py:raises failed: KeyError: 'missing' at fns.py:")
    assert "in raises" in reason and "chain.py" not in reason  # the step's frames only


@pytest.mark.parametrize("name", ["loops", "sleeps"])
def test_a_step_past_its_time_limit_is_stopped(code, name):
    c = chain(code, name, timeout="100ms")
    started = time.monotonic()
    reason = run(c, wire("m1"))
    assert time.monotonic() - started < 0.5
    assert reason == f"step 1:python fns.py:{name} ran past its time limit of 100ms"
    [out] = run(chain(code, "tag"), wire("m2"))  # the next event goes on
    assert out["messageId"] == "m2"


def test_wrong_results_and_exits_fail_the_event_not_the_process(code):
    assert "returned a value of type str" in run(chain(code, "wrong"), wire("m1"))
    assert "cannot be written as JSON" in run(chain(code, "not_json"), wire("m1"))
    assert "failed: SystemExit: 3" in run(chain(code, "exits"), wire("m1"))


def test_undecodable_stream_data_fails_the_event(code):
    c = chain(code, "tag")
    with time_limits():
        assert c.run(b"not json", 0.0).startswith("invalid event data: ")


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("fns.py:nothing", "fns.py has no function 'nothing'"),
        ("fns.py:NOT_CALLABLE", "fns.py: NOT_CALLABLE is int, not a function"),
        ("fns.py:three", "takes (a, b, c); a step function takes (event) or (event, context)"),
        ("missing.py:f", "missing.py does not exist"),
        ("broken.py:f", "broken.py does not import: SyntaxError"),
        ("failing.py:f", "failing.py does not import: RuntimeError: no config"),
        ("no_such_module:f", "module no_such_module is not found"),
        ("helper_user:f", "module helper_user does not import: ModuleNotFoundError"),
    ],
)
def test_functions_that_do_not_load_are_refused_with_the_reason(code, ref, reason):
    (code / "broken.py").write_text("def f(event)\n    return event\n")
    (code / "failing.py").write_text("raise RuntimeError('no config')\n")
    (code / "helper_user.py").write_text("import not_installed_anywhere\n")
    import sys

    sys.path.insert(0, str(code))  # as the transform process does with the code directory
    try:
        with pytest.raises(LoadFailed) as caught:
            build_steps(pipeline_with(f"      - python: {ref}\n").transform, code)
    finally:
        sys.path.remove(str(code))
    assert reason in caught.value.reason
    assert caught.value.index == 0


def test_a_module_path_is_imported_and_its_file_reported(code):
    import sys

    (code / "mypkg").mkdir()
    (code / "mypkg" / "__init__.py").write_text("")
    (code / "mypkg" / "steps.py").write_text(
        textwrap.dedent("""
        def enrich(event):
            event["properties"]["pkg"] = True
            return event
    """)
    )
    sys.path.insert(0, str(code))
    try:
        built, files = build_steps(
            pipeline_with("      - python: mypkg.steps:enrich\n").transform, code
        )
    finally:
        sys.path.remove(str(code))
    assert files == [str(code / "mypkg" / "steps.py")]
    [out] = run(Chain(built, "web", "p"), wire("m1"))
    assert out["properties"] == {"pkg": True}
