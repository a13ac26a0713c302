"""The built-in steps that need no file: rename, drop, set, keep, hash and mask_ip.

Each ``build_*`` turns a declaration into a function of (event, context) that changes the event
in place and returns it: the event is the process's own decoded copy, so nothing is copied.
Paths are dotted (``traits.email``); a path whose parents are missing is left alone, except by
``set`` and ``rename``, which create the objects on the way.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import ipaddress
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import msgspec

from krenalis.transforms.context import Context
from krenalis.transforms.spec import (
    DropStep,
    FieldPath,
    HashStep,
    KeepStep,
    MaskIpStep,
    RenameStep,
    SetStep,
)

__all__ = [
    "StepFailed",
    "build_drop",
    "build_hash",
    "build_keep",
    "build_mask_ip",
    "build_rename",
    "build_set",
    "mask_ip",
]

Event = dict[str, Any]
StepFunction = Callable[[Event, Context], Any]

_MISSING = object()


class StepFailed(Exception):
    """A built-in step that cannot do its work on this event (the event is dead-lettered)."""


def _parent(event: Event, parts: tuple[str, ...], create: bool = False) -> dict | None:
    """The object holding the path's last name; None if a parent is missing or not an object
    (with ``create``: missing parents are made, and one that is not an object is an error)."""
    node: Any = event
    for depth, name in enumerate(parts[:-1]):
        child = node.get(name)
        if child is None and create:
            child = node[name] = {}
        elif not isinstance(child, dict):
            if create:
                where = ".".join(parts[: depth + 1])
                raise StepFailed(f"{where} is {type(child).__name__}, not an object")
            return None
        node = child
    return node


def build_drop(spec: DropStep) -> StepFunction:
    paths = [p.parts for p in spec.drop]

    def drop(event: Event, context: Context) -> Event:
        for parts in paths:
            parent = _parent(event, parts)
            if parent is not None:
                parent.pop(parts[-1], None)
        return event

    return drop


def build_rename(spec: RenameStep) -> StepFunction:
    moves = [(FieldPath(old).parts, new.parts) for old, new in spec.rename.items()]

    def rename(event: Event, context: Context) -> Event:
        for old, new in moves:
            parent = _parent(event, old)
            value = _MISSING if parent is None else parent.pop(old[-1], _MISSING)
            if value is not _MISSING:
                target = _parent(event, new, create=True)
                assert target is not None
                target[new[-1]] = value
        return event

    return rename


def build_set(spec: SetStep) -> StepFunction:
    values = [(FieldPath(path).parts, value) for path, value in spec.set.items()]

    def set_fields(event: Event, context: Context) -> Event:
        for parts, value in values:
            target = _parent(event, parts, create=True)
            assert target is not None
            # A list or mapping value is copied: events must not share (and change) one object.
            target[parts[-1]] = copy.deepcopy(value) if isinstance(value, list | dict) else value
        return event

    return set_fields


def build_keep(spec: KeepStep) -> StepFunction:
    tree = _tree([p.parts[1:] for p in spec.keep])

    def keep(event: Event, context: Context) -> Event:
        properties = event.get("properties")
        if isinstance(properties, dict):
            event["properties"] = _kept(properties, tree)
        return event

    return keep


def _tree(paths: list[tuple[str, ...]]) -> dict[str, Any]:
    """Paths as nested dicts; None marks a name kept whole (with everything below it)."""
    tree: dict[str, Any] = {}
    for parts in sorted(set(paths), key=len):
        node = tree
        for name in parts[:-1]:
            if name in node and node[name] is None:
                break  # a shorter path keeps this one whole already
            node = node.setdefault(name, {})
        else:
            node[parts[-1]] = None
    return tree


def _kept(value: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for name, below in tree.items():
        inner = value.get(name, _MISSING)
        if inner is _MISSING:
            continue
        if below is None:
            kept[name] = inner
        elif isinstance(inner, dict):
            kept[name] = _kept(inner, below)
    return kept


def build_hash(spec: HashStep) -> StepFunction:
    paths = [p.parts for p in spec.hash]
    # Keyed once: each value copies it (half the cost of hmac.new per value).
    keyed = hmac.new(str(spec.secret).encode(), digestmod=hashlib.sha256)

    def hash_fields(event: Event, context: Context) -> Event:
        for parts in paths:
            parent = _parent(event, parts)
            if parent is None:
                continue
            value = parent.get(parts[-1])
            if value is not None:
                parent[parts[-1]] = _hmac(keyed, value)
        return event

    return hash_fields


def _hmac(keyed: hmac.HMAC, value: Any) -> str:
    # Text as is; anything else as its JSON (keys sorted), so 42 and "42" differ and an object
    # hashes the same whatever the order of its keys.
    data = value.encode() if isinstance(value, str) else msgspec.json.encode(value, order="sorted")
    h = keyed.copy()
    h.update(data)
    return h.hexdigest()


def build_mask_ip(spec: MaskIpStep) -> StepFunction:
    paths = [p.parts for p in spec.paths]

    def mask(event: Event, context: Context) -> Event:
        for parts in paths:
            parent = _parent(event, parts)
            if parent is None or parts[-1] not in parent:
                continue
            masked = mask_ip(parent[parts[-1]])
            if masked is None:
                del parent[parts[-1]]  # not an address we can mask: do not keep it whole
            else:
                parent[parts[-1]] = masked
        return event

    return mask


def mask_ip(value: Any) -> str | None:
    """The address with its last IPv4 octet, or last 80 IPv6 bits, zeroed; None if ``value``
    is not an IP address."""
    # No address is longer than 45 characters (64 with a zone); longer text is not cached.
    return _masked(value) if isinstance(value, str) and len(value) <= 64 else None


@lru_cache(maxsize=4096)  # a batch repeats a few addresses; parsing one costs about 2 us
def _masked(value: str) -> str | None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return "::ffff:" + str(ipaddress.ip_network(f"{address.ipv4_mapped}/24", strict=False)[0])
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False)[0])
