"""Typed reading of workspace-file values, with errors that name the file and the line.

:class:`Reader` reads one field at a time from a :class:`~krenalis.workspace._yaml.LineDict` and
raises :class:`WorkspaceError` pointing at the line of the offending key. Values that may be
secrets (write keys, webhook secrets, URLs with credentials) are never echoed in messages.
"""

from __future__ import annotations

import math
import re
from typing import Any, NoReturn
from urllib.parse import urlsplit

from krenalis.config import parse_duration
from krenalis.errors import WorkspaceError
from krenalis.workspace._yaml import LineDict

__all__ = ["ID_PATTERN", "Reader"]

#: Source, destination and pipeline ids: they end up in NATS subjects and consumer names.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")






def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Reader:
    """Reads typed fields of one workspace file; every failure is a :class:`WorkspaceError`."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def fail(self, line: int, reason: str) -> NoReturn:
        raise WorkspaceError(self.filename, line, reason)

    def mapping(self, value: Any, line: int, what: str) -> LineDict:
        """``value`` as a mapping; a YAML null (an empty section) is an empty mapping."""
        if value is None:
            empty = LineDict()
            empty.line, empty.key_lines = line, {}
            return empty
        if not isinstance(value, LineDict):
            self.fail(line, f"{what} must be a mapping, got {_kind(value)}")
        return value

    def check_keys(
        self,
        m: LineDict,
        what: str,
        allowed: tuple[str, ...],
        required: tuple[str, ...] = (),
        line: int | None = None,
    ) -> None:
        """Unknown keys fail at their line; missing ones at ``line`` (where ``m`` is named)."""
        for key in m:
            if key not in allowed:
                self.fail(
                    m.line_of(key),
                    f'unknown key "{key}" in {what} (allowed: {", ".join(allowed)})',
                )
        for key in required:
            if key not in m:
                self.fail(line or m.line, f'{what}: missing key "{key}"')

    def ident(self, key: Any, line: int, kind: str) -> str:
        if not isinstance(key, str) or not ID_PATTERN.fullmatch(key):
            self.fail(
                line,
                f'{kind} id "{key}" must be 1 to 64 letters, digits, "-" or "_"',
            )
        return key

    def string(self, m: LineDict, key: str, what: str, *, secret: bool = False) -> str:
        value = m[key]
        if not isinstance(value, str) or not value:
            shown = "" if secret else f", got {_kind(value)}"
            self.fail(m.line_of(key), f"{what}: {key} must be a non-empty string{shown}")
        return value

    def boolean(self, m: LineDict, key: str, what: str, default: bool) -> bool:
        value = m.get(key, default)
        if not isinstance(value, bool):
            self.fail(m.line_of(key), f"{what}: {key} must be true or false, got {value!r}")
        return value

    def integer(self, m: LineDict, key: str, what: str, bounds: tuple[int, int]) -> int:
        value, (low, high) = m[key], bounds
        if not _is_int(value) or not low <= value <= high:
            self.fail(
                m.line_of(key),
                f"{what}: {key} must be a whole number from {low} to {high}, got {value!r}",
            )
        return int(value)

    def positive_number(self, m: LineDict, key: str, what: str) -> float:
        value = m[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value <= 0:
            self.fail(m.line_of(key), f"{what}: {key} must be a number above 0, got {value!r}")
        return float(value)

    def duration(self, m: LineDict, key: str, what: str) -> float:
        value = m[key]
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = 0.0
        if seconds <= 0:
            self.fail(
                m.line_of(key),
                f"{what}: {key} must be a duration above zero such as 500ms, 30s, 1m30s or 4h, "
                f"got {value!r}",
            )
        return seconds

    def url(self, m: LineDict, key: str, what: str) -> str:
        value = self.string(m, key, what)
        problem = _url_problem(value)
        if problem:
            # The URL itself is not shown: it may carry credentials or a token.
            self.fail(m.line_of(key), f"{what}: {key} must be an http or https URL with a host; "
                      f"{problem}")  # fmt: skip
        return value


def _url_problem(url: str) -> str | None:
    if any(c.isspace() for c in url):
        return "it contains whitespace"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a malformed port)
    except ValueError:
        return "it is malformed"
    if parts.scheme not in ("http", "https"):
        return f'its scheme is "{parts.scheme}"' if parts.scheme else "it has no scheme"
    if not parts.hostname:
        return "it has no host"
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)
