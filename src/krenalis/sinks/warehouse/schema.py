"""The ``krenalis_events`` table: its columns, how an event becomes a row, and ``init_db``.

The DDL lives in ``schema.sql``: the ``krenalis_events`` table of Krenalis's Go implementation
(github.com/krenalis/krenalis), so the same queries work on either, plus an index on
``received_at``. ``COLUMNS`` lists the 67 written columns in the table's order (``kpid`` is
never written: identity resolution fills it). ``event_to_row`` maps a wire event (camelCase
keys) to those columns: absent values become NULL, NUL characters are stripped (PostgreSQL
text cannot hold them), JSON values are encoded, datetimes are converted to UTC. Everything else
(ranges, IP syntax, enum labels) is left to PostgreSQL, whose refusals the sink turns into
``Rejected`` outcomes.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg

from krenalis.errors import InvalidRow

__all__ = [
    "COLUMNS",
    "Column",
    "Kind",
    "MESSAGE_ID",
    "Row",
    "event_to_row",
    "init_db",
    "schema_sql",
]

if TYPE_CHECKING:
    from krenalis.sinks.base import Event

Row = tuple[Any, ...]

# Any constant works; it only has to be the same in every process that runs init_db.
SCHEMA_LOCK_KEY = 0x6B72656E616C6973  # "krenalis"


class Kind(enum.Enum):
    """How an event value becomes a column value."""

    VALUE = "value"  # a string, number or boolean, passed to PostgreSQL as is
    JSON = "json"  # any JSON value, stored as jsonb
    TIME = "time"  # an ISO 8601 datetime, stored in UTC as timestamp(3)


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the table and the path of its value in a wire event."""

    name: str
    path: tuple[str, ...]
    kind: Kind
    required: bool

    @property
    def field(self) -> str:
        """The dotted wire name, as reasons quote it: ``context.screen.width``."""
        return ".".join(self.path)


# (prefix, fields) in the table's column order.
_LAYOUT = (
    ("", "connectionId anonymousId channel category"),
    ("context.app.", "name version build namespace"),
    ("context.browser.", "name other version"),
    ("context.campaign.", "name source medium term content"),
    ("context.", "consents"),
    ("context.device.", "id advertisingId adTrackingEnabled manufacturer model name type token"),
    ("context.", "ip"),
    ("context.library.", "name version"),
    ("context.", "locale"),
    ("context.location.", "city country latitude longitude speed"),
    ("context.network.", "bluetooth carrier cellular wifi"),
    ("context.os.", "name other version"),
    ("context.page.", "path referrer search title url"),
    ("context.referrer.", "id type"),
    ("context.screen.", "width height density"),
    ("context.session.", "id start"),
    ("context.", "timezone userAgent"),
    ("", "event groupId messageId name properties receivedAt sentAt timestamp traits type"),
    ("", "previousId userId"),
)
_PATHS = [prefix + field for prefix, fields in _LAYOUT for field in fields.split()]

_JSON = {"context.consents", "properties", "traits"}
_TIME = {"receivedAt", "sentAt", "timestamp"}
_REQUIRED = {"connectionId", "anonymousId", "messageId", "receivedAt", "sentAt", "timestamp"}
_REQUIRED |= {"traits", "type"}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _column(dotted: str) -> Column:
    kind = Kind.JSON if dotted in _JSON else Kind.TIME if dotted in _TIME else Kind.VALUE
    path = tuple(dotted.split("."))
    name = "_".join(_snake(part) for part in path)
    return Column(name, path, kind, dotted in _REQUIRED)


COLUMNS: tuple[Column, ...] = tuple(_column(p) for p in _PATHS)
MESSAGE_ID = next(i for i, c in enumerate(COLUMNS) if c.name == "message_id")
if len(COLUMNS) != 67:  # pragma: no cover - a guard against editing _LAYOUT by mistake
    raise AssertionError(f"{len(COLUMNS)} columns")


