"""Typed comparison of an event value with a filter condition's value (see filters.py).

An operand wraps the condition's value, parsed once, and answers ``compare(v)``: -1, 0 or 1
when ``v`` can be compared with it under the typing rules, ``None`` when it cannot. It never
raises, whatever ``v`` is.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime
from typing import Any

__all__ = [
    "MISSING",
    "BoolOperand",
    "NumberOperand",
    "Operand",
    "TextOperand",
    "TimeOperand",
    "as_datetime",
    "as_number",
    "make_operand",
]


class _Missing:
    """The value of a field path that does not resolve (distinct from a present null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

# The JSON number grammar: a string field holding exactly this compares as a number.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")


def _real(v: Any) -> int | float | None:
    """``v`` if it is a real JSON number (not a bool, not NaN), else None."""
    t = type(v)
    if t is int or (t is float and not math.isnan(v)):
        return v  # type: ignore[no-any-return]
    return None


def as_number(v: Any) -> int | float | None:
    """A number, or a string in JSON number syntax, as a number; anything else: None."""
    if type(v) is str:
        match = _JSON_NUMBER.fullmatch(v)
        if match is None:
            return None
        try:
            return float(v) if match.group(1) or match.group(2) else int(v)
        except ValueError:  # more digits than int() accepts
            return None
    return _real(v)


def as_datetime(v: Any) -> datetime | None:
    """An ISO 8601 string or a datetime as an aware datetime (naive means UTC); else None."""
    if type(v) is str:
        try:
            v = datetime.fromisoformat(v)
        except ValueError:
            return None
    if not isinstance(v, datetime):
        return None
    return v if v.tzinfo is not None else v.replace(tzinfo=UTC)


def _sign(a: Any, b: Any) -> int:
    return (a > b) - (a < b)  # type: ignore[no-any-return]


class Operand:
    """A condition value; ``text`` is set when it is a string (substring and set lookups)."""

    __slots__ = ("text", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.text: str | None = None

    def compare(self, v: Any) -> int | None:
        raise NotImplementedError


class NumberOperand(Operand):
    __slots__ = ()

    def compare(self, v: Any) -> int | None:
        n = as_number(v)
        return None if n is None else _sign(n, self.value)


class TextOperand(Operand):
    __slots__ = ("number",)

    def __init__(self, value: str) -> None:
        super().__init__(value)
        self.text = value
        # A string value written as a number still matches number fields ("42" vs 42).
        self.number = as_number(value)

    def compare(self, v: Any) -> int | None:
        if type(v) is str:
            return _sign(v, self.value)
        if self.number is not None:
            n = _real(v)
            return None if n is None else _sign(n, self.number)
        return None


class BoolOperand(Operand):
    __slots__ = ()

    def compare(self, v: Any) -> int | None:
        return _sign(v, self.value) if type(v) is bool else None


class TimeOperand(Operand):
    __slots__ = ()

    def compare(self, v: Any) -> int | None:
        moment = as_datetime(v)
        return None if moment is None else _sign(moment, self.value)


def make_operand(value: Any) -> Operand | None:
    """The operand for a condition value, or None if the value has no comparable type."""
    if isinstance(value, bool):
        return BoolOperand(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and math.isnan(value):
            return None
        return NumberOperand(value)
    if isinstance(value, datetime):
        return TimeOperand(as_datetime(value))
    if isinstance(value, date):
        return TimeOperand(datetime(value.year, value.month, value.day, tzinfo=UTC))
    if isinstance(value, str):
        return TextOperand(value)
    return None
