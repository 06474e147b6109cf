"""Airflow glue that DAG files and the CLI share. Light on imports: DAG files import it at parse time."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

from p13n.config import REPO_ROOT, Settings, get_settings

DAGS_FOLDER = REPO_ROOT / "dags"
PROGRESS_MARK = "▶ p13n |"


def dag_defaults(settings: Settings | None = None) -> dict:
    """default_args every p13n DAG uses: owner, retries with exponential backoff, and a failure alert
    through the configured channels (`p13n.alerts`) once a task has no retry left."""
    from p13n.alerts import failure_notifier

    s = (settings or get_settings()).airflow
    return {
        "owner": s.owner,
        "retries": s.retries,
        "retry_delay": timedelta(minutes=s.retry_delay_minutes),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=s.max_retry_delay_minutes),
        "on_failure_callback": failure_notifier(),
    }


def progress(message: str) -> None:
    """One line of progress, shown by `p13n run` while a DAG runs (and kept in the task log)."""
    print(f"{PROGRESS_MARK} {message}", flush=True)


def validate_outputs(tables: dict[str, list | None], what: str) -> dict:
    """Run the Great Expectations suite of each table (restricted to its `where` filters); warnings
    are reported, a critical failure fails the task without retries (the data will not change)."""
    from p13n.session import lake
    from p13n.sources.expectations import validator

    check = validator(get_settings())
    failures, warnings, passed, records = [], [], 0, []
    for table, where in tables.items():
        outcome = check(table, lake().read(table, where=where))
        passed += outcome.passed
        failures += [f"{table}: {f}" for f in outcome.critical_failures]
        warnings += [f"{table}: {w}" for w in outcome.warnings]
        records.append((table, where, outcome))
    record_validations(lake(), records)
    for w in warnings:
        progress(f"expectation warning: {w}")
    if failures:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{what} failed their expectations: " + "; ".join(failures))
    progress(f"{what} passed {passed} expectations ({len(warnings)} warnings)")
    return {"passed": passed, "warnings": len(warnings)}


VALIDATIONS = "ops.validations"
VALIDATIONS_SCHEMA = (
    "run_date date, table_name string, success boolean, passed long, failed long, failures string, "
    "warnings string, validated_at timestamp"
)


def record_validations(lake, records: list) -> None:
    """Append each table's outcome to `ops.validations` (the publish gate reads the latest per date)."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    rows = []
    for table, where, outcome in records:
        dates = [v for c, op, v in (where or []) if op == "=" and isinstance(v, dt.date)]
        rows.append((dates[0] if dates else now.date(), table, not outcome.critical_failures, outcome.passed,
                     outcome.failed, "; ".join(outcome.critical_failures), "; ".join(outcome.warnings), now))  # fmt: skip
    if rows:
        df = lake.spark.createDataFrame(rows, VALIDATIONS_SCHEMA)
        lake.write(VALIDATIONS, df, mode="append", partition_by=["run_date"])


def dags_test_env(env: dict[str, str]) -> dict[str, str]:
    """The environment for `airflow dags test`: DAGs parsed without their deadline alerts.

    Airflow 3.3's `dags test` crashes after a successful run of a DAG with a deadline
    (apache/airflow#73428: `'dict' object has no attribute 'hex'`), and it has no scheduler or
    triggerer to evaluate deadlines anyway. Scheduled runs keep them.
    """
    return {**env, "P13N__AIRFLOW__DEADLINE_ALERTS": "false"}


def airflow_env(settings: Settings | None = None, base: dict | None = None) -> dict[str, str]:
    """The environment Airflow runs in for this project: its home, DAGs, SQLite locally, no examples."""
    settings = settings or get_settings()
    home = settings.airflow_home
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.logs_dir / "airflow"),
            "P13N_ENV": settings.env,
            "P13N_DATA_DIR": str(settings.data_dir),
            "PYSPARK_PYTHON": sys.executable,
            # `airflow standalone` starts its components as `airflow` from PATH: this environment's.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    if settings.env != "prod":
        env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}")
    Path(home).mkdir(parents=True, exist_ok=True)
    return env
