"""The lake: Spark DataFrames in and out of standard Delta tables, through delta-rs.

Writes are distributed and atomic. Spark executors write the Parquet data files (see `files.py`);
the driver receives only their metadata and records them in one Delta commit. Readers see either
the whole write or none of it, and a writer killed before its commit leaves the table at its
previous version, with stray files that `vacuum` removes. Reads take the file list (pruned by
partition values and statistics) from the Delta log and hand it to Spark's native Parquet reader.

Merge and delete are copy-on-write, as delta-spark does them without deletion vectors: the files
that may hold affected rows are read, rewritten by the executors, and swapped in one commit
(remove old files, add new ones). A commit that loses a race to a conflicting writer raises
`ConcurrentWriteError` and keeps nothing; the write can simply be retried.

Isolation is Delta's default, WriteSerializable: overwrites, merges and deletes that touch the same
files conflict, blind appends never do (an append committed during a merge is ordered after it).
Tables written by merge are therefore never blind-appended to in this project.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.exceptions import TableNotFoundError as _DeltaNotFound
from deltalake.transaction import (
    AddAction,
    CommitProperties,
    RemoveAction,
    Transaction,
    create_table_with_add_actions,
)

from p13n.config import LakeSettings
from p13n.faults import checkpoint
from p13n.lake.errors import (
    ConcurrentWriteError,
    LakeError,
    ReplaceWhereViolation,
    SchemaMismatchError,
    TableNotFoundError,
)
from p13n.lake.files import (
    HIVE_NULL,
    collect_staged_files,
    filesystem_for,
    is_object_store,
    partition_values_from_path,
)
from p13n.lake.tables import TableName
from p13n.runctx import RunContext
from p13n.spark import default_parallelism

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

Filter = tuple[str, str, Any]
STAGING_DIR = "_staging"  # hidden from Delta readers; a killed write's leftovers are removed by vacuum
PartitionSpec = Mapping[str, Any]


@dataclass(frozen=True)
class WriteResult:
    """What a write did. `skipped` is true when its (app_id, version) had already been committed.

    `rows_removed` counts the rows of the files the write replaced (merge, delete, rewrite); the net
    change of the table is `rows_written - rows_removed`.
    """

    table: str
    operation: str
    version: int | None
    rows_written: int = 0
    files_added: int = 0
    files_removed: int = 0
    rows_removed: int = 0
    skipped: bool = False
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TableInfo:
    table: str
    version: int
    files: int
    bytes: int
    rows: int
    partition_by: list[str]
    columns: list[str]


class Lake:
    """The IO layer for `bronze.*`, `silver.*`, `gold.*`, `quarantine.*` and `ops.*` tables."""

    def __init__(self, spark: SparkSession | Callable[[], SparkSession], settings: LakeSettings, root: str):
        """`spark`: a session, or a function making one on first use (a task with nothing to write
        then never connects to Spark)."""
        self._spark = spark
        self.settings = settings
        self.root = root.rstrip("/")
        self.storage_options = dict(settings.storage_options) or None
        # Executors move the data files with pyarrow (not Spark's Hadoop filesystems): on object
        # storage, where Spark has no S3A jar here, or when configured (`lake.spark_io`).
        self.arrow_io = settings.spark_io == "arrow" or (
            settings.spark_io == "auto" and is_object_store(self.root)
        )

    @property
    def spark(self) -> SparkSession:
        if callable(self._spark):
            self._spark = self._spark()
        return self._spark

    @classmethod
    def from_settings(cls, spark: SparkSession | Callable[[], SparkSession], settings=None) -> Lake:
        from p13n.config import get_settings

        settings = settings or get_settings()
        return cls(spark, settings.lake, settings.lake_root)

    # ------------------------------------------------------------------ naming and discovery
    def uri(self, table: str) -> str:
        return TableName.parse(table).uri(self.root)

    def exists(self, table: str) -> bool:
        return DeltaTable.is_deltatable(self.uri(table), storage_options=self.storage_options)

    def delta_table(self, table: str, version: int | None = None) -> DeltaTable:
        """The delta-rs handle of a table (for engines other than Spark: DuckDB, Polars, pandas)."""
        try:
            return DeltaTable(self.uri(table), version=version, storage_options=self.storage_options)
        except _DeltaNotFound:
            raise TableNotFoundError(table, f"no Delta table at {self.uri(table)}") from None

    def tables(self, layer: str | None = None) -> list[str]:
        """Every table in the lake (or in one layer), sorted."""
        from p13n.lake.duck import list_tables

        return list_tables(self.root, layer, storage_options=self.storage_options)

    def info(self, table: str) -> TableInfo:
        dt = self.delta_table(table)
        adds = _adds(dt, flatten=True)
        return TableInfo(
            table=table,
            version=dt.version(),
            files=adds.num_rows,
            bytes=int(pa.compute.sum(adds["size_bytes"]).as_py() or 0),
            rows=int(pa.compute.sum(adds["num_records"]).as_py() or 0)
            if "num_records" in adds.column_names
            else -1,
            partition_by=list(dt.metadata().partition_columns),
            columns=[f.name for f in dt.schema().fields],
        )

    def content_key(self, table: str, version: int | None = None) -> str:
        """A digest of what the table holds at `version` (default: the latest), the same however its
        rows lie in files: per partition, the row count and each column's minimum, maximum and null
        count, from the Delta log's file statistics. A compaction or a rerun that rewrites a
        partition with the same rows makes a new version and keeps this key; a changed row count,
        range or null count changes it; a value corrected inside its column's range is not seen (a
        model run keyed on this keeps its first decision then). Files without statistics, or with
        statistics Arrow cannot aggregate, make it the version itself."""
        return content_key_of(self.delta_table(table, version))

    def history(self, table: str, limit: int | None = None) -> list[dict]:
        """Commits newest first, each with its operation, timestamp and p13n run metadata."""
        return self.delta_table(table).history(limit)

    # ------------------------------------------------------------------ reads
    def read(
        self,
        table: str,
        *,
        where: str | Sequence[Filter] | None = None,
        version: int | None = None,
        as_of: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> DataFrame:
        """Read a table (optionally as of a version or timestamp) into a Spark DataFrame.

        `where` is a SQL predicate or (column, op, value) filters: files that cannot match are
        skipped using partition values and statistics, then the rows are filtered exactly.
        """
        dt = self.delta_table(table, version)
        if as_of is not None:
            dt.load_as_version(as_of)
        self._check_readable(table, dt)
        spark_schema = _spark_schema(dt)
        try:
            uris = dt.file_uris(file_pruning_predicate=where) if where else dt.file_uris()
        except (DeltaError, ValueError, TypeError):
            uris = dt.file_uris()  # a predicate delta-rs cannot prune with: read all, filter in Spark
        partition_by = list(dt.metadata().partition_columns)
        if not uris:
            df = self.spark.createDataFrame([], spark_schema)
        elif not self.arrow_io and (not partition_by or self._hive_layout(dt, partition_by)):
            reader = self.spark.read.schema(spark_schema)
            if partition_by:
                reader = reader.option("basePath", dt.table_uri.rstrip("/"))
            df = reader.parquet(*uris).select(*spark_schema.fieldNames())
        else:
            df = self._read_files_via_arrow(dt, uris, spark_schema, partition_by)
        if where:
            df = df.filter(where if isinstance(where, str) else _filters_to_sql(where))
        return df.select(*columns) if columns else df

    def read_pandas(self, table: str, *, where: str | Sequence[Filter] | None = None, max_rows: int):
        """The rows `where` keeps as a pandas frame read by delta-rs, without Spark, when the Delta
        log's statistics say the files they can lie in hold at most `max_rows` rows; None when they
        hold more, or when a file has no row count (read those with `read`). For a task's own small
        outputs: a Spark Connect client pays a count and a collect over the wire for them."""
        if isinstance(where, str):
            return None  # a SQL predicate: delta-rs reads (column, op, value) filters
        dt = self.delta_table(table)
        self._check_readable(table, dt)
        try:
            uris = dt.file_uris(file_pruning_predicate=where) if where else dt.file_uris()
        except (DeltaError, ValueError, TypeError):
            return None  # a predicate delta-rs cannot prune with
        rows = {a["path"]: a["num_records"] for a in _add_rows(dt)}
        counts = [rows.get(_relative(dt, u)) for u in uris]
        if any(n is None for n in counts) or sum(counts) > max_rows:
            return None
        return dt.to_pyarrow_table(filters=list(where) if where else None).to_pandas()

    def _check_readable(self, table: str, dt: DeltaTable) -> None:
        features = set(dt.protocol().reader_features or [])
        if (
            "columnMapping" in features
            and dt.metadata().configuration.get("delta.columnMapping.mode", "none") != "none"
        ):
            raise LakeError(table, "column mapping is enabled; the lake reader does not support it")
        if "deletionVectors" in features:
            adds = _adds(dt, flatten=True)
            if (
                "deletionVector.storageType" in adds.column_names
                and adds["deletionVector.storageType"].null_count < adds.num_rows
            ):
                raise LakeError(
                    table, "files carry deletion vectors; run OPTIMIZE/PURGE with the writer that made them"
                )

    @staticmethod
    def _hive_layout(dt: DeltaTable, partition_by: list[str]) -> bool:
        """True when every file sits in the Hive directory of its partition values (as this lake writes)."""
        return all(_in_hive_dir(a, partition_by) for a in _add_rows(dt))

    def _read_files_via_arrow(self, dt, uris, spark_schema, partition_by) -> DataFrame:
        """Distributed read through pyarrow: each executor task reads some of the files (from any
        filesystem pyarrow reaches: object storage without Hadoop's connectors) and adds the partition
        values from the log (files outside a Hive layout need that)."""
        adds = {a["path"]: a["partition_values"] for a in _add_rows(dt)}
        rows = [(u, json.dumps(adds.get(_relative(dt, u), {}))) for u in uris]
        files = self.spark.createDataFrame(rows, "uri string, partition_values string")
        files = files.repartition(min(len(rows), default_parallelism(self.spark) * 2))
        read = functools.partial(
            _read_arrow_files,
            arrow_schema=pa.schema(dt.schema().to_arrow()),
            partition_by=partition_by,
            filesystem=self._fs()[0],
        )
        return files.mapInArrow(read, spark_schema)

    # ------------------------------------------------------------------ writes
    def write(
        self,
        table: str,
        df: DataFrame,
        *,
        mode: Literal["append", "overwrite"] = "append",
        partition_by: Sequence[str] | None = None,
        replace_where: PartitionSpec | None = None,
        txn: tuple[str, int] | list[tuple[str, int]] | None = None,
        run: RunContext | None = None,
        schema_mode: Literal["strict", "add_columns"] = "strict",
        colocate: bool = True,
        rows_at_most: int | None = None,
    ) -> WriteResult:
        """Append to, overwrite, or overwrite some partitions of a table, in one atomic commit.

        Each partition's rows are written by one task (few files), unless `colocate=False`: every
        task then writes its share (for one large partition, which one task would write alone).

        `replace_where={"event_date": d}` replaces only those partitions (values may be lists) and
        refuses rows outside them. `txn=(app_id, version)` makes the write idempotent: a version
        at or below the table's recorded version for `app_id` is skipped. A list of them (one per
        Kafka partition, say) is recorded in the same commit; the write is skipped when all are done.
        `rows_at_most`: a bound the caller knows on `df`'s rows; at or under `lake.client_write_max_rows`
        the rows come back as Arrow and this process writes the files (see `_write_files`).
        """
        if replace_where and mode != "overwrite":
            raise ValueError(f"{table}: replace_where needs mode='overwrite'")
        if mode not in ("append", "overwrite"):
            raise ValueError(f"{table}: mode must be 'append' or 'overwrite', got {mode!r}")
        dt = self._open(table)
        if _already_committed(dt, txn):
            return WriteResult(table, f"write:{mode}", dt.version(), skipped=True)
        df, partition_by = self._conform(table, df, dt, partition_by, schema_mode)
        if replace_where:
            unknown = set(replace_where) - set(partition_by)
            if unknown:
                raise ValueError(
                    f"{table}: replace_where columns {sorted(unknown)} are not partition columns "
                    f"{partition_by}"
                )
        write_id, files = self._write_files(
            table, df, partition_by, colocate=colocate, rows_at_most=rows_at_most
        )
        try:
            if replace_where:
                allowed = _allowed_partitions(replace_where)
                outside = [
                    f for f in files if not _partition_matches(json.loads(f["partition_values"]), allowed)
                ]
                if outside:
                    raise ReplaceWhereViolation(
                        table,
                        f"replace_where {dict(replace_where)} but {sum(f['num_records'] for f in outside)} "
                        f"rows fall in partitions {sorted({f['partition_values'] for f in outside})[:3]}",
                    )
            adds = [_add_action(f) for f in files]
            partition_filters = _partition_filters(replace_where) if replace_where else None
            version = self._commit(
                table,
                dt,
                df,
                partition_by,
                adds,
                mode,
                write_id,
                run,
                txn,
                partition_filters=partition_filters,
            )
        except BaseException:
            self._delete_files(table, [f["path"] for f in files])
            raise
        return WriteResult(
            table,
            f"write:{mode}",
            version,
            rows_written=sum(f["num_records"] for f in files),
            files_added=len(files),
            metadata={"write_id": write_id},
        )

    def replace_partition(
        self,
        table: str,
        df: DataFrame,
        column: str,
        value: Any,
        *,
        run: RunContext | None = None,
        colocate: bool = True,
        rows_at_most: int | None = None,
    ) -> WriteResult:
        """Overwrite the partition `column = value` (a data interval, a batch) with `df`: the idempotent
        write.

        Rerunning it with the same rows leaves the table's content as it was; rows outside the
        partition are refused. The table is partitioned by `column` when this write creates it.
        """
        return self.write(
            table,
            df,
            mode="overwrite",
            partition_by=[column],
            replace_where={column: value},
            run=run,
            colocate=colocate,
            rows_at_most=rows_at_most,
        )

    def replace_partition_rows(
        self, table: str, rows, column: str, value: Any, *, run: RunContext | None = None
    ) -> WriteResult:
        """`replace_partition` for rows in hand (a pandas frame or an Arrow table): their number is known,
        so a partition of at most `lake.client_write_max_rows` is written by this process from Arrow."""
        frame = self.spark.createDataFrame(rows)
        return self.replace_partition(table, frame, column, value, run=run, rows_at_most=len(rows))

    def merge(
        self,
        table: str,
        df: DataFrame,
        keys: Sequence[str],
        *,
        when_matched: Literal["update", "ignore"] = "update",
        partition_by: Sequence[str] | None = None,
        txn: tuple[str, int] | None = None,
        run: RunContext | None = None,
        check_unique: bool = True,
        rows_at_most: int | None = None,
    ) -> WriteResult:
        """Upsert `df` into `table` on `keys`: matched rows are replaced (or kept, with "ignore"), new rows
        added.

        The source must be unique on `keys` (checked unless `check_unique=False`). Only files that may hold a
        source key are rewritten:
        those of the source's partitions, narrowed by the key's min/max statistics. `rows_at_most`: as
        for `write` (a merge into an existing table counts its source itself).
        """
        dt = self._open(table)
        if dt is None:
            if check_unique:
                _check_unique(table, df, keys)
            return self.write(
                table,
                df,
                mode="append",
                partition_by=partition_by,
                txn=txn,
                run=run,
                rows_at_most=rows_at_most,
            )
        if _already_committed(dt, txn):
            return WriteResult(table, "merge", dt.version(), skipped=True)
        df, partition_by = self._conform(table, df, dt, partition_by, "strict")
        missing = [k for k in keys if k not in df.columns]
        if missing:
            raise SchemaMismatchError(table, f"merge keys {missing} are not columns of the table")
        # Materialized once, lineage cut: the source is scanned for duplicates, key bounds and the merge
        # itself, and a Spark Connect server would otherwise re-analyze its whole plan for each.
        df = df.localCheckpoint()
        try:
            if check_unique:
                _check_unique(table, df, keys)
            candidates, source_rows = self._merge_candidates(dt, df, keys, partition_by)
            bound = source_rows + sum(c["num_records"] or 0 for c in candidates)
            if any(c["num_records"] is None for c in candidates):
                bound = None  # a file without statistics: its rows are unknown
            if candidates:
                target = self._read_paths(dt, candidates)
                if when_matched == "update":
                    merged = target.join(df.select(*keys), list(keys), "left_anti").unionByName(df)
                else:
                    merged = target.unionByName(df.join(target.select(*keys), list(keys), "left_anti"))
            else:
                merged = df
            return self._rewrite(
                table, dt, merged, candidates, partition_by, run, txn, "merge", rows_at_most=bound
            )
        finally:
            df.unpersist()

    def delete(self, table: str, predicate: str, *, run: RunContext | None = None) -> WriteResult:
        """Delete the rows matching a SQL predicate, rewriting only the files that hold them."""
        from pyspark.sql import functions as F

        dt = self.delta_table(table)
        partition_by = list(dt.metadata().partition_columns)
        try:
            uris = set(dt.file_uris(file_pruning_predicate=predicate))
        except (DeltaError, ValueError, TypeError):
            uris = set(dt.file_uris())
        rel = {_relative(dt, u) for u in uris}
        candidates = [a for a in _add_rows(dt) if a["path"] in rel]
        if not candidates:
            return WriteResult(table, "delete", dt.version())
        target = self._read_paths(dt, candidates)
        matched = target.filter(F.expr(predicate)).limit(1).count()
        if not matched:
            return WriteResult(table, "delete", dt.version())
        kept = target.filter(~F.coalesce(F.expr(predicate), F.lit(False)))
        return self._rewrite(table, dt, kept, candidates, partition_by, run, None, "delete")

    def _rewrite(
        self, table, dt, new_rows, candidates, partition_by, run, txn, operation, rows_at_most=None
    ) -> WriteResult:
        """Copy-on-write: write `new_rows` as files that replace `candidates`, in one commit."""
        write_id, files = self._write_files(table, new_rows, partition_by, rows_at_most=rows_at_most)
        try:
            actions = [_add_action(f) for f in files] + [_remove_action(c) for c in candidates]
            version = self._commit(
                table, dt, None, partition_by, actions, "append", write_id, run, txn, operation=operation
            )
        except BaseException:
            self._delete_files(table, [f["path"] for f in files])
            raise
        return WriteResult(
            table,
            operation,
            version,
            rows_written=sum(f["num_records"] for f in files),
            files_added=len(files),
            files_removed=len(candidates),
            rows_removed=sum(c["num_records"] or 0 for c in candidates),
            metadata={"write_id": write_id},
        )

    # ------------------------------------------------------------------ maintenance
    def optimize(self, table: str, *, target_size: int | None = None, run: RunContext | None = None) -> dict:
        """Compact small files (delta-rs, on the driver's cores); returns delta-rs's metrics."""
        run = run or RunContext.from_env()
        return self.delta_table(table).optimize.compact(
            target_size=target_size,
            commit_properties=CommitProperties(custom_metadata=run.commit_metadata()),
        )

    def vacuum(self, table: str, *, retention_hours: int | None = None, dry_run: bool = False) -> list[str]:
        """Delete files no version within the retention window needs, and stray files of failed writes."""
        hours = self.settings.vacuum_retention_hours if retention_hours is None else retention_hours
        dt = self.delta_table(table)
        removed = dt.vacuum(retention_hours=hours, dry_run=True, enforce_retention_duration=False, full=True)
        if removed and not dry_run:  # delta-rs commits VACUUM START/END even with nothing to remove
            removed = dt.vacuum(
                retention_hours=hours, dry_run=False, enforce_retention_duration=False, full=True
            )
        # On object storage delta-rs also lists folder markers (the table's own, as ''): not files.
        removed = [r for r in removed if r and not r.endswith("/")]
        # Staging folders of writes killed before their files were moved: older than the window.
        fs, table_dir = self._fs(table)
        cutoff = time.time() - hours * 3600
        for entry in fs.get_file_info(pafs.FileSelector(f"{table_dir}/{STAGING_DIR}", allow_not_found=True)):
            written = _last_written(fs, entry) if entry.type == pafs.FileType.Directory else None
            if written is not None and written <= cutoff:
                removed.append(f"{STAGING_DIR}/{entry.base_name}/")
                if not dry_run:
                    fs.delete_dir(entry.path)
        return removed

    # ------------------------------------------------------------------ internals
    def _open(self, table: str) -> DeltaTable | None:
        try:
            return DeltaTable(self.uri(table), storage_options=self.storage_options)
        except _DeltaNotFound:
            return None

    def _conform(self, table, df, dt, partition_by, schema_mode) -> tuple[DataFrame, list[str]]:
        """Check `df` against the table's schema and partitioning; return it in the table's column order."""
        from pyspark.sql import functions as F

        if dt is None:
            partition_by = list(partition_by or [])
            bad = [c for c in partition_by if c not in df.columns]
            if bad:
                raise SchemaMismatchError(
                    table, f"partition columns {bad} are not in the DataFrame {df.columns}"
                )
            _check_partition_types(table, df, partition_by)
            return df, partition_by
        existing = list(dt.metadata().partition_columns)
        if partition_by is not None and list(partition_by) != existing:
            raise SchemaMismatchError(
                table, f"table is partitioned by {existing}, the write asked for {list(partition_by)}"
            )
        table_schema = _spark_schema(dt)
        want = {f.name: f.dataType for f in table_schema.fields}
        have = {f.name: f.dataType for f in df.schema.fields}
        missing = [c for c in want if c not in have]
        extra = [c for c in have if c not in want]
        changed = [
            f"{c} ({want[c].simpleString()} in the table, {have[c].simpleString()} in the data)"
            for c in want
            if c in have and not _same_type(want[c], have[c])
        ]
        if changed or (missing and schema_mode == "strict") or (extra and schema_mode == "strict"):
            parts = []
            if missing:
                parts.append(f"missing columns {missing}")
            if extra:
                parts.append(f"unexpected columns {extra}")
            if changed:
                parts.append(f"type changes {changed}")
            raise SchemaMismatchError(table, "schema mismatch: " + "; ".join(parts))
        if extra:  # schema_mode == "add_columns": evolve the table first (an additive, harmless commit)
            from deltalake.schema import Field as DeltaField
            from deltalake.schema import Schema as DeltaSchema

            new = DeltaSchema.from_arrow(_arrow_schema(df.select(*extra).schema))
            dt.alter.add_columns([DeltaField(f.name, f.type, nullable=True) for f in new.fields])
            dt.update_incremental()
            table_schema = _spark_schema(dt)
        cols = [
            F.col(c) if c in have else F.lit(None).cast(want[c]).alias(c) for c in table_schema.fieldNames()
        ]
        return df.select(*cols), existing

    def _write_files(
        self,
        table: str,
        df: DataFrame,
        partition_by: list[str],
        colocate: bool = True,
        rows_at_most: int | None = None,
    ) -> tuple[str, list[dict]]:
        """Executors write Parquet into the table's staging folder; the driver moves and describes the
        files. A frame known to be small (`rows_at_most` at or under `lake.client_write_max_rows`) comes
        back as Arrow and pyarrow writes it here instead: one round trip, no shuffle, no write job."""
        write_id = uuid.uuid4().hex[:16]
        fs, table_dir = self._fs(table)
        staging = f"{table_dir}/{STAGING_DIR}/{write_id}"
        small = rows_at_most is not None and rows_at_most <= self.settings.client_write_max_rows
        only: set[str] | None = None  # the files to take from staging (None: all)
        try:
            if small:
                _write_arrow(
                    df.toArrow(), fs, staging, partition_by, write_id, self.settings.max_rows_per_file
                )
            elif self.arrow_io:
                # Each executor task writes its rows with pyarrow straight to the lake's filesystem.
                write = functools.partial(
                    _write_task_files,
                    filesystem=fs,
                    staging=staging,
                    partition_by=partition_by,
                    write_id=write_id,
                    max_rows=self.settings.max_rows_per_file,
                    arrow_schema=_arrow_schema(df.schema),
                )
                parts = df.repartition(*partition_by) if partition_by and colocate else df
                # Only the files of the task attempts that succeeded: a retried task's first attempt
                # may have left files behind (Spark's own writer has a commit protocol for that).
                only = {r["path"] for r in parts.mapInArrow(write, "path string").collect()}
            else:
                # Co-locate each partition's rows in few tasks, so a partition gets few files.
                writer = (df.repartition(*partition_by) if partition_by and colocate else df).write
                writer = writer.mode("error").option("compression", "snappy")
                writer = writer.option("maxRecordsPerFile", self.settings.max_rows_per_file)
                if partition_by:
                    writer = writer.partitionBy(*partition_by)
                writer.parquet(_spark_path(self.uri(table)) + f"/{STAGING_DIR}/{write_id}")
            files = collect_staged_files(fs, staging, table_dir, partition_by, only=only)
        finally:
            fs.delete_dir_contents(staging, missing_dir_ok=True)
            with contextlib.suppress(OSError):
                fs.delete_dir(staging)
        checkpoint("lake.before_commit")
        return write_id, files

    def _fs(self, table: str | None = None) -> tuple[pafs.FileSystem, str]:
        """The filesystem and path of a table (or of the lake root) for file operations."""
        return filesystem_for(self.uri(table) if table else self.root, self.storage_options)

    def _commit(
        self,
        table: str,
        dt: DeltaTable | None,
        df: DataFrame | None,
        partition_by: list[str],
        actions: list,
        mode: str,
        write_id: str,
        run: RunContext | None,
        txn: tuple[str, int] | None,
        *,
        partition_filters: list[Filter] | None = None,
        operation: str | None = None,
    ) -> int:
        """Record the actions in one Delta commit (creating the table on its first write); return its
        version."""
        run = run or RunContext.from_env()
        metadata = {**run.commit_metadata(), "p13n.write_id": write_id}
        if operation:
            metadata["p13n.operation"] = operation
        props = CommitProperties(
            custom_metadata=metadata,
            max_commit_retries=self.settings.max_commit_retries,
            app_transactions=[Transaction(a, v) for a, v in _txns(txn)] or None,
        )
        try:
            if dt is None:
                try:
                    create_table_with_add_actions(
                        self.uri(table),
                        _delta_schema(_arrow_schema(df.schema)),
                        actions,
                        mode="error",
                        partition_by=partition_by or None,
                        storage_options=self.storage_options,
                        commit_properties=props,
                    )
                    return self._version_of(table, write_id)
                except DeltaError as exc:
                    if "already exists" not in str(exc).lower():
                        raise
                    dt = self._open(table)  # another writer created it first: commit against it
            dt.create_write_transaction(
                actions,
                mode,
                dt.schema(),
                partition_by=partition_by or None,
                partition_filters=partition_filters,
                commit_properties=props,
            )
        except CommitFailedError as exc:
            raise ConcurrentWriteError(
                table,
                f"a concurrent commit conflicts with this {operation or mode} ({exc}); nothing was written, "
                "retry it",
            ) from exc
        return self._version_of(table, write_id)

    def _version_of(self, table: str, write_id: str) -> int:
        dt = self.delta_table(table)
        for commit in dt.history(20):
            if commit.get("p13n.write_id") == write_id:
                return int(commit["version"])
        return dt.version()

    def _merge_candidates(
        self, dt: DeltaTable, df: DataFrame, keys: Sequence[str], partition_by: list[str]
    ) -> tuple[list[dict], int]:
        """The files that may hold a row with one of the source's keys, and the source's rows (counted
        in the same query)."""
        from pyspark.sql import functions as F

        adds = _add_rows(dt)
        if partition_by and set(partition_by) <= set(keys):
            counts = df.groupBy(*partition_by).count().collect()
            parts = {json.dumps(_stringify({c: r[c] for c in partition_by}), sort_keys=True) for r in counts}
            adds = [a for a in adds if json.dumps(a["partition_values"], sort_keys=True) in parts]
            rows = sum(r["count"] for r in counts)
            if len(keys) != 1:
                return adds, rows
        if len(keys) == 1:
            bounds = df.agg(
                F.min(keys[0]).alias("lo"), F.max(keys[0]).alias("hi"), F.count(F.lit(1)).alias("n")
            ).first()
            lo, hi = _stat_value(bounds["lo"]), _stat_value(bounds["hi"])
            if lo is not None and hi is not None:
                adds = [a for a in adds if _may_overlap(a["stats"], keys[0], lo, hi)]
            return adds, bounds["n"]
        return adds, df.count()

    def _read_paths(self, dt: DeltaTable, files: list[dict]) -> DataFrame:
        root = dt.table_uri.rstrip("/")
        spark_schema = _spark_schema(dt)
        partition_by = list(dt.metadata().partition_columns)
        uris = [f"{root}/{f['path']}" for f in files]
        if self.arrow_io or (partition_by and not all(_in_hive_dir(f, partition_by) for f in files)):
            return self._read_files_via_arrow(dt, uris, spark_schema, partition_by)
        reader = self.spark.read.schema(spark_schema)
        if partition_by:
            reader = reader.option("basePath", root)
        return reader.parquet(*uris).select(*spark_schema.fieldNames())

    def _delete_files(self, table: str, paths: Iterable[str]) -> None:
        """Best effort: remove the data files of a write that did not commit (vacuum catches the rest)."""
        fs, table_dir = self._fs(table)
        for p in paths:
            with contextlib.suppress(OSError, pa.ArrowException):
                fs.delete_file(f"{table_dir}/{p}")


# ---------------------------------------------------------------------- helpers (pure)
def _last_written(fs: pafs.FileSystem, folder: pafs.FileInfo) -> float | None:
    """When a folder was last written to: its own time, or on object storage (where a folder is only
    a prefix, without one) its newest file's."""
    if folder.mtime is not None:
        return folder.mtime.timestamp()
    times = [
        i.mtime.timestamp()
        for i in fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
        if i.mtime is not None
    ]
    return max(times) if times else None


def _write_task_files(
    batches, *, filesystem, staging: str, partition_by: list[str], write_id: str, max_rows: int, arrow_schema
):
    """Executor side of an Arrow-IO write: one task's rows as Parquet under `staging`, named by the
    write and the attempt so that tasks never collide; yields the paths of the files it wrote."""
    batches = list(batches)
    if not batches:
        return
    rows = pa.Table.from_batches(batches).cast(arrow_schema)
    paths: list[str] = []
    name = f"{write_id}-{uuid.uuid4().hex[:8]}"
    _write_arrow(rows, filesystem, staging, partition_by, name, max_rows, shared=True, written=paths)
    yield pa.RecordBatch.from_pydict({"path": paths}, schema=pa.schema([("path", pa.string())]))


def _write_arrow(
    rows: pa.Table,
    fs: pafs.FileSystem,
    staging: str,
    partition_by: list[str],
    write_id: str,
    max_rows: int,
    shared: bool = False,
    written: list[str] | None = None,
) -> None:
    """Write an Arrow table as Parquet under `staging` in the layout Spark's writer gives
    (`col=value/` directories, Hive's null marker, partition columns only in the path). `shared`:
    other tasks write into the same folder (under names of their own). `written` receives the paths."""
    import pyarrow.dataset as ds

    # Every column optional in the files, as Spark's writer has them (the table's schema says what
    # is required).
    rows = rows.cast(pa.schema([f.with_nullable(True) for f in rows.schema], metadata=rows.schema.metadata))
    partitioning = (
        ds.HivePartitioning(rows.select(partition_by).schema, null_fallback=HIVE_NULL)
        if partition_by
        else None
    )
    ds.write_dataset(
        rows,
        staging,
        format="parquet",
        filesystem=fs,
        partitioning=partitioning,
        basename_template=f"part-{write_id}-{{i}}.snappy.parquet",
        max_rows_per_file=max_rows,
        max_rows_per_group=min(max_rows, 1 << 20),
        existing_data_behavior="overwrite_or_ignore" if shared else "error",
        file_visitor=(lambda f: written.append(f.path)) if written is not None else None,
        file_options=ds.ParquetFileFormat().make_write_options(compression="snappy"),
    )


def _arrow_schema(spark_schema) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(spark_schema, timezone="UTC")
    # Delta has no large types; Spark may hand Arrow large_string/large_binary.
    fields = [pa.field(f.name, _small_types(f.type), f.nullable) for f in schema]
    return pa.schema(fields)


def _small_types(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(_small_types(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _small_types(f.type), f.nullable) for f in t])
    if pa.types.is_map(t):
        return pa.map_(_small_types(t.key_type), _small_types(t.item_type))
    return t


def _delta_schema(arrow_schema: pa.Schema):
    from deltalake.schema import Schema as DeltaSchema

    return DeltaSchema.from_arrow(arrow_schema)


def _spark_schema(dt: DeltaTable):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pa.schema(dt.schema().to_arrow()))


