"""DuckDB over the lake: an in-process SQL engine that reads the Delta tables with its own reader.

The Delta extension comes from the `duckdb-extension-delta` wheel, so nothing is downloaded at run
time; `delta_scan('<table path>')` reads a table, independently of Spark and delta-rs.
"""

from __future__ import annotations

from pathlib import Path


def duckdb_connection(database: str = ":memory:"):
    """A DuckDB connection with the Delta extension loaded."""
    import duckdb
    import duckdb_extension_delta

    found = sorted(Path(duckdb_extension_delta.__file__).parent.glob("extensions/*/delta.duckdb_extension"))
    if not found:
        raise RuntimeError("duckdb-extension-delta is installed without its extension file; reinstall it")
    con = duckdb.connect(database)
    con.execute(f"LOAD '{found[-1]}'")
    return con


def table_uri(root: str, table: str) -> str:
    """Where `layer.name` lives under the lake root (the Lake's own layout)."""
    from p13n.lake.tables import TableName

    return TableName.parse(table).uri(root)


def scan(root: str, table: str) -> str:
    """The DuckDB expression reading a lake table: `delta_scan('<uri>')`."""
    return f"delta_scan('{table_uri(root, table)}')"


def table_exists(root: str, table: str) -> bool:
    """Whether the table has a Delta log (locally or on object storage), without Spark."""
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(table_uri(root, table))


def append_rows(settings, table: str, rows: list[dict], schema=None, schema_mode: str | None = None) -> int:
    """Append a few run records to a small `ops.*` table through delta-rs (no Spark needed)."""
    import pyarrow as pa
    from deltalake import CommitProperties, write_deltalake

    from p13n.runctx import RunContext

    if not rows:
        return 0
    data = pa.Table.from_pylist(rows, schema=schema)
    write_deltalake(
        table_uri(settings.lake_root, table),
        data,
        mode="append",
        storage_options=settings.lake.storage_options or None,
        schema_mode=schema_mode,
        commit_properties=CommitProperties(custom_metadata=RunContext.from_env().commit_metadata()),
    )
    return len(rows)
