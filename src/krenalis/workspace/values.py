"""Value types of the workspace file that msgspec cannot check alone, and how each is described.

Durations, URLs, write keys, DSNs and header mappings are declared as these types in the
workspace's Structs (and in each sink's options); :func:`dec_hook` decodes them by calling the
type's ``decode`` classmethod. ``decode`` raises ValueError saying what the value must be
("an http or https URL with a host; its scheme is ...") or, with no text, the type's
``description`` applies. Types with ``secret = True``, and strings annotated with
``Meta(extra={"secret": True})``, are never shown: not in error messages, not in reprs.

:func:`describe` words any declared type for the "<field> must be <description>" messages.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

import msgspec
from msgspec import inspect as mi

from krenalis.config import parse_duration
from krenalis.workspace._yaml import UnsetVariable

__all__ = [
    "Dsn",
    "Duration",
    "Headers",
    "HttpUrl",
    "NonEmptyStr",
    "Origin",
    "Retention",
    "SecretStr",
    "WriteKey",
    "dec_hook",
    "describe",
    "failure_of",
    "is_secret",
    "redacted",
]

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
SecretStr = Annotated[str, msgspec.Meta(min_length=1, extra={"secret": True})]

_MIN_WRITE_KEY = 16
# RFC 9110 token characters for header names; values must not be able to inject lines.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class _Invalid(ValueError):
    """A value whose problem the usual "<field> must be <description>" cannot say.

    ``reason`` is the whole message after the entry's name; ``key`` is the entry at fault
    inside a mapping value, so that the error points at its line.
    """

    def __init__(self, reason: str, key: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


def failure_of(cause: BaseException | None) -> tuple[str, str | None, str | None]:
    """What a ``decode`` said: (what the value must be, whole reason, key at fault)."""
    if isinstance(cause, _Invalid):
        return "", cause.reason, cause.key
    return (str(cause) if cause is not None else ""), None, None


class Duration(float):
    """Seconds; written "500ms", "30s", "1m30s", "4h" or "7d"; always above zero."""

    description: ClassVar[str] = "a duration above zero such as 500ms, 30s, 1m30s or 4h"

    @classmethod
    def decode(cls, value: Any) -> Duration:
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = 0.0
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError()
        return cls(seconds)


class Retention(float):
    """Seconds a source's archive keeps its events: "7d", "12h"... (whole seconds, at least
    one: the stream's per-message TTL counts in seconds), or 0 for no archive."""

    description: ClassVar[str] = (
        "a duration of at least 1s such as 7d or 12h, or 0 to keep no archive"
    )

    @classmethod
    def decode(cls, value: Any) -> Retention:
        if value == 0 and not isinstance(value, bool) or value == "0":
            return cls(0.0)
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = 0.0
        if not (seconds >= 1 and math.isfinite(seconds)):
            raise ValueError()
        return cls(math.ceil(seconds))


class HttpUrl(str):
    """An http(s) URL with a host. Never shown: it may carry credentials or a token."""

    description: ClassVar[str] = "an http or https URL with a host"
    secret: ClassVar[bool] = True

    @classmethod
    def decode(cls, value: Any) -> HttpUrl:
        if not isinstance(value, str) or not value:
            raise ValueError("a non-empty string")
        problem = _url_problem(value)
        if problem:
            raise ValueError(f"{cls.description}; {problem}")
        return cls(value)

    @classmethod
    def redact(cls, value: str) -> str:
        """Scheme, host, port and path: no user information, no query."""
        parts = urlsplit(value)
        host = parts.hostname or ""
        port = f":{parts.port}" if _port_or_none(parts) else ""
        return f"{parts.scheme}://{host}{port}{parts.path}" + ("?***" if parts.query else "")


def _port_or_none(parts: Any) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def _url_problem(url: str) -> str | None:
    if _has_space(url):
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


class WriteKey(str):
    """A source's write key: printable, no spaces, long enough not to be guessed."""

    description: ClassVar[str] = (
        f"at least {_MIN_WRITE_KEY} characters, without spaces (krenalis generates 32)"
    )
    secret: ClassVar[bool] = True

    @classmethod
    def decode(cls, value: Any) -> WriteKey:
        if not isinstance(value, str) or not value:
            raise ValueError("a non-empty string")
        if len(value) < _MIN_WRITE_KEY or not value.isprintable() or _has_space(value):
            raise ValueError()
        return cls(value)


def _has_space(text: str) -> bool:
    return any(c.isspace() for c in text)


class Dsn(str):
    """A PostgreSQL connection string, URI (postgresql://) or keywords (host=... dbname=...)."""

    description: ClassVar[str] = "a non-empty string"
    secret: ClassVar[bool] = True

    @classmethod
    def decode(cls, value: Any) -> Dsn:
        if not isinstance(value, str) or not value:
            raise ValueError()
        scheme = value.partition("://")[0] if "://" in value else None
        if scheme is not None and scheme not in ("postgresql", "postgres"):
            raise ValueError(f'a postgresql:// URL, not "{scheme}://"')
        return cls(value)


class Headers(dict[str, str]):
    """Extra HTTP headers: valid names, one-line values (secret: they often hold tokens)."""

    description: ClassVar[str] = "a mapping of header names to values"
    secret: ClassVar[bool] = True

    @classmethod
    def decode(cls, value: Any) -> Headers:
        if not isinstance(value, Mapping):
            raise ValueError()
        for name, text in value.items():
            if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
                raise _Invalid(f'invalid header name "{name}"', name)
            if not isinstance(text, str) or not text:
                raise _Invalid(f"headers: {name} must be a non-empty string", name)
            if "\r" in text or "\n" in text:
                raise _Invalid(f'header "{name}" has a line break', name)
        return cls(value)