def _same_type(a, b) -> bool:
    from pyspark.sql.types import StructType

    if isinstance(a, StructType) and isinstance(b, StructType):
        return [(f.name, f.dataType.simpleString()) for f in a.fields] == [
            (f.name, f.dataType.simpleString()) for f in b.fields
        ]
    return a.simpleString() == b.simpleString()


def _txns(txn) -> list[tuple[str, int]]:
    if not txn:
        return []
    return [txn] if isinstance(txn, tuple) else list(txn)


def _already_committed(dt: DeltaTable | None, txn) -> bool:
    """True when every (app_id, version) is at or below what the table has recorded."""
    pairs = _txns(txn)
    return bool(dt is not None and pairs and all((dt.transaction_version(a) or -1) >= v for a, v in pairs))


def _check_unique(table: str, df, keys: Sequence[str]) -> None:
    from pyspark.sql import functions as F

    dupes = df.groupBy(*keys).count().filter(F.col("count") > 1).limit(3).collect()
    if dupes:
        sample = [tuple(r[k] for k in keys) for r in dupes]
        raise LakeError(
            table, f"merge source has duplicate keys {list(keys)}, e.g. {sample}; deduplicate it first"
        )


def _check_partition_types(table: str, df, partition_by: list[str]) -> None:
    from pyspark.sql.types import DateType, IntegerType, LongType, ShortType, StringType

    allowed = (DateType, StringType, IntegerType, LongType, ShortType)
    bad = [
        f"{f.name} ({f.dataType.simpleString()})"
        for f in df.schema.fields
        if f.name in partition_by and not isinstance(f.dataType, allowed)
    ]
    if bad:
        raise SchemaMismatchError(table, f"partition columns must be date, string or integer; got {bad}")


