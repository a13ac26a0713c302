"""Pipeline filters and consent rules: which events a pipeline takes.

A :class:`Filter` is an ``all`` (and) or ``any`` (or) group of :class:`Condition` s and nested
groups. A condition reads a dotted ``field`` path of the event (``type``, ``properties.total``,
``context.os.name``; a digit segment indexes a list, ``properties.items.0.sku``) and applies one
operator. Every condition is compiled into a closure when it is built, so evaluating a filter
is a few function calls and never raises, whatever the event holds.

Comparisons are typed (as in Krenalis's Go implementation, github.com/krenalis/krenalis, so a
filter means the same on either). The condition's value decides the kind:

- a number compares numerically with a number field, or with a string field written as a JSON
  number (``"12.5"``). Numbers are Python ints (exact) and floats (IEEE doubles, which is what
  the JSON decoder produces for the event too); the Go implementation uses decimals, which
  differ only past ~15 significant digits;
- a string compares as a string (lexicographically for ordering operators) with a string field,
  and numerically with a number field when the string is a JSON number;
- a boolean equals only a boolean; a datetime (a YAML timestamp or date) compares with string
  fields that parse as ISO 8601 datetimes. ``before``/``after``/``on_or_*`` always compare
  datetimes, so their value may also be an ISO string. Naive datetimes are taken as UTC;
- anything else (a list against ``is``, a bool against ``greater_than``...) does not match.

The negated operators are exact negations, so they hold when the field is
missing or of another type:

=========================================================  ===============  =============
operator                                                   field missing    field is null
=========================================================  ===============  =============
exists                                                     false            true
does_not_exist                                             true             false
is_null                                                    false            true
is_not_null                                                true             false
is_empty (null, "", [], {})                                true             true
is_not_empty                                               false            false
is_not, is_not_one_of, does_not_contain, not_between       true             true
every other operator                                       false            false
=========================================================  ===============  =============
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from krenalis.errors import FilterError
from krenalis.pipelines._operands import (
    MISSING,
    Operand,
    TimeOperand,
    as_datetime,
    make_operand,
)
from krenalis.pipelines._operators import (
    BUILDERS,
    LIST,
    NONE,
    ORDERED,
    PAIR,
    TEXT,
    TIME,
    Predicate,
    suggestion,
)

__all__ = [
    "EVENT_FIELDS",
    "MAX_CONSENT_PURPOSES",
    "OPERATORS",
    "Condition",
    "ConsentRule",
    "Filter",
    "consents_satisfied",
    "matches",
    "parse_consents",
    "parse_filter",
]

Event = dict[str, Any]

#: Top-level properties of an event (the wire form's, plus kpid); a field path starts with one.
EVENT_FIELDS = frozenset(
    {
        "anonymousId", "category", "channel", "connectionId", "context", "event", "groupId",
        "kpid", "messageId", "name", "originalTimestamp", "previousId", "properties",
        "receivedAt", "sentAt", "timestamp", "traits", "type", "userId",
    }
)  # fmt: skip

#: At most this many consent purposes per rule (the Go implementation's limit too).
MAX_CONSENT_PURPOSES = 100


#: Every operator name, in documentation order.
OPERATORS: tuple[str, ...] = tuple(BUILDERS)


# --- conditions ---------------------------------------------------------------------------------


# Any key without dots; no surrounding spaces, which are far more often a typo than a name.
_SEGMENT = re.compile(r"[^.\s](?:[^.]*[^.\s])?")


def _parse_path(path: Any) -> tuple[tuple[str, int | None], ...]:
    if not isinstance(path, str) or not path:
        raise FilterError(
            f"field must be a dotted path such as properties.total, got {path!r}", key="field"
        )
    segments = path.split(".")
    if not all(_SEGMENT.fullmatch(s) for s in segments):
        raise FilterError(
            f'field "{path}" is not a dotted path such as properties.total', key="field"
        )
    if segments[0] not in EVENT_FIELDS:
        raise FilterError(
            f'unknown field "{path}": it must start with one of {", ".join(sorted(EVENT_FIELDS))}',
            key="field",
        )
    return tuple((s, int(s) if s.isascii() and s.isdigit() else None) for s in segments)


def _getter(path: tuple[tuple[str, int | None], ...]) -> Callable[[Any], Any]:
    if len(path) == 1:
        key = path[0][0]
        return lambda event: event.get(key, MISSING) if isinstance(event, dict) else MISSING

    def get(event: Any) -> Any:
        value = event
        for key, index in path:
            if isinstance(value, dict):
                value = value.get(key, MISSING)
                if value is MISSING:
                    return MISSING
            elif isinstance(value, list) and index is not None and index < len(value):
                value = value[index]
            else:
                return MISSING
        return value

    return get


def _operator(op: Any) -> tuple[str, Callable[[Any], Predicate]]:
    if isinstance(op, str) and op in BUILDERS:
        return BUILDERS[op]
    close = suggestion(str(op))
    hint = f'did you mean "{close}"?' if close else f"known: {', '.join(OPERATORS)}"
    raise FilterError(f'unknown operator "{op}" ({hint})', key="op")


def _parse_value(op: str, shape: str, value: Any) -> Any:
    if shape == NONE:
        if value is not None:
            raise FilterError(f'operator "{op}" takes no value')
        return None
    if value is None:
        hint = " (is_null matches a null field)" if op in ("is", "is_not") else ""
        raise FilterError(f'operator "{op}" needs a value{hint}')
    if shape in (LIST, PAIR):
        return _parse_list(op, shape, value)
    if shape == TEXT and not isinstance(value, str):
        raise FilterError(f'operator "{op}" needs a string value, got {value!r}')
    if shape == TIME:
        return _parse_time(op, value)
    return _scalar(op, value, ordered=shape == ORDERED)


def _scalar(op: str, value: Any, *, ordered: bool) -> Operand:
    if ordered and isinstance(value, bool):
        raise FilterError(f'operator "{op}" needs a number, string or datetime, got {value!r}')
    operand = make_operand(value)
    if operand is None:
        raise FilterError(
            f'operator "{op}" needs a string, number, boolean or datetime value, got {value!r}'
        )
    return operand


def _parse_list(op: str, shape: str, value: Any) -> tuple[Operand, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise FilterError(f'operator "{op}" needs a non-empty list of values, got {value!r}')
    if shape == LIST:
        return tuple(_scalar(op, item, ordered=False) for item in value)
    if len(value) != 2:
        raise FilterError(f'operator "{op}" needs a list of two values [low, high], got {value!r}')
    low, high = (_scalar(op, item, ordered=True) for item in value)
    if type(low) is not type(high) or high.compare(low.value) == 1:
        raise FilterError(f'operator "{op}" needs [low, high] of one type with low <= high')
    return (low, high)


def _parse_time(op: str, value: Any) -> Operand:
    operand = make_operand(as_datetime(value) if isinstance(value, str) else value)
    if not isinstance(operand, TimeOperand):
        raise FilterError(
            f'operator "{op}" needs an ISO 8601 datetime such as 2026-11-26T05:29:02Z, '
            f"got {value!r}"
        )
    return operand


@dataclass(frozen=True, slots=True)
class Condition:
    """One test on one field of the event; ``test(event)`` is its compiled form."""

    field: str
    op: str
    value: Any = None
    test: Callable[[Event], bool] = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape, build = _operator(self.op)
        get = _getter(_parse_path(self.field))
        try:
            predicate = build(_parse_value(self.op, shape, self.value))
        except FilterError as exc:
            raise FilterError(str(exc), key="value") from None
        if isinstance(self.value, list):  # keep the dataclass hashable
            object.__setattr__(self, "value", tuple(self.value))
        object.__setattr__(self, "test", lambda event: predicate(get(event)))


@dataclass(frozen=True, slots=True)
class Filter:
    """``all`` (every rule holds) or ``any`` (one rule holds) of conditions and nested filters."""

    logic: str
    rules: tuple[Condition | Filter, ...]
    test: Callable[[Event], bool] = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.logic not in ("all", "any"):
            raise FilterError(f'filter logic must be "all" or "any", got {self.logic!r}')
        if not self.rules:
            raise FilterError(f'"{self.logic}" needs at least one condition')
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "test", _combine(self.logic, [r.test for r in self.rules]))


def _combine(logic: str, tests: list[Callable[[Event], bool]]) -> Callable[[Event], bool]:
    if len(tests) == 1:
        return tests[0]
    frozen = tuple(tests)
    if logic == "all":

        def test_all(event: Event) -> bool:
            return all(test(event) for test in frozen)

        return test_all

    def test_any(event: Event) -> bool:
        return any(test(event) for test in frozen)

    return test_any


def matches(filter: Filter | None, event: Event) -> bool:  # noqa: A002 (the natural name)
    """Whether ``event`` passes ``filter``; no filter passes everything. Never raises."""
    return True if filter is None else filter.test(event)


# --- parsing from the workspace file ------------------------------------------------------------


def parse_filter(obj: Any, where: str) -> Filter:
    """Build a filter from its YAML form, ``{all: [...]}`` or ``{any: [...]}``.

    Raise :class:`FilterError` (a ValueError) prefixed with ``where``; ``obj`` on the error is
    the part of ``obj`` at fault, so a caller holding line numbers can point at it.
    """
    try:
        return _parse_group(obj)
    except FilterError as exc:
        at = exc.obj if exc.obj is not None else obj
        raise FilterError(f"{where}: {exc}", at, exc.key) from None


def _parse_group(obj: Any) -> Filter:
    if not isinstance(obj, dict) or len(obj) != 1 or next(iter(obj)) not in ("all", "any"):
        raise FilterError(
            'a filter must be a mapping with one key, "all" or "any", holding a list of conditions',
            obj,
        )
    logic, rules = next(iter(obj.items()))
    if not isinstance(rules, list) or not rules:
        raise FilterError(f'"{logic}" needs a non-empty list of conditions', obj, logic)
    return Filter(logic, tuple(_parse_rule(rule) for rule in rules))


def _parse_rule(obj: Any) -> Condition | Filter:
    if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("all", "any"):
        return _parse_group(obj)
    if not isinstance(obj, dict):
        raise FilterError(f"a condition must be a mapping {{field, op, value}}, got {obj!r}", obj)
    unknown = sorted(str(k) for k in obj if k not in ("field", "op", "value"))
    if unknown:
        raise FilterError(
            f'unknown key "{unknown[0]}" in condition (allowed: field, op, value)', obj, unknown[0]
        )
    for key in ("field", "op"):
        if key not in obj:
            raise FilterError(f'condition is missing "{key}"', obj)
    try:
        return Condition(obj["field"], obj["op"], obj.get("value"))
    except FilterError as exc:
        raise FilterError(str(exc), obj, exc.key) from None


# --- consents -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentRule:
    """The consent purposes an event must carry as granted: ``all`` of them or ``any`` one."""

    purposes: tuple[str, ...]
    operator: str = "all"

    def __post_init__(self) -> None:
        if self.operator not in ("all", "any"):
            raise FilterError(
                f'consents operator must be "all" or "any", got {self.operator!r}', key="operator"
            )
        purposes = tuple(self.purposes)
        if len(purposes) > MAX_CONSENT_PURPOSES:
            raise FilterError(
                f"at most {MAX_CONSENT_PURPOSES} consent purposes, got {len(purposes)}",
                key="purposes",
            )
        for purpose in purposes:
            if not isinstance(purpose, str) or not purpose:
                raise FilterError(
                    f"a consent purpose must be a non-empty string, got {purpose!r}",
                    key="purposes",
                )
        if len(set(purposes)) != len(purposes):
            raise FilterError("consent purposes are listed more than once", key="purposes")
        object.__setattr__(self, "purposes", purposes)


def consents_satisfied(rule: ConsentRule | None, event: Event) -> bool:
    """Whether ``event`` grants the consents of ``rule`` (no rule, or no purposes: always).

    ``context.consents`` must be present, and a purpose counts as granted only when its value
    is exactly ``true``: a consent is never assumed.
    """
    if rule is None or not rule.purposes:
        return True
    context = event.get("context")
    consents = context.get("consents") if type(context) is dict else None
    if type(consents) is not dict:
        return False
    if rule.operator == "any":
        return any(consents.get(p) is True for p in rule.purposes)
    return all(consents.get(p) is True for p in rule.purposes)


def parse_consents(obj: Any, where: str) -> ConsentRule:
    """Build a consent rule from ``{purposes: [...], operator: all|any}``."""
    try:
        if not isinstance(obj, dict):
            raise FilterError("consents must be a mapping {purposes, operator}")
        unknown = sorted(str(k) for k in obj if k not in ("purposes", "operator"))
        if unknown:
            raise FilterError(
                f'unknown key "{unknown[0]}" in consents (allowed: purposes, operator)',
                key=unknown[0],
            )
        purposes = obj.get("purposes")
        if not isinstance(purposes, list) or not purposes:
            raise FilterError("consents need a non-empty list of purposes", key="purposes")
        return ConsentRule(tuple(purposes), obj.get("operator", "all"))
    except FilterError as exc:
        raise FilterError(f"{where}: {exc}", obj, exc.key) from None
