"""What changes between two workspace texts, entry by entry, in words people read.

The texts are compared as written: `${VAR}` references stay references, so a diff never shows
a secret's value, and values of secret keys (write keys, URLs, webhook secrets, headers, DSNs)
are reported as "changed" without their values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from msgspec import inspect as mi

from krenalis.sinks.registry import SINKS
from krenalis.workspace._yaml import YamlError, load_yaml
from krenalis.workspace.values import is_secret

__all__ = ["Change", "diff_texts", "render"]

_SECTIONS = (("sources", "source"), ("destinations", "destination"), ("pipelines", "pipeline"))
_SECRET_KEYS = {"source": {"write_key"}, "warehouse": {"dsn"}}


@dataclass(frozen=True)
class Change:
    """One entry added, removed or changed; ``details`` say what changed in it."""

    kind: str  # "added" | "removed" | "changed"
    section: str  # "source" | "destination" | "pipeline" | "warehouse"
    id: str
    details: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        mark = {"added": "+", "removed": "-", "changed": "~"}[self.kind]
        name = self.section if self.section == "warehouse" else f'{self.section} "{self.id}"'
        return f"{mark} {name}" + (f": {', '.join(self.details)}" if self.details else "")


def diff_texts(old: str | None, new: str) -> list[Change]:
    """The changes from `old` (None: an empty workspace) to `new`, section by section."""
    before, after = _as_written(old), _as_written(new)
    changes = _diff_entry("warehouse", "", before.get("warehouse"), after.get("warehouse"))
    for plural, singular in _SECTIONS:
        old_entries = before.get(plural) or {}
        new_entries = after.get(plural) or {}
        for entry_id in [*old_entries, *(k for k in new_entries if k not in old_entries)]:
            changes += _diff_entry(
                singular, entry_id, old_entries.get(entry_id), new_entries.get(entry_id)
            )
    return changes


def render(changes: list[Change]) -> str:
    return "\n".join(map(str, changes)) if changes else "no change"


def _as_written(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        doc = load_yaml(text, {}, unset=set())  # every ${VAR} stays as written
    except YamlError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _diff_entry(section: str, entry_id: str, old: Any, new: Any) -> list[Change]:
    if old == new:
        return []
    if old is None:
        return [Change("added", section, entry_id)]
    if new is None:
        return [Change("removed", section, entry_id)]
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [Change("changed", section, entry_id)]
    secret = _secret_keys(section, new)
    details = tuple(
        _detail(key, old.get(key), new.get(key), key in secret)
        for key in [*old, *(k for k in new if k not in old)]
        if old.get(key) != new.get(key)
    )
    return [Change("changed", section, entry_id, details)]


def _detail(key: str, old: Any, new: Any, secret: bool) -> str:
    if secret or isinstance(old, dict | list) or isinstance(new, dict | list):
        return f"{key} changed"
    if old is None:
        return f"{key} set to {_shown(new)}"
    if new is None:
        return f"{key} unset (was {_shown(old)})"
    return f"{key} {_shown(old)} -> {_shown(new)}"


def _shown(value: Any) -> str:
    if isinstance(value, str) and "\n" not in value and len(value) <= 60:
        return value
    return json.dumps(value, default=str)[:60]


def _secret_keys(section: str, entry: dict) -> set[str]:
    """Keys whose values must not be shown: a destination's come from its sink's options."""
    if section != "destination":
        return _SECRET_KEYS.get(section, set())
    options = SINKS.get(str(entry.get("type")))
    if options is None:
        return {key for key in entry if key != "type"}  # unknown type: show no value at all
    info = mi.type_info(options)
    assert isinstance(info, mi.StructType)
    return {f.encode_name for f in info.fields if is_secret(f.type)}