def _stringify(values: Mapping[str, Any]) -> dict[str, str | None]:
    """Partition values in Delta's string encoding."""
    return {k: None if v is None else _partition_string(v) for k, v in values.items()}


def _partition_string(v: Any) -> str:
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, date):
        return v.isoformat()
    return str(v)


def _allowed_partitions(spec: PartitionSpec) -> dict[str, set[str | None]]:
    out = {}
    for col, value in spec.items():
        values = value if isinstance(value, list | tuple | set | frozenset) else [value]
        out[col] = {None if v is None else _partition_string(v) for v in values}
    return out


def _partition_matches(values: Mapping[str, str | None], allowed: Mapping[str, set]) -> bool:
    return all(values.get(col) in vals for col, vals in allowed.items())


def _partition_filters(spec: PartitionSpec) -> list[Filter]:
    filters: list[Filter] = []
    for col, vals in _allowed_partitions(spec).items():
        vals = sorted(v for v in vals if v is not None)
        filters.append((col, "in", vals) if len(vals) > 1 else (col, "=", vals[0]))
    return filters


def _filters_to_sql(filters: Sequence[Filter]) -> str:
    def lit(v: Any) -> str:
        if isinstance(v, str | date | datetime):
            return "'" + _partition_string(v).replace("'", "''") + "'"
        return str(v)

    parts = []
    for col, op, value in filters:
        if op.lower() in ("in", "not in"):
            parts.append(f"`{col}` {op.upper()} ({', '.join(lit(v) for v in value)})")
        else:
            parts.append(f"`{col}` {op} {lit(value)}")
    return " AND ".join(parts)


