"""The lake without Spark: DuckDB SQL reads and delta-rs Arrow writes, for the jobs that need no JVM.

Reads: `connect(settings)` is a DuckDB connection with the Delta extension (from the
`duckdb-extension-delta` wheel: nothing is downloaded at run time) and, for a lake on object
storage, the credentials of `lake.storage_options`; `scan(root, table)` is the expression reading
a table. Values always go in as query parameters (`con.execute(sql, [day])`), never into the SQL.

Writes: `write_arrow` (append, overwrite, overwrite of the rows a predicate selects), `append_rows`
(a few run records), `update_rows` and `delete_rows`; each passes the lake's storage options and
records its run in the commit (`RunContext.commit_metadata`), as the Spark `Lake` does. The stream
consumer's exactly-once commits pass their Kafka offsets as `txns`.

delta-rs predicates take no parameters: `literal(value)` quotes a value for one.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any


def duckdb_connection(database: str = ":memory:", settings=None):
    """A DuckDB connection with the Delta extension loaded, and S3 credentials when the lake has them
    (`settings`, default: the configured ones)."""
    import duckdb

    if settings is None:
        from p13n.config import get_settings

        settings = get_settings()

    con = duckdb.connect(database)
    con.execute(f"LOAD '{_extension('delta')}'")
    con.execute("SET enable_progress_bar = false")  # no bars in task logs and command output
    # Every time the platform compares or shows is UTC: without this, DuckDB casts the lake's UTC
    # instants to the machine's zone (an analyst's laptop in Chicago saw orders 6 hours early).
    con.execute("SET TimeZone = 'UTC'")
    options = _options(settings)
    if settings.lake_root.startswith(("s3://", "s3a://")):
        con.execute(f"LOAD '{_extension('httpfs')}'")  # DuckDB's S3 reads (the Delta log's files)
        if options:
            _s3_secret(con, options)
    return con


def _extension(name: str) -> str:
    """The file of a DuckDB extension shipped in its PyPI wheel (`duckdb-extension-<name>`): nothing is
    downloaded at run time (these machines reach PyPI only)."""
    import importlib

    module = importlib.import_module(f"duckdb_extension_{name}")
    found = sorted(Path(module.__file__).parent.glob(f"extensions/*/{name}.duckdb_extension"))
    if not found:
        raise RuntimeError(f"duckdb-extension-{name} is installed without its extension file; reinstall it")
    return str(found[-1])


def connect(settings=None):
    """`duckdb_connection()` for the configured lake."""
    from p13n.config import get_settings

    return duckdb_connection(settings=settings or get_settings())


def _s3_secret(con, options: dict[str, str]) -> None:
    o = {k.lower(): v for k, v in options.items()}
    parts = ["TYPE s3"]
    for key, name in (
        ("aws_access_key_id", "KEY_ID"),
        ("aws_secret_access_key", "SECRET"),
        ("aws_region", "REGION"),
        ("aws_session_token", "SESSION_TOKEN"),
    ):
        if o.get(key):
            parts.append(f"{name} {literal(o[key])}")
    endpoint = o.get("aws_endpoint_url") or o.get("aws_endpoint")
    if endpoint:
        host = endpoint.split("://", 1)[-1]
        parts += [f"ENDPOINT {literal(host)}", "URL_STYLE 'path'"]
        parts.append(f"USE_SSL {'false' if endpoint.startswith('http://') else 'true'}")
    con.execute(f"CREATE OR REPLACE SECRET p13n_lake ({', '.join(parts)})")


def table_uri(root: str, table: str) -> str:
    """Where `layer.name` lives under the lake root (the Lake's own layout)."""
    from p13n.lake.tables import TableName

    return TableName.parse(table).uri(root)


def scan(root: str, table: str) -> str:
    """The DuckDB expression reading a lake table: `delta_scan('<uri>')`."""
    return f"delta_scan({literal(table_uri(root, table))})"


def literal(value: Any) -> str:
    """A SQL literal for a delta-rs predicate or update expression (which take no parameters)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dt.datetime | dt.date):
        value = value.isoformat()
    return "'" + str(value).replace("'", "''") + "'"


def _options(lake) -> dict[str, str] | None:
    """`lake`: the Settings (root and storage options) or a bare lake root. A bare root on object
    storage that is the configured lake's takes its storage options: jobs pass `settings.lake_root`."""
    if not isinstance(lake, str):
        return dict(lake.lake.storage_options) or None
    if not lake.startswith(("s3://", "s3a://")):
        return None
    from p13n.config import get_settings

    configured = get_settings()
    return (dict(configured.lake.storage_options) or None) if lake == configured.lake_root else None


def _root(lake) -> str:
    return lake if isinstance(lake, str) else lake.lake_root


def table_exists(lake, table: str) -> bool:
    """Whether the table has a Delta log (locally or on object storage), without Spark. `lake`: the
    Settings or a lake root."""
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(table_uri(_root(lake), table), storage_options=_options(lake))


def open_table(lake, table: str, version: int | None = None):
    """The delta-rs handle of a table, to read its metadata, history or transactions (None if absent).
    Writes go through the functions below, which record the run. `lake`: the Settings or a root."""
    from deltalake import DeltaTable

    uri = table_uri(_root(lake), table)
    if not DeltaTable.is_deltatable(uri, storage_options=_options(lake)):
        return None
    return DeltaTable(uri, version=version, storage_options=_options(lake))


def read_arrow(lake, table: str, columns: list[str] | None = None, filters=None):
    """A table (or its `columns`, the rows `filters` keep: delta-rs's DNF filters) as an Arrow table."""
    handle = open_table(lake, table)
    if handle is None:
        from p13n.lake.errors import TableNotFoundError

        raise TableNotFoundError(table, f"no Delta table at {table_uri(_root(lake), table)}")
    return handle.to_pyarrow_table(columns=columns, filters=filters)


def _commit(metadata: dict | None = None, txns=None):
    from deltalake import CommitProperties, Transaction

    from p13n.runctx import RunContext

    meta = RunContext.from_env().commit_metadata() | (metadata or {})
    apps = [Transaction(app, version) for app, version in txns] if txns else None
    return CommitProperties(custom_metadata=meta, app_transactions=apps)


def write_arrow(
    lake,
    table: str,
    data,
    *,
    mode: str = "append",
    partition_by: list[str] | None = None,
    predicate: str | None = None,
    schema_mode: str | None = None,
    txns: list[tuple[str, int]] | None = None,
    metadata: dict | None = None,
) -> int:
    """Write an Arrow table or pandas frame: append, overwrite, or (`predicate`) replace the rows it
    selects. `txns`: (app id, version) pairs committed atomically with the rows (the stream's
    offsets); `metadata`: extra commit metadata. `lake`: the Settings or a lake root. Returns the
    rows written."""
    from deltalake import write_deltalake

    write_deltalake(
        table_uri(_root(lake), table),
        data,
        mode=mode,
        partition_by=partition_by,
        predicate=predicate,
        schema_mode=schema_mode,
        storage_options=_options(lake),
        commit_properties=_commit(metadata, txns),
    )
    return data.num_rows if hasattr(data, "num_rows") else len(data)


def replace_rows(
    lake, table: str, data, predicate: str, partition_by: list[str] | None = None, tries: int = 8
) -> int:
    """Replace the rows `predicate` selects with `data` (creating the table, partitioned, on its first
    write): idempotent for a rerun of the same slice. Writers of other slices of the same table at the
    same time (parallel export tasks) may make a commit fail; it is retried, `tries` times at most."""
    import random
    import time

    from deltalake.exceptions import CommitFailedError, DeltaError

    for attempt in range(tries):
        try:
            if table_exists(lake, table):  # a column a newer release adds joins the table
                return write_arrow(
                    lake, table, data, mode="overwrite", predicate=predicate, schema_mode="merge"
                )
            return write_arrow(lake, table, data, partition_by=partition_by)
        except (CommitFailedError, DeltaError) as exc:
            racing = isinstance(exc, CommitFailedError) or "already exists" in str(exc).lower()
            if attempt == tries - 1 or not racing:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() / 5)
    raise AssertionError("unreachable")


