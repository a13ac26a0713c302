"""The filter operators: each turns a condition's parsed value into a predicate.

A predicate takes the field's value (``MISSING`` when the path does not resolve) and answers a
bool without raising. Negated operators are exact negations of their positive twin, built by
``_negate``. Each operator also names the shape of value it needs, which filters.py checks.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

from krenalis.pipelines._operands import MISSING, Operand

__all__ = [
    "BUILDERS",
    "LIST",
    "NONE",
    "ORDERED",
    "PAIR",
    "SCALAR",
    "TEXT",
    "TIME",
    "Predicate",
    "suggestion",
]

Predicate = Callable[[Any], bool]


def _presence(test: Predicate) -> Callable[[Any], Predicate]:
    return lambda _value: test


def _is_empty(v: Any) -> bool:
    return v is MISSING or v is None or (isinstance(v, str | list | dict) and not v)


def _ordering(accept: Callable[[int], bool]) -> Callable[[Operand], Predicate]:
    def build(operand: Operand) -> Predicate:
        compare = operand.compare

        def test(v: Any) -> bool:
            c = compare(v)
            return c is not None and accept(c)

        return test

    return build


def _is(operand: Operand) -> Predicate:
    compare = operand.compare
    return lambda v: compare(v) == 0


def _is_one_of(operands: tuple[Operand, ...]) -> Predicate:
    # Most lists are strings: a set lookup answers those without comparing one by one.
    strings = frozenset(o.text for o in operands if o.text is not None)
    compares = tuple(o.compare for o in operands)

    def test(v: Any) -> bool:
        if type(v) is str and v in strings:
            return True
        return any(compare(v) == 0 for compare in compares)

    return test


def _between(bounds: tuple[Operand, Operand]) -> Predicate:
    low, high = bounds[0].compare, bounds[1].compare

    def test(v: Any) -> bool:
        a = low(v)
        if a is None or a < 0:
            return False
        b = high(v)
        return b is not None and b <= 0

    return test


def _contains(operand: Operand) -> Predicate:
    text, compare = operand.text, operand.compare

    def test(v: Any) -> bool:
        if type(v) is str:
            return text is not None and text in v
        if isinstance(v, list):
            return any(compare(item) == 0 for item in v)
        return False

    return test


def _starts_with(operand: Operand) -> Predicate:
    text = operand.text
    return lambda v: type(v) is str and v.startswith(text)


def _ends_with(operand: Operand) -> Predicate:
    text = operand.text
    return lambda v: type(v) is str and v.endswith(text)


def _negate(build: Callable[[Any], Predicate]) -> Callable[[Any], Predicate]:
    def negated(value: Any) -> Predicate:
        test = build(value)
        return lambda v: not test(v)

    return negated


# Value shapes: none, one scalar, one scalar that can be ordered (not a bool), a list of scalars,
# [low, high], a string, a datetime.
NONE, SCALAR, ORDERED, LIST = "none", "scalar", "ordered", "list"
PAIR, TEXT, TIME = "pair", "text", "time"

BUILDERS: dict[str, tuple[str, Callable[[Any], Predicate]]] = {
    "is": (SCALAR, _is),
    "is_not": (SCALAR, _negate(_is)),
    "is_one_of": (LIST, _is_one_of),
    "is_not_one_of": (LIST, _negate(_is_one_of)),
    "contains": (SCALAR, _contains),
    "does_not_contain": (SCALAR, _negate(_contains)),
    "starts_with": (TEXT, _starts_with),
    "ends_with": (TEXT, _ends_with),
    "greater_than": (ORDERED, _ordering(lambda c: c > 0)),
    "greater_than_or_equal": (ORDERED, _ordering(lambda c: c >= 0)),
    "less_than": (ORDERED, _ordering(lambda c: c < 0)),
    "less_than_or_equal": (ORDERED, _ordering(lambda c: c <= 0)),
    "between": (PAIR, _between),
    "not_between": (PAIR, _negate(_between)),
    "before": (TIME, _ordering(lambda c: c < 0)),
    "on_or_before": (TIME, _ordering(lambda c: c <= 0)),
    "after": (TIME, _ordering(lambda c: c > 0)),
    "on_or_after": (TIME, _ordering(lambda c: c >= 0)),
    "is_true": (NONE, _presence(lambda v: v is True)),
    "is_false": (NONE, _presence(lambda v: v is False)),
    "is_empty": (NONE, _presence(_is_empty)),
    "is_not_empty": (NONE, _presence(lambda v: not _is_empty(v))),
    "is_null": (NONE, _presence(lambda v: v is None)),
    "is_not_null": (NONE, _presence(lambda v: v is not None)),
    "exists": (NONE, _presence(lambda v: v is not MISSING)),
    "does_not_exist": (NONE, _presence(lambda v: v is MISSING)),
}

# Names people reach for from SQL or other tools: suggested, never accepted (one name each).
_ALIASES = {
    "equals": "is", "eq": "is", "=": "is", "==": "is", "not_equals": "is_not", "ne": "is_not",
    "!=": "is_not", "in": "is_one_of", "not_in": "is_not_one_of", "gt": "greater_than",
    ">": "greater_than", "gte": "greater_than_or_equal", ">=": "greater_than_or_equal",
    "lt": "less_than", "<": "less_than", "lte": "less_than_or_equal",
    "<=": "less_than_or_equal", "is_set": "exists", "is_not_set": "does_not_exist",
}  # fmt: skip


def suggestion(op: str) -> str | None:
    """The operator someone writing ``op`` most likely meant, if any."""
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", op).lower()  # isGreaterThan -> is_greater_than
    if name in _ALIASES:
        return _ALIASES[name]
    close = difflib.get_close_matches(name, list(BUILDERS), n=1)
    return close[0] if close else None
