"""The PostgreSQL warehouse sink: writes event batches into ``krenalis_events``, each event once.

One write is one transaction: the batch (deduplicated by ``(messageId, connectionId)``, the
last copy wins, in key order) is COPYed into the table. When some of its keys are there already
(a redelivered event: COPY stops at the first, and its savepoint is rolled back), the batch is
COPYed into a temporary table instead and upserted with ``INSERT ... ON CONFLICT (message_id,
connection_id) DO UPDATE``. A redelivered event therefore overwrites its row with the same
values, and an event of another source with the same messageId gets a row of its own. The
straight COPY is the usual case: it spares PostgreSQL writing every row twice (about 40 % of
its CPU per event, bench/MEASURED.md).

Outcomes:

- every event ``Delivered`` once the transaction has committed;
- every event ``Retry`` when the database cannot be used right now (connection lost, server
  shutting down, timeout, serialization failure or deadlock, missing table, ...); the connection
  is dropped and the next write reconnects. Nothing of the batch is committed (unless the
  connection broke during COMMIT itself: then the retry rewrites the same rows, harmlessly).
  A kept connection found dead at the start of a write (server restarted, backend terminated)
  is replaced once within the same write.
- ``Rejected`` for single events that cannot be rows (a required field missing, an object where
  a value belongs) or that PostgreSQL refuses (a value out of range, an invalid IP, an unknown
  enum label): the others of the batch are still written. The culprits are found with
  savepoints: COPY names the failing line; otherwise the batch is split in halves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

import psycopg
from psycopg import sql

from krenalis.errors import InvalidRow
from krenalis.sinks.base import DELIVERED, Event, Outcome, Rejected, Retry
from krenalis.sinks.warehouse.rows import fast_row, read_row_event
from krenalis.sinks.warehouse.schema import COLUMNS, KEY, Row, event_to_row, row_key

__all__ = ["WarehouseSink", "is_retriable"]

log = logging.getLogger("krenalis.warehouse")

TEMP_TABLE = "krenalis_batch"
MAX_REASON = 300
_COPY_CONTEXT = re.compile(r"COPY \S+, line (\d+)(?:, column (\w+))?")

#: A row's primary key: (message_id, connection_id).
Key = tuple[str, str]

# -- errors ----------------------------------------------------------------------------------


def is_retriable(exc: BaseException) -> bool:
    """Whether a failed write may succeed later unchanged (everything but a row's own data)."""
    return not isinstance(exc, psycopg.DataError | psycopg.IntegrityError)


def _row_error_reason(exc: psycopg.Error) -> tuple[int | None, str]:
    """The 1-based COPY line the error points at (if any) and a reason naming the column."""
    diag = exc.diag
    match = _COPY_CONTEXT.search(diag.context or "")
    line = int(match.group(1)) if match else None
    column = (match.group(2) if match else None) or diag.column_name
    message = diag.message_primary or str(exc)
    reason = f"column {column}: {message}" if column else message
    return line, reason[:MAX_REASON]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:MAX_REASON] if text else type(exc).__name__


# -- the sink --------------------------------------------------------------------------------


