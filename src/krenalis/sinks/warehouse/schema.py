"""The ``krenalis_events`` table: its columns, how an event becomes a row, and ``init_db``.

The DDL lives in ``schema.sql``: the ``krenalis_events`` table of Krenalis's Go implementation
(github.com/krenalis/krenalis), so the same queries work on either, plus an index on
``received_at``, and one difference: the primary key is ``(message_id, connection_id)``, not
``message_id`` alone. Sources choose their own messageIds (browser write keys are public), so
with ``message_id`` alone any source could overwrite another source's rows; the connectionId is
set by the collector, never by the client. ``init_db`` moves an older table to that key.

``COLUMNS`` lists the 67 written columns in the table's order (``kpid`` is never written:
identity resolution fills it). ``event_to_row`` maps a wire event (camelCase keys) to those
columns: absent values become NULL, NUL characters are stripped (PostgreSQL text cannot hold
them), JSON values are encoded, datetimes are converted to UTC. Everything else (ranges, IP
syntax, enum labels) is left to PostgreSQL, whose refusals the sink turns into ``Rejected``
outcomes.
"""

from __future__ import annotations

import enum
import logging
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from krenalis.errors import InvalidRow, SinkError

__all__ = [
    "COLUMNS",
    "CONNECTION_ID",
    "KEY",
    "Column",
    "Kind",
    "MESSAGE_ID",
    "Row",
    "event_to_row",
    "init_db",
    "row_key",
    "schema_sql",
]

log = logging.getLogger("krenalis.warehouse")

Row = tuple[Any, ...]

#: The table's primary key: a messageId is unique within its source (connectionId) only.
#: message_id comes first: with connection_id first, PostgreSQL spent about 17% more CPU per
#: batch of tests/sinks/bench_warehouse.py (one source), mostly in the upsert's sort by key,
#: which a leading column with the same value in every row slows down. A lookup by message_id
#: alone still uses the index, too.
KEY = ("message_id", "connection_id")
# The key of tables made before sources were kept apart, which init_db replaces.
OLD_KEY = ("message_id",)
TABLE = "krenalis_events"

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
CONNECTION_ID = next(i for i, c in enumerate(COLUMNS) if c.name == "connection_id")
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


def event_to_row(event: dict[str, Any]) -> Row:
    """The event's values in ``COLUMNS`` order; raise ``InvalidRow`` if it cannot be one."""
    if not isinstance(event, dict):
        raise InvalidRow(f"the event is a {type(event).__name__}, not an object")
    row: list[Any] = [None] * len(COLUMNS)
    _fill(row, event, _TREE, "")
    for index, field in _REQUIRED_FIELDS:
        if row[index] is None:
            raise InvalidRow(f"{field}: the field is required")
    # Both halves of the key must be strings: the sink deduplicates a batch by them in Python,
    # where 7 and "7" differ although PostgreSQL stores both as "7".
    if not isinstance(row[CONNECTION_ID], str) or not row[CONNECTION_ID]:
        raise InvalidRow("connectionId: must be a non-empty string")
    if not isinstance(row[MESSAGE_ID], str) or not row[MESSAGE_ID]:
        raise InvalidRow("messageId: must be a non-empty string")
    return tuple(row)


#: The row's primary key, in ``KEY``'s order: ``(message_id, connection_id)``. An itemgetter:
#: the warehouse sink takes it once per event, and sorts each batch by it.
row_key: Callable[[Row], tuple[str, str]] = operator.itemgetter(MESSAGE_ID, CONNECTION_ID)


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


# What init_db did, as it tells it.
CREATED = f"created the {TABLE} table"
MIGRATED = (
    f"changed the primary key of {TABLE} from ({', '.join(OLD_KEY)}) to ({', '.join(KEY)}); "
    "every row is kept"
)
UP_TO_DATE = f"nothing to do: {TABLE} is up to date"

_PRIMARY_KEY = sql.SQL("""
SELECT c.conname, a.attname
FROM pg_constraint c
CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, position)
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
WHERE c.conrelid = {table}::regclass AND c.contype = 'p'
ORDER BY k.position
""").format(table=sql.Literal(TABLE))

# One statement, so the table is never without a key. The new key's index is built from the
# rows already there: unique by message_id, they are unique by (message_id, connection_id) too.
_MIGRATE_KEY = """
ALTER TABLE {table}
    DROP CONSTRAINT {name},
    ADD CONSTRAINT {name} PRIMARY KEY ({key})
"""


async def init_db(conn_or_dsn: psycopg.AsyncConnection | str, *, quiet: bool = False) -> str:
    """Create the enums, the ``krenalis_events`` table, its index and the ``events`` view, or
    move an existing table whose primary key is ``message_id`` alone to ``KEY``, keeping its
    rows. Return what was done in a few words (``CREATED``, ``MIGRATED`` or ``UP_TO_DATE``),
    and log it unless ``quiet`` (a caller that prints it).

    Idempotent, and safe when several processes run it at once: everything happens in one
    transaction that first takes an advisory lock, so a second process waits for the first to
    commit and then finds nothing to do. Given a connection, it runs in a transaction (or a
    savepoint) on it. Raises ``SinkError`` if the table has a primary key it does not know.
    """
    if isinstance(conn_or_dsn, str):
        async with await psycopg.AsyncConnection.connect(conn_or_dsn) as conn:
            change = await _create_or_migrate(conn)
    else:
        change = await _create_or_migrate(conn_or_dsn)
    if not quiet:
        log.info("Warehouse schema ready.", extra={"change": change})
    return change


async def _create_or_migrate(conn: psycopg.AsyncConnection) -> str:
    async with conn.transaction():
        # Held until the transaction ends: a concurrent start waits here, then sees our commit
        # (each statement of a READ COMMITTED transaction reads the latest committed state).
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        existed = await _table_exists(conn)
        await conn.execute(schema_sql().encode())
        if not existed:
            return CREATED
        return await _migrate_key(conn)


async def _table_exists(conn: psycopg.AsyncConnection) -> bool:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def _primary_key(conn: psycopg.AsyncConnection) -> tuple[str | None, tuple[str, ...]]:
    """The name and the columns (in order) of the table's primary key; (None, ()) if none."""
    cur = await conn.execute(_PRIMARY_KEY)
    rows = await cur.fetchall()
    if not rows:
        return None, ()
    return rows[0][0], tuple(column for _, column in rows)


async def _migrate_key(conn: psycopg.AsyncConnection) -> str:
    name, columns = await _primary_key(conn)
    if set(columns) == set(KEY):  # ON CONFLICT matches a key in either column order
        return UP_TO_DATE
    if name is None or columns != OLD_KEY:
        found = f"the primary key ({', '.join(columns)})" if columns else "no primary key"
        raise SinkError(
            f"The warehouse table {TABLE} has {found}; the sink needs ({', '.join(KEY)}). "
            "Change the table by hand, then start again."
        )
    statement = sql.SQL(_MIGRATE_KEY).format(
        table=sql.Identifier(TABLE),
        name=sql.Identifier(name),
        key=sql.SQL(", ").join(map(sql.Identifier, KEY)),
    )
    await conn.execute(statement)
    return MIGRATED
