"""The workspace: sources, destinations and pipelines, as declared in the workspace file.

A *source* is something that sends events (a website, an app), known by its write key. A
*destination* is somewhere events go besides the warehouse (a webhook, files): its options are
declared by its sink (see :mod:`krenalis.sinks.registry`). A *pipeline* takes the events of one
source, keeps those that pass its filter and consent rule, changes them with its ``transform:``
steps if it has any, and delivers them to the warehouse or to one destination. :mod:`krenalis.workspace.load` reads the file; no ``repr`` here shows a
secret.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from krenalis.pipelines.filters import ConsentRule, Filter
from krenalis.sinks.base import SinkOptions
from krenalis.transforms.spec import Step

__all__ = [
    "DEFAULT_ARCHIVE",
    "DEFAULT_RETRY_WINDOW",
    "ID_PATTERN",
    "MAX_SHARDS",
    "WAREHOUSE",
    "Destination",
    "Pipeline",
    "Source",
    "WarehouseConfig",
    "Workspace",
]

#: The ``to`` of a pipeline that writes into the warehouse (so no destination may use the id).
WAREHOUSE = "warehouse"
#: How long a pipeline keeps retrying an event before dead-lettering it, unless configured.
DEFAULT_RETRY_WINDOW = 4 * 3600.0
#: Seconds a source's archive keeps its events, unless configured (``archive: 0``: none).
DEFAULT_ARCHIVE = 7 * 86400.0
#: Consumers per pipeline at most (events of one anonymousId always go to the same one).
MAX_SHARDS = 16
#: Source, destination and pipeline ids: they end up in NATS subjects and consumer names.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
    """Something that sends events, authenticated by its write key (masked in ``repr``).

    ``allowed_origins`` are the web pages' origins whose browsers may send its events
    ("https://shop.example.com", "https://*.example.com" for any subdomain), normalised:
    lower case, no default port. Empty: any origin.

    ``archive`` is how long (seconds) the stream keeps a copy of each of its accepted events,
    for replays and backfills; 0: no archive.
    """

    id: str
    write_key: str
    allowed_origins: tuple[str, ...] = ()
    archive: float = DEFAULT_ARCHIVE

    def __repr__(self) -> str:
        return f"Source(id={self.id!r}, write_key='***')"


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a pipeline delivers events, besides the warehouse: ``options`` are its sink's
    (a :class:`~krenalis.sinks.base.SinkOptions` subclass, whose repr masks secrets)."""

    id: str
    options: SinkOptions

    @property
    def type(self) -> str:
        return self.options.type

    @property
    def retry_window(self) -> float:
        """Seconds: the destination's own retry window, else the default."""
        window = self.options.retry_window
        return DEFAULT_RETRY_WINDOW if window is None else float(window)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Events of ``source`` that pass ``filter`` and ``consents``, delivered to ``to``.

    ``to`` is :data:`WAREHOUSE` or a destination id. ``batch_max_events`` and
    ``batch_max_wait`` (seconds) are None when the file leaves them to the sink's defaults.
    ``retry_window`` (seconds) is resolved: the pipeline's, else its destination's, else 4h.
    ``transform`` holds the steps its worker runs on each event before the sink, in order.
    ``backfill`` (seconds) asks, when the pipeline is created, for its source's archive of
    that long before to be replayed into it, once (see :mod:`krenalis.worker.backfill`).
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
    transform: tuple[Step, ...] = ()
    backfill: float | None = None

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


def _key_bytes(key: str) -> bytes:
    # surrogatepass: a key decoded from a hostile header must not make the lookup raise.
    return key.encode("utf-8", "surrogatepass")