class WarehouseSink:
    """Writes events into a PostgreSQL table shaped like ``krenalis_events``.

    ``WarehouseSink(dsn)`` connects lazily on the first write. ``timeout`` bounds one whole
    write (connect, COPY, upsert, commit); past it the events get ``Retry``.
    """

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "krenalis_events",
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._table = sql.Identifier(*table.split("."))
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self._statements = _Statements(self._table)

    #: The worker reads each message with this: read_event's checks, and the row made in the
    #: same decode (one pass over the bytes instead of two).
    read_event = staticmethod(read_row_event)

    async def write(self, events: list[Event]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(events)
        rows: dict[Key, Row] = {}
        keys: list[Key | None] = [None] * len(events)
        for i, event in enumerate(events):
            try:
                row = (
                    getattr(event, "row", None)
                    or fast_row(event.data)
                    or event_to_row(event.fields)
                )
            except InvalidRow as exc:
                outcomes[i] = Rejected(str(exc))
                continue
            # One row per key: a write cannot hold a key twice. A later copy of an event
            # replaces the earlier one; another source's event with the same messageId does not.
            key = keys[i] = row_key(row)
            rows[key] = row
        if rows:
            # In key order: two writers of the same keys lock them in the same order, and
            # cannot deadlock.
            result = await self._write_rows(sorted(rows.values(), key=row_key))
            if result:  # usually empty: every row was written
                for i, key in enumerate(keys):
                    if key is not None:
                        outcomes[i] = result.get(key, DELIVERED)
        self._log_rejections(outcomes)
        return [o if o is not None else DELIVERED for o in outcomes]

    async def healthcheck(self) -> None:
        """Raise if the database cannot be reached: ``SELECT 1`` on the sink's connection."""
        async with self._lock:
            try:
                async with asyncio.timeout(self._connect_timeout + 5):
                    conn = await self._connection()
                    async with conn.transaction():
                        await conn.execute("SELECT 1")
            except BaseException:
                await self._drop_connection()
                raise

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop_connection()

    async def __aenter__(self) -> WarehouseSink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- one write ---------------------------------------------------------------------------

    async def _write_rows(self, rows: list[Row]) -> dict[Key, Outcome]:
        """Write the rows in one transaction; the outcome of each row that is not Delivered."""
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout):
                    rejected = await self._transaction_reconnecting(rows)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                await self._drop_connection()
                reason = _describe(exc)
                if isinstance(exc, TimeoutError):
                    reason = f"the write did not finish within {self._timeout:g} s"
                # Debug: the worker logs a failing pipeline once per change of reason.
                log.debug(
                    "Cannot write events to the warehouse; they will be retried.",
                    extra={"reason": reason, "events": len(rows)},
                )
                return {row_key(row): Retry(reason) for row in rows}
            except BaseException:
                await self._drop_connection()
                raise
        return {key: Rejected(reason) for key, reason in rejected.items()}

    async def _transaction_reconnecting(self, rows: list[Row]) -> dict[Key, str]:
        """Run the transaction; replace once a kept connection found dead (server restarted)."""
        reused = self._conn is not None
        try:
            return await self._transaction(rows)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            conn = self._conn
            if not reused or conn is None or not (conn.broken or conn.closed):
                raise
            log.info(
                "The warehouse connection was lost; reconnecting.", extra={"reason": _describe(exc)}
            )
        await self._drop_connection()
        return await self._transaction(rows)

    async def _transaction(self, rows: list[Row]) -> dict[Key, str]:
        conn = await self._connection()
        rejected: dict[Key, str] = {}
        async with conn.transaction(), conn.cursor() as cur:
            await self._write_all(cur, rows, rejected)
        return rejected

    async def _write_all(
        self, cur: psycopg.AsyncCursor, rows: list[Row], rejected: dict[Key, str]
    ) -> None:
        """Write every row that PostgreSQL accepts; record the others in ``rejected``."""
        pending = [rows]
        while pending:
            subset = pending.pop()
            error = await self._try_subset(cur, subset)
            if error is None:
                continue
            line, reason = _row_error_reason(error)
            if len(subset) == 1:
                rejected[row_key(subset[0])] = reason
            elif line is not None and 1 <= line <= len(subset):
                rejected[row_key(subset[line - 1])] = reason
                pending.append(subset[: line - 1] + subset[line:])
            else:
                half = len(subset) // 2
                pending += [subset[half:], subset[:half]]

    async def _try_subset(self, cur: psycopg.AsyncCursor, rows: list[Row]) -> psycopg.Error | None:
        """Write ``rows`` inside a savepoint, straight or, when some are in the table already,
        merged; the row-level error, if one occurred."""
        if not rows:
            return None
        try:
            async with cur.connection.transaction():
                await self._copy(cur, self._statements.copy_sql, rows)
            return None
        except psycopg.errors.UniqueViolation:
            pass  # written before (a redelivery, another writer): merged below
        except psycopg.Error as exc:
            if is_retriable(exc):
                raise
            return exc
        try:
            async with cur.connection.transaction():
                # The batch table is emptied at each commit, but an earlier merge in this
                # transaction may have left its rows there.
                await cur.execute(self._statements.empty_temp_sql)
                await self._copy(cur, self._statements.copy_batch_sql, rows)
                await cur.execute(self._statements.upsert_sql)
        except psycopg.Error as exc:
            if is_retriable(exc):
                raise
            return exc
        return None

    @staticmethod
    async def _copy(cur: psycopg.AsyncCursor, statement: bytes, rows: list[Row]) -> None:
        async with cur.copy(statement) as copy:
            for row in rows:
                await copy.write_row(row)

    # -- connection --------------------------------------------------------------------------

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = await psycopg.AsyncConnection.connect(
            self._dsn,
            autocommit=False,
            connect_timeout=max(1, round(self._connect_timeout)),
            application_name="krenalis-warehouse",
        )
        try:
            self._statements.render(conn)
            # The batch table lives as long as the connection, emptied at each commit: made in
            # every transaction, its 67 columns were written to and deleted from the catalog
            # for every batch (PostgreSQL's CPU per event, bench/MEASURED.md).
            await conn.execute(self._statements.create_temp_sql)
            await conn.commit()
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        info = conn.info
        log.info(
            "Connected to the warehouse.",
            extra={"host": info.host, "port": info.port, "dbname": info.dbname},
        )
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    @staticmethod
    def _log_rejections(outcomes: list[Outcome | None]) -> None:
        rejected = [o for o in outcomes if isinstance(o, Rejected)]
        if rejected:
            log.warning(
                "The warehouse rejected events.",
                extra={"rejected": len(rejected), "reason": rejected[0].reason},
            )


