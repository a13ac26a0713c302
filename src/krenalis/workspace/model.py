"""The workspace: sources, destinations and pipelines, declared in a YAML file.

A *source* is something that sends events (a website, an app), known by its write key. A
*destination* is somewhere events go besides the warehouse (a webhook, files). A *pipeline*
takes the events of one source, keeps those that pass its filter and consent rule, and
delivers them to the warehouse or to one destination. See :func:`starter_workspace_text` for
the file format, with examples.

Loading is strict: an unknown key, a dangling reference, a malformed value or a duplicated key
stops with a :class:`WorkspaceError` naming the file and the line. ``${VAR}`` in string values
is replaced by the environment variable (``$$`` is a literal ``$``), so secrets can stay out of
the file.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

from krenalis.errors import WorkspaceError
from krenalis.pipelines.filters import ConsentRule, Filter

__all__ = [
    "DEFAULT_RETRY_WINDOW",
    "MAX_SHARDS",
    "WAREHOUSE",
    "Destination",
    "Pipeline",
    "Source",
    "WarehouseConfig",
    "Workspace",
    "WorkspaceError",
    "generate_write_key",
    "load_workspace",
    "parse_workspace",
    "starter_workspace_text",
]

#: The ``to`` of a pipeline that writes into the warehouse (so no destination may use the id).
WAREHOUSE = "warehouse"
#: How long a pipeline keeps retrying an event before dead-lettering it, unless configured.
DEFAULT_RETRY_WINDOW = 4 * 3600.0
#: Consumers per pipeline at most (events of one anonymousId always go to the same one).
MAX_SHARDS = 16

_BASE62 = string.digits + string.ascii_letters
_WRITE_KEY_LENGTH = 32


@dataclass(frozen=True, slots=True)
class WarehouseConfig:
    """An external PostgreSQL warehouse; its password never shows in ``repr``."""

    dsn: str

    def __repr__(self) -> str:
        return f"WarehouseConfig(dsn={_mask_dsn(self.dsn)!r})"


def _mask_dsn(dsn: str) -> str:
    # URI form: postgresql://user:password@host/db; keyword form: host=... password=...
    masked = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", masked)


@dataclass(frozen=True, slots=True)
class Source:
    """Something that sends events, authenticated by its write key (masked in ``repr``)."""

    id: str
    write_key: str

    def __repr__(self) -> str:
        return f"Source(id={self.id!r}, write_key='***')"


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a pipeline delivers events, besides the warehouse.

    ``url``, ``secret``, ``headers``, ``batch``, ``timeout`` (seconds), ``max_concurrency`` and
    ``rate_limit`` (requests per second, None for no limit) apply to ``webhook``; ``path`` to
    ``file``. ``retry_window`` is in seconds. ``secret`` and header values are masked in repr.
    """

    id: str
    type: str
    url: str | None = None
    path: str | None = None
    secret: str | None = None
    headers: Mapping[str, str] = dataclass_field(default_factory=dict, hash=False)
    batch: bool = False
    timeout: float = 10.0
    max_concurrency: int = 8
    rate_limit: float | None = None
    retry_window: float = DEFAULT_RETRY_WINDOW

    def __repr__(self) -> str:
        target = f"url={self.url!r}" if self.type == "webhook" else f"path={self.path!r}"
        secret = "'***'" if self.secret else "None"
        headers = {name: "***" for name in self.headers}
        return (
            f"Destination(id={self.id!r}, type={self.type!r}, {target}, secret={secret}, "
            f"headers={headers!r}, batch={self.batch!r}, timeout={self.timeout!r}, "
            f"max_concurrency={self.max_concurrency!r}, rate_limit={self.rate_limit!r}, "
            f"retry_window={self.retry_window!r})"
        )


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Events of ``source`` that pass ``filter`` and ``consents``, delivered to ``to``.

    ``to`` is :data:`WAREHOUSE` or a destination id. ``batch_max_events`` and
    ``batch_max_wait`` (seconds) are None when the file leaves them to the sink's defaults.
    ``retry_window`` (seconds) is resolved: the pipeline's, else its destination's, else 4h.
    """

    id: str
    source: str
    to: str
    enabled: bool = True
    shards: int = 1
    filter: Filter | None = None
    consents: ConsentRule | None = None
    batch_max_events: int | None = None
    batch_max_wait: float | None = None
    retry_window: float = DEFAULT_RETRY_WINDOW

    @property
    def to_warehouse(self) -> bool:
        return self.to == WAREHOUSE


@dataclass(frozen=True, slots=True)
class Workspace:
    """Every source, destination and pipeline, by id, in file order."""

    warehouse: WarehouseConfig | None
    sources: dict[str, Source]
    destinations: dict[str, Destination]
    pipelines: dict[str, Pipeline]
    _write_keys: tuple[tuple[bytes, Source], ...] = dataclass_field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        keys = tuple((_key_bytes(s.write_key), s) for s in self.sources.values())
        object.__setattr__(self, "_write_keys", keys)

    def source_by_write_key(self, key: str) -> Source | None:
        """The source with this write key, or None.

        Every key is compared, in constant time, so the time taken does not tell an attacker
        how much of a key was right, nor which source matched.
        """
        candidate = _key_bytes(key)
        found = None
        for expected, source in self._write_keys:
            if hmac.compare_digest(expected, candidate):
                found = source
        return found

    def enabled_pipelines(self) -> list[Pipeline]:
        return [p for p in self.pipelines.values() if p.enabled]

    def pipelines_for_source(self, source_id: str) -> list[Pipeline]:
        """Every pipeline of the source, enabled or not, in file order."""
        return [p for p in self.pipelines.values() if p.source == source_id]


def _key_bytes(key: str) -> bytes:
    # surrogatepass: a key decoded from a hostile header must not make the lookup raise.
    return key.encode("utf-8", "surrogatepass")


def generate_write_key() -> str:
    """A new random write key: 32 base62 characters (about 190 bits)."""
    return "".join(secrets.choice(_BASE62) for _ in range(_WRITE_KEY_LENGTH))


def parse_workspace(
    text: str, filename: str = "<string>", *, environ: Mapping[str, str] | None = None
) -> Workspace:
    """Build a workspace from YAML text; ``environ`` (default ``os.environ``) serves ``${VAR}``."""
    from krenalis.workspace.load import build_workspace  # it imports this module's classes

    return build_workspace(text, filename, os.environ if environ is None else environ)


def load_workspace(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Workspace:
    """Read and build the workspace file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        reason = f"cannot read the workspace file: {exc.strerror or exc}"
        raise WorkspaceError(str(path), None, reason) from None
    except UnicodeDecodeError:
        raise WorkspaceError(str(path), None, "the workspace file is not UTF-8 text") from None
    return parse_workspace(text, str(path), environ=environ)


