"""Task bodies of the ingestion DAG: a few lines each, calling the ingestion functions."""

from __future__ import annotations

import datetime as dt

from p13n.config import get_settings
from p13n.orchestration import progress
from p13n.runctx import RunContext

RUNS_TABLE = "ops.ingest_runs"
RUNS_SCHEMA = (
    "batch_date date, source string, status string, files long, bronze_rows long, silver_rows long, "
    "quarantined long, top_reasons string, drifted_rows long, expectations_passed long, expectations_failed long, "
    "warnings string"
)


def ingest_task(source_name: str, ds: str) -> dict:
    from p13n.secrets import pii_key
    from p13n.session import lake
    from p13n.sources.catalog import catalog
    from p13n.sources.expectations import validator
    from p13n.sources.ingest import IngestError, ingest_batch

    settings = get_settings()
    source = catalog()[source_name]
    try:
        result = ingest_batch(
            lake(),
            settings,
            catalog(),
            source,
            dt.date.fromisoformat(ds),
            pii_key(settings),
            run=RunContext.from_env(),
            validate=validator(settings),
        )
    except IngestError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        progress(f"{source_name}: BLOCKED: {exc}")
        raise AirflowFailException(str(exc)) from exc  # a data problem: retrying cannot fix it
    reasons = ", ".join(f"{r} ×{n}" for r, n in result.top_reasons[:3])
    progress(
        f"{source_name:<28} {result.bronze_rows:>8,} read  {result.silver_rows:>8,} silver  "
        f"{result.quarantined:>6,} quarantined{'  (' + reasons + ')' if reasons else ''}"
    )
    return result.as_dict()


def summarize_task(results: list[dict], ds: str) -> int:
    import json

    from p13n.session import lake

    batch_date = dt.date.fromisoformat(ds)
    rows = [
        (
            batch_date,
            r["source"],
            r["status"],
            r["files"],
            r["bronze_rows"],
            r["silver_rows"],
            r["quarantined"],
            json.dumps(r["top_reasons"]),
            r["drifted_rows"],
            r["expectations_passed"],
            r["expectations_failed"],
            json.dumps(r["warnings"]),
        )
        for r in results
    ]
    spark = lake().spark
    df = spark.createDataFrame(rows, RUNS_SCHEMA)
    lake().replace_partition(RUNS_TABLE, df, "batch_date", batch_date, run=RunContext.from_env())
    from p13n.sources.expectations import validator

    docs = validator(get_settings()).build_docs()
    total = sum(r["bronze_rows"] for r in results)
    progress(
        f"{len(results)} sources ingested for {ds}: {total:,} records, "
        f"{sum(r['quarantined'] for r in results):,} quarantined; Data Docs: {docs}"
    )
    return len(results)
