"""The steps of a pipeline's ``transform:`` list, as the workspace file declares them.

Each step is one list item whose *kind* is the one key it shares with :data:`STEPS`
(``- hash: [traits.email]``, ``- python: transforms.py:enrich``), or a bare name for the steps
that need nothing (``- mask_ip``, ``- drop_bots``). A tagged union does not fit that shape (the
kind is a key, not a value), so the loader picks the declaration by that key and msgspec checks
the item against it alone, with the same file:line messages as every other entry
(:mod:`krenalis.workspace.load`). Every kind also takes ``timeout`` (default 200ms).

These are declarations only: nothing here imports code or opens files. The steps are built in
the process that runs them (:mod:`krenalis.transforms.chain`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar

import msgspec
from msgspec import inspect as mi

from krenalis.workspace.values import Duration, NonEmptyStr, redacted

__all__ = [
    "DEFAULT_TIMEOUT",
    "STEPS",
    "DropBotsStep",
    "DropStep",
    "FieldPath",
    "FunctionRef",
    "GeoipStep",
    "HashSecret",
    "HashStep",
    "KeepStep",
    "MaskIpStep",
    "PythonStep",
    "RenameStep",
    "SetStep",
    "Step",
    "StepSpec",
]

#: Seconds one step may take on one event, unless its ``timeout`` says otherwise.
DEFAULT_TIMEOUT = 0.2
#: The shortest HMAC secret accepted: a short one lets anyone who has the hashes guess the
#: e-mail addresses or ids behind them by trying candidates.
MIN_SECRET = 16

_NAME = r"[A-Za-z_$][A-Za-z0-9_$-]*"
_PATH = re.compile(rf"{_NAME}(\.{_NAME})*")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class FieldPath(str):
    """A dotted path into an event: ``userId``, ``traits.email``, ``context.ip``."""

    description: ClassVar[str] = (
        "a field path such as userId, traits.email or properties.price (names joined by dots)"
    )

    @classmethod
    def decode(cls, value: Any) -> FieldPath:
        if not isinstance(value, str) or not _PATH.fullmatch(value):
            raise ValueError()
        return cls(value)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.split("."))


class FunctionRef(str):
    """A Python function: ``package.module:function`` (importable where the workers run) or
    ``path/to/file.py:function`` (relative to the workspace file's directory)."""

    description: ClassVar[str] = (
        "a function as module:function (mypkg.transforms:enrich) or file.py:function "
        "(transforms.py:enrich)"
    )

    @classmethod
    def decode(cls, value: Any) -> FunctionRef:
        if not isinstance(value, str):
            raise ValueError()
        where, colon, name = value.rpartition(":")
        if not colon:
            raise ValueError(f"{cls.description}; it has no :function part")
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"{cls.description}; the part after the last colon is not a name")
        if not where.endswith(".py") and not _MODULE.fullmatch(where):
            raise ValueError(
                f"{cls.description}; {where!r} is neither a module path nor a .py file"
            )
        return cls(value)

    @property
    def is_file(self) -> bool:
        return self.rpartition(":")[0].endswith(".py")


class HashSecret(str):
    """The HMAC key of a ``hash`` step: long enough that hashes cannot be reversed by guessing."""

    description: ClassVar[str] = (
        f"at least {MIN_SECRET} characters, from ${{VAR}} (a random string such as "
        "`openssl rand -hex 32` prints)"
    )
    secret: ClassVar[bool] = True

    @classmethod
    def decode(cls, value: Any) -> HashSecret:
        if not isinstance(value, str) or len(value) < MIN_SECRET:
            raise ValueError()
        return cls(value)


class StepSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What every step has. A kind subclasses it with ``kind = "<key>"`` and a field of that
    name holding the step's main value; the registry is :data:`STEPS`."""

    kind: ClassVar[str] = ""
    #: Seconds this step may take on one event (None: :data:`DEFAULT_TIMEOUT`).
    timeout: Duration | None = None

    def __post_init__(self) -> None:
        value = getattr(self, self.kind, None)
        if isinstance(value, list | dict) and not value:
            raise ValueError(f"{self.kind} is empty: name at least one field")

    @property
    def limit(self) -> float:
        return DEFAULT_TIMEOUT if self.timeout is None else float(self.timeout)

    @property
    def label(self) -> str:
        """How messages, metrics and `transform test` name the step."""
        return self.kind

    def __repr__(self) -> str:
        # A hash step's secret never reaches a log line or a traceback.
        fields = _field_types(type(self))
        shown = ", ".join(f"{n}={redacted(t, getattr(self, n))!r}" for n, t in fields.items())
        return f"{type(self).__name__}({shown})"