_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Origin(str):
    """A web page's origin, as browsers send it in ``Origin``: scheme, host, optional port.
    A first label "*" stands for any subdomain. Kept normalised (lower case, no default port),
    as browsers write it, so that the collector compares strings."""

    description: ClassVar[str] = (
        "an origin such as https://shop.example.com or https://*.example.com"
    )

    @classmethod
    def decode(cls, value: Any) -> Origin:
        if not isinstance(value, str) or not value:
            raise ValueError("a non-empty string")
        origin, problem = _normal_origin(value)
        if problem:
            raise ValueError(f"{cls.description}; {problem}")
        return cls(origin)


def _normal_origin(text: str) -> tuple[str, str | None]:
    """The origin ``text`` in its normal form, or the reason it is not one."""
    if text == "*":
        return "", "to allow every origin, leave allowed_origins out"
    if any(c.isspace() for c in text):
        return "", "it contains whitespace"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return "", "it is malformed"
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return "", f'its scheme is "{parts.scheme}"' if parts.scheme else "it has no scheme"
    if parts.path or parts.query or parts.fragment or text.endswith(("?", "#")):
        return "", "it has a path: an origin ends after the host (and port)"
    if "@" in parts.netloc:
        return "", "it has a user name"
    host, problem = _origin_host(parts.hostname or "")
    if problem:
        return "", problem
    shown_port = f":{port}" if port is not None and port != _DEFAULT_PORTS[scheme] else ""
    return f"{scheme}://{host}{shown_port}", None


def _origin_host(host: str) -> tuple[str, str | None]:
    if not host:
        return "", "it has no host"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return (f"[{host}]" if address.version == 6 else host), None
    labels = host.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if not labels:
            return "", 'it needs a domain after "*."'
    if any("*" in label for label in labels):
        return "", 'its "*" may only stand for the first label of the host, as in *.example.com'
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return "", (
            "its host must be letters, digits, hyphens and dots "
            "(an internationalised name in its xn-- form)"
        )
    return host, None


def dec_hook(type_: type, value: Any) -> Any:
    """msgspec's hook for the types above (and any type with a ``decode`` classmethod)."""
    if isinstance(value, type_):  # decoded already (options made again from options)
        return value
    if isinstance(value, UnsetVariable) and issubclass(type_, str):
        return type_(value)  # checked by the process that has the variable
    decode = getattr(type_, "decode", None)
    if decode is None:
        raise NotImplementedError(f"no decoder for {type_.__name__}")
    return decode(value)


def is_secret(t: mi.Type) -> bool:
    """Whether values of the declared type ``t`` must never be shown."""
    if isinstance(t, mi.Metadata):
        return bool((t.extra or {}).get("secret")) or is_secret(t.type)
    if isinstance(t, mi.CustomType):
        return bool(getattr(t.cls, "secret", False))
    if isinstance(t, mi.UnionType):
        return any(is_secret(member) for member in t.types)
    return False


def redacted(t: mi.Type, value: Any) -> Any:
    """``value`` fit for a repr: secrets masked, the keys of a secret mapping kept."""
    if not is_secret(t) or value is None:
        return value
    if isinstance(value, Mapping):
        return {name: "***" for name in value}
    redact = getattr(getattr(t, "cls", None), "redact", None)
    return redact(value) if redact is not None else "***"


def describe(t: mi.Type) -> str:
    """What a value of the declared type ``t`` must be, in the words of error messages."""
    if isinstance(t, mi.Metadata):
        return describe(t.type)
    if isinstance(t, mi.UnionType):
        # "or absent" goes without saying: a null is accepted, so it is never the problem.
        members = [describe(m) for m in t.types if not isinstance(m, mi.NoneType)]
        return " or ".join(dict.fromkeys(members))  # a union of Structs is just "a mapping"
    if isinstance(t, mi.IntType | mi.FloatType):
        return _describe_number(t)
    if isinstance(t, mi.StrType):
        return "a non-empty string" if t.min_length else "a string"
    if isinstance(t, mi.CustomType):
        return str(getattr(t.cls, "description", f"a valid {t.cls.__name__}"))
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(f'"{v}"' for v in t.values)
    return _DESCRIPTIONS.get(type(t), "a valid value")


_DESCRIPTIONS: dict[type, str] = {
    mi.BoolType: "true or false",
    mi.DictType: "a mapping",
    mi.StructType: "a mapping",
    mi.ListType: "a list",
    mi.SetType: "a list",
    mi.FrozenSetType: "a list",
    mi.VarTupleType: "a list",
    mi.NoneType: "nothing",
}


def _describe_number(t: mi.IntType | mi.FloatType) -> str:
    noun = "a whole number" if isinstance(t, mi.IntType) else "a number"
    if t.ge is not None and t.le is not None:
        return f"{noun} from {t.ge} to {t.le}"
    bounds = [
        f"above {t.gt}" if t.gt is not None else "",
        f"at least {t.ge}" if t.ge is not None else "",
        f"below {t.lt}" if t.lt is not None else "",
        f"at most {t.le}" if t.le is not None else "",
    ]
    shown = " and ".join(b for b in bounds if b)
    return f"{noun} {shown}" if shown else noun
