"""Errors of the lake layer; each names the table and says what went wrong."""


class LakeError(RuntimeError):
    """A lake operation failed; the message names the table."""

    def __init__(self, table: str, message: str):
        super().__init__(f"{table}: {message}")
        self.table = table


class TableNotFoundError(LakeError):
    """The table has never been written."""


class SchemaMismatchError(LakeError):
    """The DataFrame does not fit the table's schema; the message lists the columns."""


class ConcurrentWriteError(LakeError):
    """Another writer committed a conflicting change first; nothing of this write was kept. Retry it."""


class ReplaceWhereViolation(LakeError):
    """A replace-where write held rows outside the partitions it was allowed to replace."""
