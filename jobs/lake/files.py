"""The data files of a lake write: from Spark's staging folder into the table, described for Delta.

Spark's executors write Parquet into `<table>/_staging/<write id>/` with its native writer (the
fastest path: no rows leave the JVM). The driver then moves each file into its Hive directory
(`col=value/part-….parquet`, a rename on local and HDFS storage) and reads its footer for Delta's
statistics; nothing of the data itself passes through the driver. Every Delta reader, and Spark's
own Parquet reader, finds the partition values in the path as well as in the log.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from urllib.parse import unquote

import pyarrow.fs as pafs
import pyarrow.parquet as pq

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
OBJECT_STORE_SCHEMES = ("s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://", "abfss://")
_MAX_STAT_STRING = 64  # longer strings get no min/max: a truncated max would skip files wrongly


def is_object_store(uri: str) -> bool:
    """Whether a lake location is on object storage (where Spark without Hadoop's connectors cannot
    read or write, and a rename is a copy)."""
    return uri.lower().startswith(OBJECT_STORE_SCHEMES)


def filesystem_for(uri: str, storage_options: Mapping[str, str] | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path of a lake location. For `s3://` it takes the endpoint, keys,
    region and HTTP setting from delta-rs's storage options (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
    ...; any case), so pyarrow, delta-rs and DuckDB reach the same bucket with the same credentials."""
    if "://" not in uri:
        uri = f"file://{uri}"
    scheme, _, rest = uri.partition("://")
    if scheme.lower() not in ("s3", "s3a") or not storage_options:
        fs, path = pafs.FileSystem.from_uri(uri.replace("s3a://", "s3://", 1))
        return fs, path.rstrip("/")
    o = {k.lower().removeprefix("aws_"): v for k, v in storage_options.items()}
    endpoint = o.get("endpoint_url") or o.get("endpoint") or ""
    kwargs: dict = {
        "access_key": o.get("access_key_id"),
        "secret_key": o.get("secret_access_key"),
        "session_token": o.get("session_token") or o.get("token"),
        "region": o.get("region") or o.get("default_region") or "us-east-1",
    }
    if endpoint:
        kwargs["scheme"], _, kwargs["endpoint_override"] = endpoint.rpartition("://")
        kwargs["scheme"] = kwargs["scheme"] or "https"
    return pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v}), rest.rstrip("/")


def collect_staged_files(
    filesystem: pafs.FileSystem,
    staging: str,
    table_dir: str,
    partition_by: list[str],
    threads: int = 8,
    only: set[str] | None = None,
) -> list[dict]:
    """Move the Parquet files Spark wrote under `staging` into the table's Hive layout and describe them.

    Spark's file names carry its write job's UUID, so they never collide with other writes'. Empty
    files (Spark writes one for an empty unpartitioned DataFrame) are dropped rather than committed.
    Returns one dict per file: path (relative to the table), size, partition_values (JSON),
    stats (Delta's JSON statistics) and num_records. `only`: the staged files to take (the successful
    task attempts' files, when the writer is not Spark's own); the rest stay for the caller to delete.
    """
    infos = filesystem.get_file_info(pafs.FileSelector(staging, recursive=True, allow_not_found=True))
    staged = [i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")]
    if only is not None:
        staged = [i for i in staged if i.path in only]

    def one(info: pafs.FileInfo) -> dict | None:
        rel = info.path[len(staging) :].lstrip("/")
        meta = pq.read_metadata(info.path, filesystem=filesystem)
        if meta.num_rows == 0:
            filesystem.delete_file(info.path)
            return None
        values = partition_values_from_path(rel, partition_by)
        target = f"{table_dir}/{rel}"
        parent = target.rsplit("/", 1)[0]
        if parent != table_dir:
            filesystem.create_dir(parent, recursive=True)
        filesystem.move(info.path, target)
        return {
            "path": rel,
            "size": info.size,
            "partition_values": json.dumps(values),
            "stats": json.dumps(delta_stats(meta, skip=set(partition_by))),
            "num_records": meta.num_rows,
        }

    with ThreadPoolExecutor(max_workers=threads) as pool:
        described = list(pool.map(one, staged))
    return [d for d in described if d is not None]


def partition_values_from_path(rel_path: str, partition_by: list[str]) -> dict[str, str | None]:
    """`event_date=2024-01-02/part-x.parquet` -> {"event_date": "2024-01-02"} (Hive null marker -> None)."""
    values: dict[str, str | None] = {}
    for segment in rel_path.split("/")[:-1]:
        key, eq, raw = segment.partition("=")
        if eq and key in partition_by:
            value = unquote(raw)
            values[key] = None if value == HIVE_NULL else value
    missing = [c for c in partition_by if c not in values]
    if missing:
        raise ValueError(f"file {rel_path} lacks partition directories for {missing}")
    return values


def delta_stats(meta: pq.FileMetaData, skip: set[str] = frozenset()) -> dict:
    """Delta's per-file statistics (numRecords, minValues, maxValues, nullCount) from a Parquet footer.

    Only top-level primitive columns get min/max; a column whose bounds cannot be stated exactly
    (long strings, NaN, binary) gets none, which only makes readers skip fewer files.
    """
    mins: dict = {}
    maxs: dict = {}
    nulls: dict = {}
    schema = meta.schema
    for i in range(meta.num_columns):
        col = schema.column(i)
        name = col.path
        if "." in name or name in skip:
            continue
        null_count = 0
        lo = hi = None
        exact = True
        for rg in range(meta.num_row_groups):
            st = meta.row_group(rg).column(i).statistics
            if st is None:
                exact = False
                break
            null_count += st.null_count or 0
            if st.has_min_max:
                lo = st.min if lo is None else min(lo, st.min)
                hi = st.max if hi is None else max(hi, st.max)
        if not exact:
            continue
        nulls[name] = null_count
        lo_j, hi_j = _json_bound(lo, round_up=False), _json_bound(hi, round_up=True)
        if lo_j is not None and hi_j is not None:
            mins[name], maxs[name] = lo_j, hi_j
    return {"numRecords": meta.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}


def _json_bound(value: object, round_up: bool) -> object | None:
    if value is None or isinstance(value, bytes):
        return None
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        # + 0.0: pyarrow states a zero minimum as -0.0, Spark as 0.0 (the same bound).
        return None if math.isnan(value) or math.isinf(value) else value + 0.0
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, str):
        return value if len(value) <= _MAX_STAT_STRING else None
    if isinstance(value, dt.datetime):
        # Delta states timestamps to the millisecond: widen the bounds so no row falls outside them.
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        ms = value.replace(microsecond=value.microsecond // 1000 * 1000)
        if round_up and ms != value:
            ms += dt.timedelta(milliseconds=1)
        return ms.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms.microsecond // 1000:03d}Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    return None