@cache
def _field_types(cls: type[StepSpec]) -> dict[str, mi.Type]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return {f.name: f.type for f in info.fields}


_Paths = list[FieldPath]


class PythonStep(StepSpec, frozen=True, kw_only=True):
    """A Python function of (event) or (event, context)."""

    kind: ClassVar[str] = "python"
    python: FunctionRef

    @property
    def label(self) -> str:
        return f"python {self.python}"


class HashStep(StepSpec, frozen=True, kw_only=True):
    """Fields replaced by their HMAC-SHA256 (hex) under ``secret``."""

    kind: ClassVar[str] = "hash"
    hash: _Paths
    secret: HashSecret


class DropStep(StepSpec, frozen=True, kw_only=True):
    """Fields removed."""

    kind: ClassVar[str] = "drop"
    drop: _Paths


class RenameStep(StepSpec, frozen=True, kw_only=True):
    """Fields moved: ``{old.path: new.path}``."""

    kind: ClassVar[str] = "rename"
    rename: dict[str, FieldPath]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_keys(self.rename, "rename")


class SetStep(StepSpec, frozen=True, kw_only=True):
    """Fields set to fixed values: ``{properties.channel: web}``."""

    kind: ClassVar[str] = "set"
    set: dict[str, Any]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_keys(self.set, "set")


class KeepStep(StepSpec, frozen=True, kw_only=True):
    """An allow-list of properties: those not listed are removed."""

    kind: ClassVar[str] = "keep"
    keep: _Paths

    def __post_init__(self) -> None:
        super().__post_init__()
        for path in self.keep:
            if path.parts[0] != "properties" or len(path.parts) < 2:
                raise ValueError(
                    f'keep lists properties ("properties.amount"), and "{path}" is not one'
                )


class MaskIpStep(StepSpec, frozen=True, kw_only=True):
    """IP addresses truncated: the last octet of IPv4, the last 80 bits of IPv6."""

    kind: ClassVar[str] = "mask_ip"
    mask_ip: list[FieldPath] | None = None

    @property
    def paths(self) -> list[FieldPath]:
        return self.mask_ip or [FieldPath("context.ip")]


class DropBotsStep(StepSpec, frozen=True, kw_only=True):
    """Events from crawlers and bots dropped."""

    kind: ClassVar[str] = "drop_bots"
    drop_bots: None = None


class GeoipOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: A MaxMind-format (.mmdb) city database, relative to the workspace file's directory.
    database: NonEmptyStr


class GeoipStep(StepSpec, frozen=True, kw_only=True):
    """context.location (country, city, latitude, longitude) from context.ip."""

    kind: ClassVar[str] = "geoip"
    geoip: GeoipOptions


#: Every kind of step, by the key that names it in the file.
STEPS: dict[str, type[StepSpec]] = {
    cls.kind: cls
    for cls in (
        PythonStep,
        HashStep,
        DropStep,
        RenameStep,
        SetStep,
        KeepStep,
        MaskIpStep,
        DropBotsStep,
        GeoipStep,
    )
}


def _check_keys(mapping: dict[str, Any], kind: str) -> None:
    for key in mapping:
        if not _PATH.fullmatch(key):
            raise ValueError(f'{kind}: "{key}" is not {FieldPath.description}')


@dataclass(frozen=True, slots=True)
class Step:
    """One declared step of a pipeline: its place in the list (0-based) and the line it is
    written on, which messages name but which does not make the step a different one."""

    index: int
    spec: StepSpec
    line: int = field(default=0, compare=False)

    @property
    def label(self) -> str:
        return f"{self.index + 1}:{self.spec.label}"