def append_rows(lake, table: str, rows: list[dict], schema=None, schema_mode: str | None = None) -> int:
    """Append a few run records to a small `ops.*` table (no Spark needed)."""
    import pyarrow as pa

    if not rows:
        return 0
    return write_arrow(lake, table, pa.Table.from_pylist(rows, schema=schema), schema_mode=schema_mode)


def commit_transactions(lake, table: str, txns: list[tuple[str, int]], metadata: dict | None = None) -> None:
    """A commit without data that records `txns` (moving the stream's stored offsets)."""
    handle = open_table(lake, table)
    handle.create_write_transaction(
        [],
        mode="append",
        schema=handle.schema(),
        partition_by=handle.metadata().partition_columns,
        commit_properties=_commit(metadata, txns),
    )


def update_rows(lake, table: str, predicate: str, updates: dict[str, str]) -> int:
    """Set columns (SQL expressions: quote values with `literal`) on the rows `predicate` selects."""
    metrics = open_table(lake, table).update(
        predicate=predicate, updates=updates, commit_properties=_commit()
    )
    return int(metrics.get("num_updated_rows", 0))


def delete_rows(lake, table: str, predicate: str) -> int:
    """Delete the rows `predicate` selects; returns how many."""
    metrics = open_table(lake, table).delete(predicate, commit_properties=_commit())
    return int(metrics.get("num_deleted_rows", 0))


