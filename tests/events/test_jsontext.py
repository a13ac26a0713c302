"""The slow path's byte-level repairs (events/jsontext.py), against what they must mean once
decoded: strings full of brackets, quotes and backslashes must not fool them."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from krenalis.events.jsontext import cut_deep_nesting, replace_lone_surrogates

tricky_text = st.text(alphabet='[]{}"\\,:ab\U0001f600', max_size=12)
values = st.recursive(
    st.none() | st.integers() | tricky_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4)
    ),
    max_leaves=30,
)


def cut(value: object, level: int) -> object:
    """value with each array or object below `level` levels replaced by []."""
    if type(value) not in (list, dict):
        return value
    if level == 0:
        return []
    if type(value) is list:
        return [cut(item, level - 1) for item in value]
    return {key: cut(item, level - 1) for key, item in value.items()}


@given(values, st.integers(min_value=1, max_value=6))
def test_cutting_keeps_everything_above_the_level(value: object, level: int) -> None:
    body = msgspec.json.encode(value)
    assert msgspec.json.decode(cut_deep_nesting(body, level)) == cut(value, level)


def test_cutting_a_body_too_deep_for_the_decoder() -> None:
    body = b'{"a":"[[[","b":' + b"[" * 5000 + b"]" * 5000 + b',"c":"]]"}'
    assert msgspec.json.decode(cut_deep_nesting(body, 3)) == {"a": "[[[", "b": [[[]]], "c": "]]"}
    assert cut_deep_nesting(b"[[[[1]]]]", 4) == b"[[[[1]]]]"  # nothing that deep: as it was
    assert cut_deep_nesting(b"[[[[[[", 2) == b"[[[]"  # unterminated, still unterminated


@given(tricky_text)
def test_paired_surrogates_and_other_escapes_are_left_alone(text: str) -> None:
    body = msgspec.json.encode(text).replace("\U0001f600".encode(), b"\\ud83d\\ude00")
    assert replace_lone_surrogates(body) == body
    assert msgspec.json.decode(body) == text


# JSON text of a piece of a string -> its kind.
PIECES = {"a": "text", "ud83d": "text", "\\\\": "backslash", "\\ud83d": "high", "\\ude00": "low"}


def expected_text(pieces: list[str]) -> str:
    """What a decoder that replaces lone surrogates (Go's) reads from the pieces."""
    text, i = [], 0
    while i < len(pieces):
        kind = PIECES[pieces[i]]
        if kind == "high" and i + 1 < len(pieces) and PIECES[pieces[i + 1]] == "low":
            text.append("\U0001f600")
            i += 2
            continue
        text.append({"text": pieces[i], "backslash": "\\", "high": "\ufffd", "low": "\ufffd"}[kind])
        i += 1
    return "".join(text)


@given(st.lists(st.sampled_from(list(PIECES)), max_size=12))
def test_every_lone_surrogate_becomes_the_replacement_character(pieces: list[str]) -> None:
    body = ('"' + "".join(pieces) + '"').encode()
    repaired = replace_lone_surrogates(body)
    assert len(repaired) == len(body)  # byte offsets hold
    assert msgspec.json.decode(repaired) == expected_text(pieces)
