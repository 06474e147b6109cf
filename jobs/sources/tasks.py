"""Task bodies of the ingestion DAG: a few lines each, calling the ingestion functions."""

from __future__ import annotations

import datetime as dt

from p13n.config import get_settings
from p13n.lake.tables import OPS_INGEST_RUNS
from p13n.orchestration import progress
from p13n.runctx import RunContext

RUNS_SCHEMA = (
    "batch_date date, source string, status string, files long, bronze_rows long, silver_rows long, "
    "quarantined long, top_reasons string, drifted_rows long, expectations_passed long, expectations_failed "
    "long, warnings string, error string"
)
ERROR_XCOM = "error"  # what a failed source task leaves for `summarize` (a failed task returns nothing)


def _leave_error(exc: BaseException) -> None:
    """Push the failure as an XCom of the task, for `summarize` and `ops.ingest_runs`."""
    try:
        from airflow.sdk import get_current_context

        get_current_context()["ti"].xcom_push(key=ERROR_XCOM, value=f"{type(exc).__name__}: {exc}"[:2000])
    except Exception:  # outside Airflow (a direct call): the exception itself says it
        pass


def ingest_task(source_name: str, ds: str) -> dict:
    """Ingest one source's batch of `ds`; a failure leaves its error for `summarize` and re-raises."""
    try:
        return _ingest(source_name, ds)
    except Exception as exc:
        _leave_error(exc)
        raise


def _ingest(source_name: str, ds: str) -> dict:
    from p13n.faults import fail_point
    from p13n.secrets import pii_key
    from p13n.session import lake
    from p13n.sources.catalog import catalog
    from p13n.sources.expectations import validator
    from p13n.sources.ingest import IngestError, ingest_batch

    settings = get_settings()
    source = catalog()[source_name]
    fail_point(f"ingest.{source_name}")
    try:
        result = ingest_batch(
            lake(),
            settings,
            catalog(),
            source,
            dt.date.fromisoformat(ds),
            pii_key(settings),
            run=RunContext.from_env(),
            validate=lambda *a, **k: validator(settings)(*a, **k),  # GX's context only when a batch has rows
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


def failed_sources(results: list[dict], names: list[str], errors: dict[str, str]) -> list[dict]:
    """A result row for every source of `names` that returned nothing: its task failed (the error it
    left) or never ran (an upstream failure, a killed worker)."""
    done = {r["source"] for r in results}
    return [
        {
            "source": n,
            "status": "failed",
            "files": 0,
            "bronze_rows": 0,
            "silver_rows": 0,
            "quarantined": 0,
            "top_reasons": [],
            "drifted_rows": 0,
            "expectations_passed": 0,
            "expectations_failed": 0,
            "warnings": [],
            "error": errors.get(n) or "the task did not finish (see its log)",
        }
        for n in names
        if n not in done
    ]


def task_errors(names: list[str]) -> dict[str, str]:
    """The errors failed source tasks of this DAG run left (`ERROR_XCOM`), by source."""
    from airflow.sdk import get_current_context

    ti = get_current_context()["ti"]
    found = {}
    for name in names:
        value = ti.xcom_pull(task_ids=f"ingest_{name}", key=ERROR_XCOM)
        if value:
            found[name] = value
    return found


def summarize_task(results: list[dict], ds: str, failed: list[dict] | None = None) -> int:
    """Write the date's `ops.ingest_runs` (every source: ingested or failed) and say what happened."""
    import json

    from p13n.session import lake

    batch_date = dt.date.fromisoformat(ds)
    failed = failed or []
    results = list(results) + failed
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
            r.get("error"),
        )
        for r in results
    ]
    spark = lake().spark
    df = spark.createDataFrame(rows, RUNS_SCHEMA)
    # add_columns: lakes from before `error` existed gain the column
    lake().write(
        OPS_INGEST_RUNS,
        df,
        mode="overwrite",
        partition_by=["batch_date"],
        replace_where={"batch_date": batch_date},
        run=RunContext.from_env(),
        schema_mode="add_columns",
    )
    from p13n.sources.expectations import validator

    docs = validator(get_settings()).build_docs()
    total = sum(r["bronze_rows"] for r in results)
    progress(
        f"{len(results) - len(failed)} sources ingested for {ds}: {total:,} records, "
        f"{sum(r['quarantined'] for r in results):,} quarantined; Data Docs: {docs}"
    )
    for r in failed:
        progress(f"{r['source']}: FAILED: {r['error']}")
    return len(results)