def forget_history(
    table_path: str, *, retention_hours: int, truncate: bool, storage_options: dict | None = None
) -> None:
    """After a privacy delete: vacuum the files it replaced and, with `truncate`, checkpoint and drop
    the older log entries (their file statistics may hold the deleted values)."""
    import pyarrow.fs as pafs
    from deltalake import DeltaTable

    from p13n.lake.files import filesystem_for

    handle = DeltaTable(table_path, storage_options=storage_options)
    handle.vacuum(retention_hours=retention_hours, enforce_retention_duration=False, dry_run=False)
    if not truncate:
        return
    handle.create_checkpoint()
    version = handle.version()
    fs, path = filesystem_for(handle.table_uri, storage_options)
    log = f"{path}/_delta_log"
    for info in fs.get_file_info(pafs.FileSelector(log)):
        stem = info.base_name.split(".", 1)[0]
        if stem.isdigit() and int(stem) < version:
            fs.delete_file(info.path)


def erase_table_history(settings, table: str) -> None:
    """`forget_history` for a lake table with the privacy settings' retention and truncation."""
    forget_history(
        table_uri(settings.lake_root, table),
        retention_hours=settings.privacy.vacuum_retention_hours,
        truncate=settings.privacy.truncate_history,
        storage_options=_options(settings),
    )


# --- quick answers: what is in the lake (no Spark, about a second) ------------------------------


def list_tables(lake, layer: str | None = None, storage_options: dict | None = None) -> list[str]:
    """Every table in the lake (or one layer), sorted. `lake`: the Settings, or a root (with its
    `storage_options` when it is on object storage)."""
    import pyarrow.fs as pafs
    from deltalake import DeltaTable

    from p13n.lake.files import filesystem_for
    from p13n.lake.tables import LAYERS

    root = _root(lake).rstrip("/")
    options = storage_options or _options(lake)
    fs, base = filesystem_for(root if "://" in root else str(Path(root).resolve()), options)
    found = []
    for lyr in [layer] if layer else LAYERS:
        entries = fs.get_file_info(pafs.FileSelector(f"{base}/{lyr}", allow_not_found=True))
        found += [f"{lyr}.{e.base_name}" for e in entries if e.type == pafs.FileType.Directory]
    return sorted(t for t in found if DeltaTable.is_deltatable(table_uri(root, t), storage_options=options))


def describe(lake, table: str) -> dict:
    """A table's version, files, rows, bytes, partitioning and its last commit (operation, DAG, time)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    handle = open_table(lake, table)
    if handle is None:
        from p13n.lake.errors import TableNotFoundError

        raise TableNotFoundError(table, f"no Delta table at {table_uri(_root(lake), table)}")
    adds = pa.table(handle.get_add_actions(flatten=True))
    last = commit_row(handle.history(1)[0])
    return {
        "table": table,
        "version": handle.version(),
        "files": adds.num_rows,
        "rows": int(pc.sum(adds["num_records"]).as_py() or 0) if "num_records" in adds.column_names else -1,
        "bytes": int(pc.sum(adds["size_bytes"]).as_py() or 0),
        "partition_by": list(handle.metadata().partition_columns),
        "columns": [f.name for f in handle.schema().fields],
        "last_operation": last["operation"],
        "last_dag": last["dag"],
        "last_time": last["time"],
    }


def commit_row(commit: dict) -> dict:
    """One Delta commit as people read it: local-free UTC time, operation, run date, DAG, run, code."""
    ts = commit.get("timestamp")
    when = dt.datetime.fromtimestamp(ts / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else ""
    metrics = commit.get("operationMetrics") or {}
    rows = metrics.get("num_added_rows", metrics.get("num_deleted_rows", ""))
    return {
        "version": commit.get("version"),
        "time": when,
        "operation": commit.get("operation") or "",
        "rows": rows,
        "run_date": commit.get("p13n.run_date") or (commit.get("p13n.logical_date") or "")[:10],
        "dag": commit.get("p13n.dag_id") or commit.get("p13n.writer") or "",
        "run": commit.get("p13n.run_id") or "",
        "code": commit.get("p13n.code_version") or "",
    }


def history(lake, table: str, limit: int | None = None) -> list[dict]:
    """A table's commits, newest first, as `commit_row`s."""
    handle = open_table(lake, table)
    if handle is None:
        from p13n.lake.errors import TableNotFoundError

        raise TableNotFoundError(table, f"no Delta table at {table_uri(_root(lake), table)}")
    return [commit_row(c) for c in handle.history(limit)]


def head(lake, table: str, limit: int = 20, where: str | None = None):
    """The first `limit` rows of a table (those `where`, a DuckDB predicate, keeps) as a pandas frame."""
    if not table_exists(lake, table):
        from p13n.lake.errors import TableNotFoundError

        raise TableNotFoundError(table, f"no Delta table at {table_uri(_root(lake), table)}")
    con = duckdb_connection(settings=None if isinstance(lake, str) else lake)
    sql = f"SELECT * FROM {scan(_root(lake), table)}" + (f" WHERE {where}" if where else "") + " LIMIT ?"
    return con.execute(sql, [int(limit)]).df()