class _Statements:
    """The SQL of a write, composed once per table and rendered once per connection (psycopg
    renders a composed statement again at every execute: it showed in the worker's profile)."""

    def __init__(self, table: sql.Identifier) -> None:
        temp = sql.Identifier(TEMP_TABLE)
        names = [c.name for c in COLUMNS]
        cols = sql.SQL(", ").join(map(sql.Identifier, names))
        key = sql.SQL(", ").join(map(sql.Identifier, KEY))
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in names if n not in KEY
        )
        self.create_temp = sql.SQL(
            "CREATE TEMPORARY TABLE {temp} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        ).format(temp=temp, table=table)
        # DELETE, not TRUNCATE: on a table usually empty it writes nothing to the catalog.
        self.empty_temp = sql.SQL("DELETE FROM {}").format(temp)
        self.copy = sql.SQL("COPY {table} ({cols}) FROM STDIN").format(table=table, cols=cols)
        self.copy_batch = sql.SQL("COPY {temp} ({cols}) FROM STDIN").format(temp=temp, cols=cols)
        # Rows go in key order (the COPYs get them sorted), so two writers of the same keys
        # lock them in the same order and cannot deadlock.
        self.upsert = sql.SQL(
            "INSERT INTO {table} ({cols}) SELECT {cols} FROM {temp} "
            "ORDER BY {key} ON CONFLICT ({key}) DO UPDATE SET {updates}"
        ).format(table=table, cols=cols, temp=temp, key=key, updates=updates)
        self.create_temp_sql = self.empty_temp_sql = self.upsert_sql = b""
        self.copy_sql = self.copy_batch_sql = b""

    def render(self, conn: psycopg.AsyncConnection) -> None:
        """The statements as the bytes sent on `conn`."""
        self.create_temp_sql = self.create_temp.as_bytes(conn)
        self.empty_temp_sql = self.empty_temp.as_bytes(conn)
        self.copy_sql = self.copy.as_bytes(conn)
        self.copy_batch_sql = self.copy_batch.as_bytes(conn)
        self.upsert_sql = self.upsert.as_bytes(conn)
