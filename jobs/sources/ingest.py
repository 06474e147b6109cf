"""Ingest one source's daily batch: landing → bronze → silver, rejects to quarantine, nothing lost.

Bronze holds every record received, as text, with where it came from; a batch replaces its own
`_batch_date` partition, so a rerun or a backfill of a date is idempotent. Silver is typed and
standardized; rejected rows go to `quarantine.<source>` with their reasons, and the batch must
reconcile exactly: bronze rows = promoted rows + quarantined rows. Raw PII goes only to
`restricted.<source>`; silver carries keyed HMAC pseudonyms instead.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from p13n.config import Settings
from p13n.lake import Lake
from p13n.lake.tables import OPS_SUPPRESSIONS
from p13n.runctx import RunContext
from p13n.sources import standardize as std
from p13n.sources.catalog import Catalog, Source
from p13n.sources.readers import (
    META_COLUMNS,
    bronze_arrow_schema,
    bronze_ddl,
    read_records,
    records_at_most,
)
from p13n.spark import default_parallelism, is_connect

_BATCH_ROWS = 8192


class IngestError(RuntimeError):
    """A batch cannot be promoted; the message names the source, the batch and why."""


@dataclass
class IngestResult:
    source: str
    batch_date: str
    files: int = 0
    bronze_rows: int = 0
    silver_rows: int = 0
    quarantined: int = 0
    top_reasons: list[tuple[str, int]] = field(default_factory=list)
    drifted_rows: int = 0
    expectations_passed: int = 0
    expectations_failed: int = 0
    warnings: list[str] = field(default_factory=list)
    status: str = "ok"

    def as_dict(self) -> dict:
        return asdict(self)


def batch_id(source: Source, batch_date: dt.date) -> str:
    return f"{source.name}:{batch_date.isoformat()}"


def landing_files(settings: Settings, source: Source, batch_date: dt.date) -> list[Path]:
    folder = settings.landing_dir / source.location / batch_date.isoformat()
    return sorted(p for p in folder.glob("*") if p.is_file() and not p.name.startswith((".", "_")))


# ---------------------------------------------------------------------- landing → bronze
def _parse_files(batches, *, source: Source, landing_dir: str):
    """Executor side: each input row names a file; yield its records as Arrow batches."""
    schema = bronze_arrow_schema(source)
    names = schema.names
    buffer: list[dict] = []
    for batch in batches:
        for path in batch.column("path").to_pylist():
            shown = str(Path(path).relative_to(landing_dir)) if path.startswith(landing_dir) else path
            for record in read_records(path, source, display_name=shown):
                buffer.append(record)
                if len(buffer) >= _BATCH_ROWS:
                    yield pa.RecordBatch.from_pylist(buffer, schema=schema).select(names)
                    buffer = []
    if buffer:
        yield pa.RecordBatch.from_pylist(buffer, schema=schema).select(names)


def read_landing_records(
    spark, source: Source, files: list[str], landing_dir: str, here_max_bytes: int = 0
) -> tuple[DataFrame, int | None]:
    """The records of a batch's files, and their number when it is known.

    A batch of at most `here_max_bytes` (`sources.parse_here_max_bytes`) is parsed in this process and
    sent to Spark as Arrow; a larger one on the executors, one task reading whole files. Both run
    the same parser. Parsed here, a small batch needs no Python worker on the Spark side: a Spark
    Connect server starts a worker pool per client session, and importing the parser there cost
    more than parsing a small batch (80 s of CPU over the two nights of `make run`). A classic
    session reuses its workers: there the executors parse in parallel, and `here_max_bytes` is 0."""
    landing_dir = landing_dir.rstrip("/") + "/"
    parse = functools.partial(_parse_files, source=source, landing_dir=landing_dir)
    if here_max_bytes and sum(os.path.getsize(f) for f in files) <= here_max_bytes:
        schema = bronze_arrow_schema(source)
        table = pa.Table.from_batches(list(parse([pa.record_batch({"path": files})])), schema=schema)
        return spark.createDataFrame(table, schema=bronze_ddl(source)), table.num_rows
    paths = spark.createDataFrame([(f,) for f in files], "path string")
    paths = paths.repartition(max(1, min(len(files), default_parallelism(spark) * 2)))
    return paths.mapInArrow(parse, bronze_ddl(source)), None


def _with_batch(records: DataFrame, source: Source, batch_date: dt.date) -> DataFrame:
    """Bronze rows: the records with their source, batch and ingestion time."""
    return records.select(
        F.lit(source.name).alias("_source"),
        F.lit(batch_id(source, batch_date)).alias("_batch_id"),
        F.lit(batch_date).alias("_batch_date"),
        F.current_timestamp().alias("_ingested_at"),
        *[F.col(f"`{c.name}`") for c in source.columns],
        *META_COLUMNS,
    )


def land(
    lake: Lake,
    source: Source,
    bronze: DataFrame,
    batch_date: dt.date,
    run: RunContext | None,
    rows_at_most: int | None = None,
) -> int:
    return lake.replace_partition(
        source.bronze_table, bronze, "_batch_date", batch_date, run=run, rows_at_most=rows_at_most
    ).rows_written


def landing_rows_at_most(source: Source, paths: list[str], max_bytes: int = 256 << 20) -> int | None:
    """A bound on the records of a batch's files (None past `max_bytes`: not worth reading them
    twice); it lets a small batch's bronze write skip Spark's distributed writer."""
    if sum(os.path.getsize(p) for p in paths) > max_bytes:
        return None
    return sum(records_at_most(p, source.format) for p in paths)


# ---------------------------------------------------------------------- bronze → silver
def stale_rows(rows: DataFrame, current: DataFrame | None, source: Source) -> tuple[DataFrame, DataFrame]:
    """Entities: drop rows older (by cursor) than the version silver already holds; quarantine them."""
    if current is None or not source.cursor:
        return rows, rows.limit(0).transform(lambda d: std.quarantine_rows(d, source, F.lit(""), "stale"))
    keys = list(source.primary_key)
    cur = current.select(*keys, F.col(source.cursor).alias("_current_cursor"))
    joined = rows.join(cur, keys, "left")
    older = F.col(source.cursor) < F.col("_current_cursor")
    fresh = joined.filter(~F.coalesce(older, F.lit(False))).drop("_current_cursor")
    stale = joined.filter(older)
    reason = F.concat(
        F.lit(f"stale update: {source.cursor} "),
        F.col(source.cursor).cast("string"),
        F.lit(" is older than the current row's "),
        F.col("_current_cursor").cast("string"),
    )
    return fresh, std.quarantine_rows(stale, source, reason, "stale")


def promote(
    lake: Lake,
    source: Source,
    catalog: Catalog,
    batch_date: dt.date,
    pii_key: bytes,
    *,
    now: dt.datetime,
    max_quarantine_share: float,
    share_min_rows: int = 0,
    run: RunContext | None = None,
    validate=None,
    privacy=None,
) -> IngestResult:
    """Bronze partition of `batch_date` → silver (+ restricted), quarantine; returns the batch's figures.

    Records of erased customers (`ops.suppressions`) are dropped before anything else, so they reach
    neither silver nor quarantine; they leave bronze too, with its history (`privacy`: the
    PrivacySettings saying how)."""
    result = IngestResult(source.name, batch_date.isoformat())
    bronze = lake.read(source.bronze_table, where=[("_batch_date", "=", batch_date)])
    # Materialized with their lineage cut (localCheckpoint, released when the frames go): each count,
    # write and merge below then sends a small plan, where a cached frame's whole standardization plan
    # was re-sent and re-analyzed by the Spark Connect server for every action (a quarter of a small
    # batch's time).
    landed = std.standardize(bronze, source, catalog.fx_to_usd, now).localCheckpoint()
    typed, suppressed = _suppress(lake, landed, source, pii_key)
    good, invalid = std.split_rejects(typed, source)
    kept, dupes = std.deduplicate(good, source)
    current = None
    if source.kind == "entity" and lake.exists(source.silver_table):
        current = lake.read(source.silver_table, columns=[*source.primary_key, source.cursor])
    fresh, stale = stale_rows(kept, current, source)
    fresh = fresh.localCheckpoint()
    quarantine = invalid.unionByName(dupes).unionByName(stale).localCheckpoint()

    clock = source.event_time or source.cursor

    # Every figure of the batch in one query (one round trip to a Spark Connect server, not five).
    def counted(frame, name):
        return frame.agg(F.count(F.lit(1)).alias(name))

    figures = landed.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.col("_drift").cast("int")).alias("drift"),
        (F.max(F.col(clock).cast("timestamp")) if clock else F.lit(None)).alias("newest"),
    )
    for part in (counted(fresh, "silver"), counted(quarantine, "quarantined")):
        figures = figures.crossJoin(part)
    if suppressed is not None:
        figures = figures.crossJoin(counted(suppressed, "dropped"))
    figures = figures.first().asDict()
    result.bronze_rows, result.drifted_rows = figures["rows"], figures["drift"] or 0
    stale = _freshness_warning(source, clock, figures["newest"], batch_date)
    if stale:
        result.warnings.append(stale)
    result.silver_rows, result.quarantined = figures["silver"], figures["quarantined"]
    reasons = Counter()
    if result.quarantined:
        for row in quarantine.groupBy("reason").count().orderBy(F.desc("count")).limit(200).collect():
            for part in row["reason"].split("; "):
                reasons[_reason_kind(part)] += row["count"]
    result.top_reasons = reasons.most_common(5)
    dropped = figures.get("dropped", 0)
    if result.bronze_rows != result.silver_rows + result.quarantined + dropped:
        raise IngestError(
            f"{source.name} batch {batch_date}: reconciliation failed: {result.bronze_rows} bronze rows "
            f"but {result.silver_rows} promoted + {result.quarantined} quarantined + {dropped} suppressed"
        )
    if dropped:
        result.warnings.append(f"{dropped} rows of erased customers suppressed (ops.suppressions)")
    if result.drifted_rows:
        result.warnings.append(
            f"{result.drifted_rows} rows carry fields the catalog does not declare (schema drift)"
        )

    lake.replace_partition(
        source.quarantine_table,
        quarantine,
        "batch_date",
        batch_date,
        run=run,
        rows_at_most=result.quarantined,
    )

    share = result.quarantined / result.bronze_rows if result.bronze_rows else 0.0
    failures: list[str] = []
    if share > max_quarantine_share and result.bronze_rows >= share_min_rows:
        failures.append(f"quarantined share {share:.1%} exceeds the limit {max_quarantine_share:.0%}")
    silver_rows, restricted = std.pseudonymize(fresh, source, pii_key)
    silver_rows = std.silver_columns(silver_rows)
    if validate is not None:
        outcome = validate(source, silver_rows, rows=result.silver_rows)
        result.expectations_passed, result.expectations_failed = outcome.passed, outcome.failed
        failures += outcome.critical_failures
        result.warnings += outcome.warnings
    if failures:
        result.status = "blocked"
        raise IngestError(
            f"{source.name} batch {batch_date}: not promoted to {source.silver_table}: " + "; ".join(failures)
        )

    keys = list(source.primary_key)
    if source.kind == "event":  # an event is kept once; a re-delivery of it changes nothing
        how = {"keys": [*keys, "event_date"], "when_matched": "ignore", "partition_by": ["event_date"]}
    else:  # an entity's newest version replaces the one silver holds
        how = {"keys": keys}
    targets = [(source.silver_table, silver_rows)]
    if restricted is not None:
        targets.append((source.restricted_table, restricted))
    for table, rows in targets:
        # unique: deduplicated above
        lake.merge(table, rows, run=run, check_unique=False, rows_at_most=result.silver_rows, **how)
    if dropped:  # last: the batch's reads above are done with bronze's files
        _erase_from_bronze(lake, source, suppressed, batch_date, privacy)
    return result


def _suppress(lake: Lake, rows, source: Source, pii_key: bytes):
    """(rows, None), or (rows kept, rows dropped) when some belong to erased customers: a row is
    dropped when the keyed hash of its primary key or of an identifier column (`*_id`, `*_hmac`, or a
    PII column) is in `ops.suppressions` (written by erasures; no raw value is stored there)."""
    if not lake.exists(OPS_SUPPRESSIONS):
        return rows, None
    hashes = [r["hash"] for r in lake.read(OPS_SUPPRESSIONS, columns=["hash"]).collect()]
    if not hashes:
        return rows, None
    pii = set(source.pii_columns)
    names = [c for c in rows.columns if not c.startswith("_")]
    candidates = [c for c in names if c in source.primary_key or c.endswith(("_id", "_hmac")) or c in pii]
    hit = None
    for c in candidates:
        cond = std.hmac_sha256(F.col(c).cast("string"), pii_key).isin(hashes)
        hit = cond if hit is None else (hit | cond)
    if hit is None:
        return rows, None
    flagged = rows.withColumn("_suppressed", F.coalesce(hit, F.lit(False)))
    return flagged.filter(~F.col("_suppressed")).drop("_suppressed"), flagged.filter("_suppressed").drop(
        "_suppressed"
    )


def _erase_from_bronze(lake: Lake, source: Source, suppressed, batch_date: dt.date, privacy=None) -> None:
    """The replayed records of erased customers leave bronze too (matched on the primary key), and
    with `privacy` the bronze table's history with them (vacuum, log cut: `p13n.lake.duck.forget_history`)."""
    keys = [
        tuple(str(r[k]) for k in source.primary_key) for r in suppressed.select(*source.primary_key).collect()
    ]
    if not keys:
        return
    conds = " OR ".join(
        "("
        + " AND ".join(
            f"`{k}` = '{v.replace(chr(39), chr(39) * 2)}'"
            for k, v in zip(source.primary_key, key, strict=True)
        )
        + ")"
        for key in keys
    )
    lake.delete(source.bronze_table, f"_batch_date = '{batch_date.isoformat()}' AND ({conds})")
    if privacy is not None:
        from p13n.lake.duck import forget_history

        forget_history(
            lake.uri(source.bronze_table),
            retention_hours=privacy.vacuum_retention_hours,
            truncate=privacy.truncate_history,
            storage_options=lake.storage_options,
        )


