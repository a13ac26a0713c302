"""Filters (every operator, typing, missing fields, nesting) and consent rules."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krenalis.pipelines.filters import (
    OPERATORS,
    Condition,
    ConsentRule,
    Filter,
    FilterError,
    consents_satisfied,
    matches,
    parse_consents,
    parse_filter,
)

ABSENT = object()  # the field is not in the event at all


def holds(op: str, value: object, field_value: object) -> bool:
    """Whether ``properties.x <op> value`` holds for an event whose properties.x is field_value."""
    properties = {} if field_value is ABSENT else {"x": field_value}
    event = {"type": "track", "properties": properties}
    return matches(Filter("all", (Condition("properties.x", op, value),)), event)


CASES = [
    # (op, value, field value, expected)
    ("is", "track", "track", True),
    ("is", "track", "Track", False),
    ("is", 12.5, "12.5", True),  # a numeric string compares as a number
    ("is", 12, 12.0, True),
    ("is", "42", 42, True),  # a numeric string value matches a number field
    ("is", "042", 42, False),  # not JSON number syntax: a plain string
    ("is", True, True, True),
    ("is", True, 1, False),  # booleans equal only booleans
    ("is", 1, True, False),
    ("is", date(2026, 11, 26), "2026-11-26T00:00:00Z", True),
    ("is_not", "track", "page", True),
    ("is_not", "track", "track", False),
    ("is_one_of", ["iOS", "Android"], "iOS", True),
    ("is_one_of", ["iOS", "Android"], "Linux", False),
    ("is_one_of", [1, 2, 3], "2", True),
    ("is_not_one_of", ["iOS", "Android"], "Linux", True),
    ("is_not_one_of", ["iOS", "Android"], "Android", False),
    ("contains", "der Comp", "Order Completed", True),
    ("contains", "ord", "Order Completed", False),  # case-sensitive, as in the original
    ("contains", "xyz", "Order Completed", False),
    ("contains", "b", ["a", "b"], True),  # an element of a list
    ("contains", "b", ["abc"], False),  # elements must equal, not contain
    ("contains", 2, [1, 2.0], True),
    ("contains", 2, "123", False),  # a number is not a substring
    ("does_not_contain", "xyz", "Order", True),
    ("does_not_contain", "b", ["a", "b"], False),
    ("starts_with", "Ord", "Order", True),
    ("starts_with", "der", "Order", False),
    ("ends_with", "der", "Order", True),
    ("ends_with", "Ord", "Order", False),
    ("greater_than", 100, 150, True),
    ("greater_than", 100, 100, False),
    ("greater_than", 100, "100.5", True),
    ("greater_than", "b", "c", True),  # strings order lexicographically
    ("greater_than", "b", "a", False),
    ("greater_than_or_equal", 100, 100, True),
    ("greater_than_or_equal", 100, 99.99, False),
    ("less_than", 100, 99, True),
    ("less_than", 100, 100, False),
    ("less_than_or_equal", 100, 100, True),
    ("less_than_or_equal", 100, 101, False),
    ("between", [10, 20], 10, True),
    ("between", [10, 20], 20, True),
    ("between", [10, 20], "15", True),
    ("between", [10, 20], 21, False),
    ("between", ["a", "m"], "hello", True),
    ("not_between", [10, 20], 21, True),
    ("not_between", [10, 20], 15, False),
    ("before", "2026-01-01T00:00:00Z", "2025-12-31T23:59:59.999Z", True),
    ("before", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", False),
    ("before", "2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00.001Z", False),  # same instant
    ("on_or_before", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00.000Z", True),
    ("on_or_before", "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", False),
    ("after", "2026-01-01", "2026-01-01T00:00:01Z", True),  # date-only: midnight UTC
    ("after", "2026-01-01", "2025-06-01", False),
    ("after", datetime(2026, 1, 1, tzinfo=UTC), "2026-01-02T00:00:00", True),
    ("on_or_after", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", True),
    ("on_or_after", "2026-01-01T00:00:00Z", "2025-01-01T00:00:00Z", False),
    ("is_true", None, True, True),
    ("is_true", None, "true", False),
    ("is_false", None, False, True),
    ("is_false", None, 0, False),
    ("is_empty", None, "", True),
    ("is_empty", None, [], True),
    ("is_empty", None, {}, True),
    ("is_empty", None, None, True),
    ("is_empty", None, 0, False),
    ("is_not_empty", None, "x", True),
    ("is_not_empty", None, "", False),
    ("is_null", None, None, True),
    ("is_null", None, "", False),
    ("is_not_null", None, 0, True),
    ("is_not_null", None, None, False),
    ("exists", None, None, True),
    ("exists", None, "x", True),
    ("does_not_exist", None, None, False),
]


@pytest.mark.parametrize(("op", "value", "field_value", "expected"), CASES)
def test_operator(op: str, value: object, field_value: object, expected: bool) -> None:
    assert holds(op, value, field_value) is expected


def test_every_operator_has_a_true_and_a_false_case() -> None:
    for op in OPERATORS:
        outcomes = {expected for case_op, _, _, expected in CASES if case_op == op}
        if op in ("exists", "does_not_exist"):
            outcomes |= {holds(op, None, ABSENT)}
        assert outcomes == {True, False}, op


VALUES = {
    "is": "x", "is_not": "x", "is_one_of": ["x"], "is_not_one_of": ["x"], "contains": "x",
    "does_not_contain": "x", "starts_with": "x", "ends_with": "x", "greater_than": 1,
    "greater_than_or_equal": 1, "less_than": 1, "less_than_or_equal": 1, "between": [1, 2],
    "not_between": [1, 2], "before": "2026-01-01", "on_or_before": "2026-01-01",
    "after": "2026-01-01", "on_or_after": "2026-01-01",
}  # fmt: skip

# The missing-field table of the module docstring.
TRUE_WHEN_MISSING = {
    "does_not_exist", "is_not_null", "is_empty", "is_not", "is_not_one_of", "does_not_contain",
    "not_between",
}  # fmt: skip
TRUE_WHEN_NULL = {"exists", "is_null", "is_empty", "is_not", "is_not_one_of",
                  "does_not_contain", "not_between"}  # fmt: skip


@pytest.mark.parametrize("op", OPERATORS)
def test_missing_and_null_fields(op: str) -> None:
    value = VALUES.get(op)
    assert holds(op, value, ABSENT) is (op in TRUE_WHEN_MISSING)
    assert holds(op, value, None) is (op in TRUE_WHEN_NULL)


@pytest.mark.parametrize("op", OPERATORS)
@pytest.mark.parametrize("field_value", [{"a": 1}, [1, [2]], float("nan"), "not a date", -0.0])
def test_type_mismatches_do_not_raise(op: str, field_value: object) -> None:
    holds(op, VALUES.get(op), field_value)


def test_paths_walk_dicts_and_list_indexes() -> None:
    event = {
        "type": "track",
        "context": {"os": {"name": "iOS"}},
        "properties": {"items": [{"sku": "A1"}, {"sku": "B2"}], "a b": 1},
    }
    for field, value, expected in [
        ("context.os.name", "iOS", True),
        ("properties.items.1.sku", "B2", True),
        ("properties.items.2.sku", "B2", False),  # out of range: missing
        ("properties.items.sku", "B2", False),  # a key into a list: missing
        ("context.os.name.x", "iOS", False),  # through a string: missing
        ("properties.a b", 1, True),
    ]:
        flt = parse_filter({"all": [{"field": field, "op": "is", "value": value}]}, "f")
        assert matches(flt, event) is expected, field


def test_nested_all_and_any() -> None:
    flt = parse_filter(
        {
            "all": [
                {"field": "type", "op": "is", "value": "track"},
                {
                    "any": [
                        {"field": "properties.total", "op": "greater_than", "value": 100},
                        {"all": [
                            {"field": "traits.plan", "op": "is", "value": "pro"},
                            {"field": "userId", "op": "exists"},
                        ]},
                    ]
                },
            ]
        },
        "f",
    )  # fmt: skip
    assert matches(flt, {"type": "track", "properties": {"total": 150}})
    assert matches(flt, {"type": "track", "traits": {"plan": "pro"}, "userId": "u1"})
    assert not matches(flt, {"type": "track", "traits": {"plan": "pro"}})
    assert not matches(flt, {"type": "page", "properties": {"total": 150}})
    assert matches(None, {})


def test_any_stops_at_the_first_true_and_all_at_the_first_false() -> None:
    first = {"field": "type", "op": "is", "value": "track"}
    boom = {"field": "properties.x", "op": "is", "value": "y"}
    any_flt = parse_filter({"any": [first, boom]}, "f")
    all_flt = parse_filter({"all": [dict(first, value="page"), boom]}, "f")
    event = {"type": "track", "properties": ExplodingDict()}
    assert matches(any_flt, event)
    assert not matches(all_flt, event)


class ExplodingDict(dict):  # type: ignore[type-arg]
    def get(self, *args: object) -> object:
        raise AssertionError("evaluated past the short circuit")


def test_conditions_are_values() -> None:
    a = Condition("properties.x", "is_one_of", ["a", "b"])
    assert a == Condition("properties.x", "is_one_of", ("a", "b"))
    assert hash(a) == hash(Condition("properties.x", "is_one_of", ["a", "b"]))
    assert "test" not in repr(a)


PARSE_ERRORS = [
    ({"all": []}, '"all" needs a non-empty list of conditions'),
    ({"none": [{}]}, 'a filter must be a mapping with one key, "all" or "any"'),
    ({"all": [{"field": "type", "op": "equals", "value": "x"}]}, 'unknown operator "equals"'),
    ({"all": [{"field": "type", "op": "is"}]}, 'operator "is" needs a value'),
    ({"all": [{"field": "type", "op": "exists", "value": 1}]}, 'operator "exists" takes no value'),
    ({"all": [{"field": "type", "op": "is", "value": [1]}]}, 'operator "is" needs a string'),
    ({"all": [{"field": "type", "op": "is_one_of", "value": "x"}]}, "needs a non-empty list"),
    ({"all": [{"field": "type", "op": "between", "value": [1]}]}, "two values [low, high]"),
    ({"all": [{"field": "type", "op": "between", "value": [5, 1]}]}, "low <= high"),
    ({"all": [{"field": "type", "op": "between", "value": [1, "z"]}]}, "of one type"),
    ({"all": [{"field": "type", "op": "greater_than", "value": True}]}, "needs a number"),
    ({"all": [{"field": "type", "op": "starts_with", "value": 1}]}, "needs a string value"),
    ({"all": [{"field": "type", "op": "after", "value": "soon"}]}, "needs an ISO 8601 datetime"),
    ({"all": [{"field": "type", "op": "is", "value": float("nan")}]}, "needs a string, number"),
    ({"all": [{"field": "nope.x", "op": "exists"}]}, 'unknown field "nope.x"'),
    ({"all": [{"field": "properties..x", "op": "exists"}]}, "is not a dotted path"),
    ({"all": [{"field": "", "op": "exists"}]}, "field must be a dotted path"),
    ({"all": [{"op": "exists"}]}, 'condition is missing "field"'),
    ({"all": [{"field": "type", "op": "exists", "values": 1}]}, 'unknown key "values"'),
    ({"all": ["type is track"]}, "a condition must be a mapping"),
    ({"all": [{"field": "type", "op": ["is"], "value": 1}]}, "unknown operator \"['is']\""),
    ({"all": [{"field": ["type"], "op": "exists"}]}, "field must be a dotted path"),
]


@pytest.mark.parametrize(("obj", "message"), PARSE_ERRORS)
def test_parse_errors(obj: object, message: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(obj, 'pipeline "p": filter')
    assert str(info.value).startswith('pipeline "p": filter: ')
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_operator_suggests_or_lists() -> None:
    with pytest.raises(FilterError, match=r'did you mean "greater_than"\?'):
        Condition("type", "greater", 1)
    with pytest.raises(FilterError, match=r'did you mean "less_than_or_equal"\?'):
        Condition("type", "<=", 1)
    with pytest.raises(FilterError, match=r'did you mean "greater_than"\?'):
        Condition("type", "isGreaterThan", 1)
    with pytest.raises(FilterError, match="known: is, is_not, is_one_of"):
        Condition("type", "zzz", 1)


# --- consents -------------------------------------------------------------------------------------


def event_with(consents: object) -> dict[str, object]:
    return {"type": "track", "context": {"consents": consents}}


def test_consents_all_and_any() -> None:
    both = ConsentRule(("marketing", "analytics"), "all")
    either = ConsentRule(("marketing", "analytics"), "any")
    granted = event_with({"marketing": True, "analytics": True})
    partly = event_with({"marketing": True, "analytics": False})
    assert consents_satisfied(both, granted) and consents_satisfied(either, granted)
    assert not consents_satisfied(both, partly) and consents_satisfied(either, partly)
    assert not consents_satisfied(either, event_with({"marketing": False}))


def test_consents_need_exactly_true() -> None:
    rule = ConsentRule(("marketing",))
    for value in (1, "true", "yes", None, [True]):
        assert not consents_satisfied(rule, event_with({"marketing": value}))


def test_consents_must_be_present() -> None:
    rule = ConsentRule(("marketing",), "any")
    assert not consents_satisfied(rule, {"type": "track"})
    assert not consents_satisfied(rule, {"context": {}})
    assert not consents_satisfied(rule, {"context": "x"})
    assert not consents_satisfied(rule, event_with(["marketing"]))
    # No rule or no purposes: everything passes, even without context.consents.
    assert consents_satisfied(None, {})
    assert consents_satisfied(ConsentRule(()), {})


def test_parse_consents() -> None:
    assert parse_consents({"purposes": ["a", "b"]}, "c") == ConsentRule(("a", "b"), "all")
    assert parse_consents({"purposes": ["a"], "operator": "any"}, "c").operator == "any"
    assert len(ConsentRule(tuple(f"p{i}" for i in range(100))).purposes) == 100


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"purposes": []}, "non-empty list of purposes"),
        ({"purposes": "marketing"}, "non-empty list of purposes"),
        ({"purposes": ["a"], "operator": "or"}, 'must be "all" or "any"'),
        ({"purposes": ["a", ""]}, "non-empty string"),
        ({"purposes": ["a", "a"]}, "more than once"),
        ({"purposes": [f"p{i}" for i in range(101)]}, "at most 100 consent purposes"),
        ({"purposes": ["a"], "mode": "all"}, 'unknown key "mode"'),
        (["a"], "must be a mapping"),
    ],
)
def test_parse_consents_errors(obj: object, message: str) -> None:
    with pytest.raises(FilterError, match="^c: ") as info:
        parse_consents(obj, "c")
    assert message in str(info.value)


# --- never raises ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["12.5", "2026-11-26T05:29:02.123Z", "2026-01-01", "", "-0", "1e999"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["x", "0", "1", "total", "name", "os"]), children, max_size=4
        )
    ),
    max_leaves=20,
)
events = st.dictionaries(
    st.sampled_from(["type", "properties", "traits", "context", "userId", "receivedAt"]),
    json_values,
)
EVERY_OPERATOR = Filter(
    "any",
    tuple(
        Condition(field, op, VALUES.get(op))
        for op in OPERATORS
        for field in ("type", "properties.x", "properties.0.x", "context.os.name", "receivedAt")
    ),
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_matches_never_raises(event: dict[str, object]) -> None:
    assert isinstance(matches(EVERY_OPERATOR, event), bool)
    for rule in EVERY_OPERATOR.rules:
        assert isinstance(matches(Filter("all", (rule,)), event), bool)
