"""Byte-level repairs of a JSON body the decoder refused, so that one bad value costs only itself.

They run only on the slow path (the decoder refused the body as it came), and their cost is
linear in the body's size: a regular-expression pass, and for cutting a plain loop over the
bytes (tests/events/bench_decode.py measures the worst cases).

- `replace_lone_surrogates`: a "\\ud83d" escape without its other half (JavaScript cutting an
  emoji in half) becomes "\\ufffd", U+FFFD, as Go's encoding/json decodes it. The escape keeps its
  length, so byte offsets hold.
- `cut_deep_nesting`: each array or object that opens deeper than a given level is replaced by
  "[]", so that the decoder, whose own limit (about 1,000 levels) fails the whole body, can read
  the rest. A cut value is still deeper than the level it was cut at, so the event that held it
  is still over the event limit (`event.MAX_DEPTH`) if the value is one the event keeps.

Beside them, `may_hold_nul` is the one cheap look for a NUL character in a JSON text (the
collector's requests, the warehouse's rows).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import msgspec

__all__ = [
    "JSON_ERRORS",
    "cut_deep_nesting",
    "json_error_detail",
    "may_hold_nul",
    "replace_lone_surrogates",
]

#: What decoding a JSON text may raise: malformed or out-of-range, not UTF-8, too deep.
JSON_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

# A surrogate escape, whole pair or half. The leading run of escaped backslashes keeps the match
# aligned on escapes: in "\\ud83d" (an escaped backslash, then text) nothing is a surrogate.
_SURROGATE = re.compile(
    rb"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2}\\ud[c-f][0-9a-f]{2}|d[89a-f][0-9a-f]{2})",
    re.IGNORECASE,
)
_ANY_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NUL_ESCAPE = b"\\u0000"  # the only way a JSON string holds a NUL character


def may_hold_nul(text: bytes) -> bool:
    """Whether a JSON text may hold a NUL character (False: it surely holds none); an escaped
    backslash before "u0000" counts too, which costs only care."""
    # Looking for a backslash is a memchr; looking for "\u0000" costs 35 µs per 47 KB, so it
    # is only done for texts with escapes.
    return b"\\" in text and _NUL_ESCAPE in text


def replace_lone_surrogates(body: bytes) -> bytes:
    """body with every unpaired UTF-16 surrogate escape replaced by "\\ufffd" (same length).

    Returns body itself when there is none.
    """
    if _ANY_SURROGATE.search(body) is None:
        return body
    return _SURROGATE.sub(_keep_pairs, body)


def _keep_pairs(match: re.Match[bytes]) -> bytes:
    if len(match[2]) == 4:  # a half alone
        return match[1] + b"\\ufffd"
    return match[0]


def cut_deep_nesting(body: bytes, level: int) -> bytes:
    """body with each array or object that opens below `level` levels replaced by "[]".

    The top value is level 1. Brackets inside strings do not count. Returns body itself when
    nothing is that deep.
    """
    if body.count(b"[") + body.count(b"{") <= level:
        return body
    pieces: list[bytes] = []
    kept_from = 0
    for start, end in _deep_spans(_blank_strings(body), level):
        pieces += (body[kept_from:start], b"[]")
        kept_from = end
    if not pieces:
        return body
    pieces.append(body[kept_from:])
    return b"".join(pieces)


def _blank_strings(body: bytes) -> bytes:
    """body with escapes and the inside of strings blanked, same length: what is left of the
    brackets is the structure."""
    parts = _ESCAPE.sub(b"__", body).split(b'"')
    # Odd parts are inside strings; bytes(n) is n zero bytes. Both maps run in C.
    parts[1::2] = map(bytes, map(len, parts[1::2]))
    return b'"'.join(parts)


def _deep_spans(structure: bytes, level: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each value that opens deeper than `level`, outermost ones only."""
    # One plain loop over the bytes: about 50 ms for 500 KiB whatever they hold, where a
    # regular expression over bracket runs took up to 250 ms on bodies built to defeat it.
    depth = 0
    start = -1  # of the value being cut, -1 when none
    deeper = level + 1
    for index, byte in enumerate(structure):
        if byte in b"[{":
            depth += 1
            if depth == deeper:
                start = index
        elif byte in b"]}":
            if depth == deeper and start >= 0:
                yield start, index + 1
                start = -1
            depth -= 1
    if start >= 0:  # never closed: the body is cut short, and the decoder will say so
        yield start, len(structure)


def json_error_detail(exc: Exception) -> str:
    """Why the decoder refused a JSON text, in the words of a rejection reason."""
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return "it is not valid UTF-8"
    message = str(exc)
    if message == "Input data was truncated":
        return "it is not terminated"
    # "Number out of range - at `$[...]`": the path of an untyped value names no key.
    message = message.removeprefix("JSON is malformed: ").partition(" - at `")[0]
    return message[:1].lower() + message[1:]