def _freshness_warning(
    source: Source, clock: str | None, newest: dt.datetime | None, batch_date: dt.date
) -> str | None:
    """A warning when the batch's newest record is older than the source's freshness promise."""
    if not clock or newest is None:
        return None
    batch_end = dt.datetime.combine(batch_date + dt.timedelta(days=1), dt.time())
    lag_hours = (batch_end - newest).total_seconds() / 3600
    if lag_hours > source.freshness_hours:
        return (
            f"stale: the newest {clock} is {lag_hours:.0f}h before the batch end "
            f"(freshness promise {source.freshness_hours}h)"
        )
    return None


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary: 'total: below the minimum 0' stays, record-specific detail goes."""
    if reason.startswith("duplicate"):
        return reason.split(":", 1)[0]
    if reason.startswith("stale update"):
        return "stale update"
    if reason.startswith("unreadable record"):
        head = reason.split(": ", 2)
        return ": ".join(head[:2]).split(" at ")[0]
    return reason


# ---------------------------------------------------------------------- one source, one batch
def ingest_batch(
    lake: Lake,
    settings: Settings,
    catalog: Catalog,
    source: Source,
    batch_date: dt.date,
    pii_key: bytes,
    *,
    run: RunContext | None = None,
    validate=None,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Land and promote one batch of one source, whatever its format."""
    from p13n.sources import systems

    now = now or dt.datetime.combine(batch_date + dt.timedelta(days=1), dt.time())
    if source.format == "kafka":
        bootstrap = kafka_bootstrap(settings)
        from p13n.services.kafka import end_offsets

        ends = end_offsets(bootstrap, source.location)
        dt_ = lake._open(source.bronze_table)
        starts = {
            p: (dt_.transaction_version(systems.kafka_app_id(source.location, p)) or 0) if dt_ else 0
            for p in ends
        }
        fresh = {p: e for p, e in ends.items() if e > starts.get(p, 0)}
        files = len(fresh)
        if fresh:
            messages = sum(e - starts.get(p, 0) for p, e in fresh.items())  # a message a record
            here = is_connect(lake.spark) and messages <= settings.sources.consume_here_max_messages
            records = systems.kafka_batch(lake.spark, source, bootstrap, starts, fresh, here=here)
            bronze = _with_batch(records, source, batch_date)
            txns = [(systems.kafka_app_id(source.location, p), e) for p, e in fresh.items()]
            lake.write(
                source.bronze_table,
                bronze,
                mode="append",
                partition_by=["_batch_date"],
                txn=txns,
                run=run,
                rows_at_most=messages,
            )
    else:
        bound = None
        if source.format == "snowflake":
            records = systems.warehouse_batch(lake.spark, source, settings, batch_date)
            files = 1
        else:
            paths = [str(p) for p in landing_files(settings, source, batch_date)]
            files = len(paths)
            if not paths:
                return IngestResult(source.name, batch_date.isoformat(), status="no data")
            records, bound = read_landing_records(
                lake.spark,
                source,
                paths,
                str(settings.landing_dir),
                settings.sources.parse_here_max_bytes if is_connect(lake.spark) else 0,
            )
            if bound is None:
                bound = landing_rows_at_most(source, paths)
        land(lake, source, _with_batch(records, source, batch_date), batch_date, run, bound)
    if not lake.exists(source.bronze_table):
        return IngestResult(source.name, batch_date.isoformat(), files=files, status="no data")
    result = promote(
        lake,
        source,
        catalog,
        batch_date,
        pii_key,
        now=now,
        max_quarantine_share=settings.sources.max_quarantine_share,
        share_min_rows=settings.sources.quarantine_share_min_rows,
        run=run,
        validate=validate,
        privacy=settings.privacy,
    )
    result.files = files
    return result


def kafka_bootstrap(settings: Settings) -> str:
    import os

    bootstrap = settings.sources.kafka_bootstrap or os.environ.get("P13N_KAFKA_BOOTSTRAP", "")
    if not bootstrap:
        raise IngestError(
            "no Kafka broker: set sources.kafka_bootstrap (P13N__SOURCES__KAFKA_BOOTSTRAP), "
            "or run through `p13n run`, which starts the embedded broker"
        )
    return bootstrap
