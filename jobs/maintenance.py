"""Lake maintenance: compact small files, vacuum old ones, and record every table's health."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict

from p13n.lake import Lake
from p13n.lake.tables import OPS_TABLE_HEALTH

HEALTH_SCHEMA = (
    "run_date date, table_name string, version long, files long, bytes long, rows long, "
    "files_compacted long, files_vacuumed long, checked_at timestamp"
)
SMALL_FILE_BYTES = 32 * 1024 * 1024


def maintain_table(lake: Lake, table: str, *, retention_hours: int | None = None) -> dict:
    """Compact a table when it has several small files, then vacuum it; returns what was done."""
    before = lake.info(table)
    compacted = 0
    if before.files > 1 and before.bytes / max(before.files, 1) < SMALL_FILE_BYTES:
        compacted = int(lake.optimize(table).get("numFilesRemoved", 0))
    vacuumed = len(lake.vacuum(table, retention_hours=retention_hours))
    after = lake.info(table)
    return {**asdict(after), "files_compacted": compacted, "files_vacuumed": vacuumed}


def maintain_tables(lake: Lake, tables: list[str], *, progress=print) -> list[dict]:
    """`maintain_table` for each table in turn; one failing does not stop the others, and the call
    fails at the end naming every table that failed (what succeeded is returned with the error)."""
    done, failed = [], []
    for table in tables:
        try:
            result = maintain_table(lake, table)
        except Exception as exc:  # noqa: BLE001 - reported below, by table
            failed.append(f"{table}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        done.append(result)
        progress(
            f"{table}: v{result['version']}, {result['files']} files, compacted {result['files_compacted']}, "
            f"vacuumed {result['files_vacuumed']}"
        )
    if failed:
        raise RuntimeError(
            f"maintenance failed for {len(failed)} of {len(tables)} tables: " + " | ".join(failed)
        )
    return done


def build_table_health(spark, results: list[dict], run_date: dt.date, checked_at: dt.datetime):
    """One health row per maintained table (a pure transform of the maintenance results)."""
    rows = [
        (
            run_date,
            r["table"],
            r["version"],
            r["files"],
            r["bytes"],
            r["rows"],
            r["files_compacted"],
            r["files_vacuumed"],
            checked_at,
        )
        for r in sorted(results, key=lambda r: r["table"])
    ]
    return spark.createDataFrame(rows, HEALTH_SCHEMA)


def record_table_health(lake: Lake, results: list[dict], run_date: dt.date) -> int:
    """Write this run's health rows, replacing the run date's partition (reruns leave one copy)."""
    checked_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    df = build_table_health(lake.spark, results, run_date, checked_at)
    lake.replace_partition(OPS_TABLE_HEALTH, df, "run_date", run_date)
    return df.count()
