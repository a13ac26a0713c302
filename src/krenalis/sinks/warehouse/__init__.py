"""The PostgreSQL warehouse: the ``krenalis_events`` table, its sink and an embedded server."""

from krenalis.sinks.warehouse.embedded import EmbeddedPostgres, EmbeddedPostgresError
from krenalis.sinks.warehouse.schema import COLUMNS, init_db
from krenalis.sinks.warehouse.sink import InvalidRow, WarehouseSink, event_to_row, is_retriable

__all__ = [
    "COLUMNS",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "InvalidRow",
    "WarehouseSink",
    "event_to_row",
    "init_db",
    "is_retriable",
]