def starter_workspace_text(write_key: str) -> str:
    """The workspace file ``krenalis serve`` writes when there is none: one source, one
    pipeline to the warehouse, and commented-out examples of everything else."""
    # A JSON string is a valid YAML double-quoted scalar; "$$" keeps a "$" from reading as ${VAR}.
    return _STARTER.replace('"{write_key}"', json.dumps(write_key).replace("$", "$$"))


_STARTER = """\
# Krenalis workspace: where events come from, and where they go.
#
# Sources send events with their write key (any Segment-compatible SDK, or curl).
# Pipelines take the events of one source to the warehouse or to a destination.
# Ids are letters, digits, "-" and "_". Durations look like 500ms, 30s, 1m30s, 4h.
# Any string value may use ${ENV_VAR}, so secrets can stay out of this file.

# Without a warehouse section, events go to an embedded PostgreSQL in the data directory.
# warehouse:
#   dsn: postgresql://krenalis:${KRENALIS_PG_PASSWORD}@localhost:5432/krenalis

sources:
  website:
    write_key: "{write_key}"

# destinations:
#   crm:
#     type: webhook                  # POST each event as JSON
#     url: https://example.com/hook
#     secret: ${CRM_WEBHOOK_SECRET}  # signs each request (X-Krenalis-Signature)
#     timeout: 10s
#     max_concurrency: 8
#     rate_limit: 50                 # requests per second
#     retry_window: 4h               # then the event goes to the dead letters
#   archive:
#     type: file                     # one NDJSON file per day
#     path: ./data/archive

pipelines:
  website-warehouse:
    source: website
    to: warehouse
#   website-crm:
#     source: website
#     to: crm
#     shards: 1                      # 1 to 16 consumers; one user's events stay in order
#     filter:                        # all: every condition; any: at least one
#       all:
#         - {field: type, op: is, value: track}
#         - {field: properties.total, op: greater_than, value: 100}
#     consents:                      # context.consents.<purpose> must be true
#       purposes: [marketing]
#       operator: all                # all | any
#     batch: {max_events: 100, max_wait: 1s}
#   website-archive:
#     source: website
#     to: archive
#     enabled: false
"""
