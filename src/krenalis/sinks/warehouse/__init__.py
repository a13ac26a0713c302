"""The PostgreSQL warehouse: the ``krenalis_events`` table, its sink and an embedded server."""

from krenalis.sinks.warehouse.embedded import EmbeddedPostgres
from krenalis.sinks.warehouse.schema import COLUMNS, event_to_row, init_db
from krenalis.sinks.warehouse.sink import WarehouseSink, is_retriable

__all__ = [
    "COLUMNS",
    "EmbeddedPostgres",
    "WarehouseSink",
    "event_to_row",
    "init_db",
    "is_retriable",
]
