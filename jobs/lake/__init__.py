"""The lake layer, the one door to the Delta tables.

- `p13n.lake.tables`: the catalog naming every table once.
- `p13n.lake.core.Lake`: Spark DataFrames in and out (writes through delta-rs, keyed and idempotent).
- `p13n.lake.duck`: everything without Spark: SQL reads with query parameters, Arrow reads and
  writes, small run-record appends, updates and deletes; each write records its run and passes the
  lake's storage options.

The names below are imported lazily, so `p13n.config` can import the catalog without Spark.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Lake": "p13n.lake.core",
    "TableInfo": "p13n.lake.core",
    "WriteResult": "p13n.lake.core",
    "ConcurrentWriteError": "p13n.lake.errors",
    "LakeError": "p13n.lake.errors",
    "ReplaceWhereViolation": "p13n.lake.errors",
    "SchemaMismatchError": "p13n.lake.errors",
    "TableNotFoundError": "p13n.lake.errors",
    "LAYERS": "p13n.lake.tables",
    "Table": "p13n.lake.tables",
    "TableName": "p13n.lake.tables",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'p13n.lake' has no attribute {name!r}")
