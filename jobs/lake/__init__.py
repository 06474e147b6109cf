"""The lake layer: Spark DataFrames in and out of Delta tables through delta-rs. See `core.Lake`."""

from p13n.lake.core import Lake, TableInfo, WriteResult
from p13n.lake.errors import (
    ConcurrentWriteError,
    LakeError,
    ReplaceWhereViolation,
    SchemaMismatchError,
    TableNotFoundError,
)
from p13n.lake.tables import LAYERS, TableName

__all__ = [
    "LAYERS",
    "ConcurrentWriteError",
    "Lake",
    "LakeError",
    "ReplaceWhereViolation",
    "SchemaMismatchError",
    "TableInfo",
    "TableName",
    "TableNotFoundError",
    "WriteResult",
]