def _add_action(f: Mapping) -> AddAction:
    return AddAction(
        path=f["path"],
        size=int(f["size"]),
        partition_values=json.loads(f["partition_values"]),
        modification_time=int(time.time() * 1000),
        data_change=True,
        stats=f["stats"],
    )


def _remove_action(a: Mapping) -> RemoveAction:
    return RemoveAction(
        path=a["path"],
        data_change=True,
        deletion_timestamp=int(time.time() * 1000),
        size=int(a["size"]),
        partition_values=a["partition_values"],
    )


def _in_hive_dir(add: Mapping, partition_by: list[str]) -> bool:
    """True when a file's directories state exactly its partition values (so Spark can read them)."""
    try:
        return partition_values_from_path(add["path"], partition_by) == add["partition_values"]
    except ValueError:
        return False


def _spark_path(uri: str) -> str:
    return uri if "://" in uri else f"file://{uri}"


def _relative(dt: DeltaTable, uri: str) -> str:
    """A file's path relative to the table root, whether given as a URI or a plain local path."""
    for root in (dt.table_uri, dt.table_uri.removeprefix("file://")):
        root = root.rstrip("/") + "/"
        if uri.startswith(root):
            return uri[len(root) :]
    return uri


def content_key_of(dt: DeltaTable) -> str:
    """`Lake.content_key` of an open table (its version as opened)."""
    import hashlib
    import json

    adds = _adds(dt, flatten=True)
    if "num_records" not in adds.column_names or adds["num_records"].null_count:
        return f"v{dt.version()}"
    parts = sorted(c for c in adds.column_names if c.startswith("partition."))
    aggs = [("num_records", "sum")]
    for c in sorted(adds.column_names):
        kind = c.split(".", 1)[0]
        if kind in ("min", "max", "null_count"):
            aggs.append((c, "sum" if kind == "null_count" else kind))
    try:
        grouped = adds.group_by(parts).aggregate(aggs)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return f"v{dt.version()}"
    if parts:
        grouped = grouped.sort_by([(p, "ascending") for p in parts])
    text = json.dumps([sorted(r.items()) for r in grouped.to_pylist()], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _adds(dt: DeltaTable, flatten: bool = False) -> pa.Table:
    """The table's add actions as a pyarrow Table (delta-rs returns arro3 objects)."""
    return pa.table(dt.get_add_actions(flatten=flatten))


def _add_rows(dt: DeltaTable) -> list[dict]:
    """The table's live files: path, size, partition values (Delta strings), record count and stats.

    `path` is the file's path on storage relative to the table (the log holds it URI-encoded);
    that is also the form AddAction and RemoveAction take.
    """
    rows = []
    for a in _adds(dt).to_pylist():
        rows.append(
            {
                "path": unquote(a["path"]),
                "size": a["size_bytes"],
                "partition_values": _stringify(a.get("partition") or {}),
                "num_records": a.get("num_records"),
                "stats": {"min": a.get("min") or {}, "max": a.get("max") or {}},
            }
        )
    return rows


def _stat_value(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    return v


def _may_overlap(stats: Mapping, key: str, lo: Any, hi: Any) -> bool:
    fmin, fmax = stats["min"].get(key), stats["max"].get(key)
    if fmin is None or fmax is None:
        return True
    fmin, fmax = _stat_value(fmin), _stat_value(fmax)
    try:
        return not (fmax < lo or fmin > hi)
    except TypeError:
        return True


def _read_arrow_files(batches, *, arrow_schema: pa.Schema, partition_by: list[str], filesystem):
    """Executor side of the Arrow reader: each row names a file; yield its rows in the table's schema,
    with the partition values and any column added after the file was written (nulls)."""
    import pyarrow.parquet as pq

    for batch in batches:
        for uri, pv in zip(
            batch.column("uri").to_pylist(), batch.column("partition_values").to_pylist(), strict=True
        ):
            values = json.loads(pv)
            table = pq.read_table(uri.split("://", 1)[-1], filesystem=filesystem)
            for col in partition_by:
                typ = arrow_schema.field(col).type
                table = table.append_column(
                    col, pa.array([values.get(col)] * table.num_rows, pa.string()).cast(typ)
                )
            for f in arrow_schema:
                if f.name not in table.column_names:
                    table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
            yield from table.select(arrow_schema.names).cast(arrow_schema).to_batches()