# -- event -> row ----------------------------------------------------------------------------


def _tree() -> dict[str, Any]:
    """Columns as nested dicts, shaped like the event: key -> (column index, kind, dotted
    field) for a column, key -> dict for a section (``context``, ``context.page``...)."""
    tree: dict[str, Any] = {}
    for i, c in enumerate(COLUMNS):
        node = tree
        for key in c.path[:-1]:
            node = node.setdefault(key, {})
        node[c.path[-1]] = (i, c.kind, c.field)
    return tree


_TREE = _tree()
_REQUIRED_FIELDS = tuple((i, c.field) for i, c in enumerate(COLUMNS) if c.required)
_SCALARS = frozenset({str, int, float, bool})


def _strip_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_strip_nul(k): _strip_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_nul(v) for v in value]
    return value


def _json(value: Any) -> str:
    data = msgspec.json.encode(value)
    if b"\\u0000" in data:  # PostgreSQL's jsonb refuses \u0000
        data = msgspec.json.encode(_strip_nul(value))
    return data.decode()


def _time(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if moment.tzinfo is UTC:  # what the collector writes
        return moment.replace(tzinfo=None)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _convert(kind: Kind, value: Any, field: str) -> Any:
    try:
        if kind is Kind.JSON:
            return _json(value)
        if kind is Kind.TIME:
            return _time(value)
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise InvalidRow(f"{field}: {exc}") from None
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict | list | tuple):
        raise InvalidRow(f"{field}: an object or array where a single value is expected")
    return value


def event_to_row(event: Event) -> Row:
    """The event's values in ``COLUMNS`` order; raise ``InvalidRow`` if it cannot be one."""
    if not isinstance(event, dict):
        raise InvalidRow(f"the event is a {type(event).__name__}, not an object")
    row: list[Any] = [None] * len(COLUMNS)
    _fill(row, event, _TREE, "")
    for index, field in _REQUIRED_FIELDS:
        if row[index] is None:
            raise InvalidRow(f"{field}: the field is required")
    if not isinstance(row[MESSAGE_ID], str) or not row[MESSAGE_ID]:
        raise InvalidRow("messageId: must be a non-empty string")
    return tuple(row)


def _fill(row: list[Any], obj: dict[str, Any], tree: dict[str, Any], prefix: str) -> None:
    """Put the values of `obj` found in `tree` into `row`; only the keys present are visited
    (most events use few of the 67 columns)."""
    for key, value in obj.items():
        spec = tree.get(key)
        if spec is None or value is None:
            continue  # not a column (originalTimestamp, an unknown key)
        if type(spec) is dict:  # a section: context, context.page, ...
            if not isinstance(value, dict):
                raise InvalidRow(f"{prefix}{key}: must be an object")
            _fill(row, value, spec, f"{prefix}{key}.")
            continue
        index, kind, field = spec
        if type(value) is str and kind is Kind.VALUE:  # the common case, kept inline
            if "\x00" in value:
                value = value.replace("\x00", "")
        elif kind is not Kind.VALUE or type(value) not in _SCALARS:
            value = _convert(kind, value, field)
        row[index] = value


@cache
def schema_sql() -> str:
    """The DDL of ``schema.sql``."""
    return resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")


async def init_db(conn_or_dsn: psycopg.AsyncConnection | str) -> None:
    """Create the enums, the ``krenalis_events`` table, its index and the ``events`` view.

    Idempotent, and safe when several processes run it at once: a transaction-level advisory
    lock serialises them. Given a connection, it runs in a transaction (or a savepoint) on it.
    """
    if isinstance(conn_or_dsn, str):
        async with await psycopg.AsyncConnection.connect(conn_or_dsn) as conn:
            await _create(conn)
    else:
        await _create(conn_or_dsn)


async def _create(conn: psycopg.AsyncConnection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        await conn.execute(schema_sql().encode())
