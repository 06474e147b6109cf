"""Airflow glue that DAG files and the CLI share. Light on imports: DAG files import it at parse time."""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import timedelta
from pathlib import Path

from p13n.config import REPO_ROOT, Settings, get_settings
from p13n.lake.tables import OPS_VALIDATIONS

DAGS_FOLDER = REPO_ROOT / "dags"
PROGRESS_MARK = "▶ p13n |"


def dag_defaults(settings: Settings | None = None) -> dict:
    """default_args every p13n DAG uses: owner, retries with exponential backoff, and a failure alert
    through the configured channels (`p13n.alerts`) once a task has no retry left."""
    from p13n.alerts import failure_notifier

    s = (settings or get_settings()).airflow
    return {
        "on_success_callback": release_spark,
        "owner": s.owner,
        "retries": s.retries,
        "retry_delay": timedelta(minutes=s.retry_delay_minutes),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=s.max_retry_delay_minutes),
        "on_failure_callback": failure_notifier(),
    }


def _cores() -> int:
    return max(1, os.cpu_count() or 1)


def task_slots(settings: Settings | None = None) -> int:
    """Tasks of a DAG running at once: `airflow.parallelism`, or one per core."""
    return (settings or get_settings()).airflow.parallelism or _cores()


def source_slots(settings: Settings | None = None) -> int:
    """ingest_sources' tasks running at once: `airflow.source_parallelism`, or two per core. Each is a
    thin Spark Connect client: at one per core the server's two threads sat half idle between a task's
    round trips (make run's ingestion at 20k on 2 cores, one run each: 151 s and 69 s for its two
    nights at 2 tasks at once; 129 s and 58 s with every DAG at 4; 118 s and 65 s as set here)."""
    return (settings or get_settings()).airflow.source_parallelism or 2 * _cores()


def nightly_schedule(cron: str):
    """A cron schedule whose runs are partitioned by the day before the run (the night's data):
    the run at 01:00 on the 3rd processes partition "2024-03-02", as `ds` did for interval runs.

    The DAG has no start_date, and `run_immediately=timedelta(0)`: unpausing it waits for the next
    01:00 instead of running the night that passed at once (run a past date with `p13n trigger`)."""
    from airflow.sdk import CronPartitionTimetable

    return CronPartitionTimetable(
        cron, timezone="UTC", run_offset=-1, key_format="%Y-%m-%d", run_immediately=timedelta(0)
    )


def cron_schedule(cron: str):
    """A wall-clock cron schedule (streaming, maintenance, privacy requests) that never runs at once on
    unpause: the DAG has no start_date and the first run waits for the next tick. A cron string with a
    start_date would run the tick that just passed as soon as the DAG is unpaused, which is what
    `p13n run` does to trigger a replayed date's stream or maintenance run: that extra run wrote the
    wall clock's date into a lake of generated dates (win-back triggers, sends, table health)."""
    from airflow.sdk import CronTriggerTimetable

    return CronTriggerTimetable(cron, timezone="UTC", run_immediately=timedelta(0))


def after_assets(*assets):
    """Run once every one of `assets` has an event for the same partition (date): each downstream
    DAG of the nightly runs for the date its inputs were made for, never for "whatever is new"."""
    from airflow.sdk import AssetAll, PartitionedAssetTimetable

    return PartitionedAssetTimetable(assets=assets[0] if len(assets) == 1 else AssetAll(*assets))


def release_spark(_context=None) -> None:
    """A task's success callback: close this process's Spark Connect session, so the server frees what
    the task cached at once (an in-process driver is kept: `p13n run --in-process` reuses it)."""
    from p13n.session import spark

    if not get_settings().spark.remote or not spark.cache_info().currsize:
        return
    with contextlib.suppress(Exception):  # the task succeeded; the server's session timeout frees it anyway
        spark().stop()
    spark.cache_clear()


@contextlib.contextmanager
def share_cores(tasks: int):
    """Size the native thread pools (OpenMP, BLAS) to this task's share of the cores while `tasks`
    tasks of a DAG run beside each other (at most as many as the executor's slots, `airflow.parallelism`
    or one per core). Each pool otherwise starts a thread per core and spins:
    recommend_products' train and next_basket took 92 s side by side on 2 cores against 72 s one
    after the other, and 58.5 s with one thread each. scikit-learn and implicit load their own OpenMP
    and BLAS when first imported, so the environment sizes those loaded inside the block; all are
    given back their default on leaving it (`p13n run --in-process` runs the next tasks in this
    process)."""
    from threadpoolctl import ThreadpoolController

    cores = _cores()
    slots = task_slots()
    share = max(1, cores // max(1, min(tasks, slots)))
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    loaded = {lib.filepath for lib in ThreadpoolController().lib_controllers}
    limiter = ThreadpoolController().limit(limits=share)
    os.environ.update(dict.fromkeys(names, str(share)))
    try:
        yield share
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        limiter.restore_original_limits()
        default = int(saved["OMP_NUM_THREADS"] or cores)
        for lib in ThreadpoolController().lib_controllers:
            if lib.filepath not in loaded:
                lib.set_num_threads(default)


def progress(message: str) -> None:
    """One line of progress, shown by `p13n run` while a DAG runs (and kept in the task log)."""
    print(f"{PROGRESS_MARK} {message}", flush=True)


class RunDateError(ValueError):
    """A DAG run that cannot tell which date it processes."""


def _as_date(value, where: str) -> str:
    import datetime as dt

    text = str(value).strip()
    try:
        return dt.date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        raise RunDateError(f"{where} is {value!r}, not a date (YYYY-MM-DD)") from None


def resolve_run_date(context) -> str:
    """The date (YYYY-MM-DD) a DAG run processes, from the first of these its context has:

    1. the run's partition key: scheduled nights (`CronPartitionTimetable`), runs the asset chain
       creates (`PartitionedAssetTimetable`: the key of the upstream events) and `p13n trigger`;
    2. `{"date": ...}` in the run's conf;
    3. the partition keys or `extra["date"]` of the asset events that triggered it (all one date);
    4. the logical date, for runs that have one (`airflow dags test`, cron-scheduled DAGs).

    Asset-triggered runs have no logical date (`ds` is None in them), so no task reads `ds`.
    """
    key = context.get("partition_key")
    if key:
        return _as_date(key, "the run's partition key")
    dag_run = context.get("dag_run")
    conf = getattr(dag_run, "conf", None) or {}
    if conf.get("date"):
        return _as_date(conf["date"], "the run's conf 'date'")
    dates = set()
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            value = getattr(event, "partition_key", None) or (getattr(event, "extra", None) or {}).get("date")
            if value:
                dates.add(_as_date(value, f"an asset event of {getattr(event, 'source_dag_id', '?')}"))
    if len(dates) > 1:
        raise RunDateError(f"the asset events that triggered this run carry several dates: {sorted(dates)}")
    if dates:
        return dates.pop()
    logical = context.get("logical_date")
    if logical is not None:
        return logical.date().isoformat()
    raise RunDateError(
        "this run has no date: no partition key, no conf 'date', no dated asset event and no logical "
        "date. Trigger it for a date: p13n trigger DAG --date YYYY-MM-DD"
    )


def run_date() -> str:
    """The date the current task's DAG run processes (`resolve_run_date`); fails the task at once,
    without retries, when the run has none. Also exported as P13N_RUN_DATE for the run metadata."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    try:
        day = resolve_run_date(get_current_context())
    except RunDateError as exc:
        raise AirflowFailException(f"cannot tell which date to process: {exc}") from None
    os.environ["P13N_RUN_DATE"] = day
    return day


def announce(day: str) -> None:
    """Stamp the current task's outlet asset events with `day`: as their partition key (what starts
    the partitioned DAGs downstream, even for a run that had only a logical date) and as extra."""
    from airflow.sdk import get_current_context

    context = get_current_context()
    for outlet in context["task"].outlets:
        event = context["outlet_events"][outlet]
        event.extra = {**(event.extra or {}), "date": day}
        event.add_partitions(day)


def validate_outputs(tables: dict[str, list | None], what: str) -> dict:
    """Run the Great Expectations suite of each table (restricted to its `where` filters); warnings
    are reported, a critical failure fails the task without retries (the data will not change).
    A table whose rows fit `quality.pandas_max_rows` (by the Delta log's counts) is read without
    Spark: for recommend_products' outputs, 0.3 s against 3.3 s through a Spark Connect client."""
    import datetime as dt

    from p13n.session import lake

    limit = get_settings().quality.pandas_max_rows

    def frames():
        for table, where in tables.items():
            frame = lake().read_pandas(table, where=where, max_rows=limit) if limit > 0 else None
            dates = [v for _, op, v in (where or []) if op == "=" and isinstance(v, dt.date)]
            day = dates[0] if dates else dt.datetime.now(dt.UTC).date()
            yield table, (lake().read(table, where=where) if frame is None else frame), day

    return _validate(frames(), what)


def validate_frames(frames: dict[str, tuple], what: str) -> dict:
    """`validate_outputs` for frames already in hand (pandas, no Spark): {table: (frame, run date)};
    an empty frame (nothing written tonight) is not checked."""
    kept = ((t, f, day) for t, (f, day) in frames.items() if f is not None and not f.empty)
    return _validate(kept, what)


def _validate(frames, what: str) -> dict:
    """Check each (table, frame, run date); the outcomes go to `ops.validations` (the publish gate
    reads the latest per date); then the verdict."""
    import datetime as dt

    import pyarrow as pa

    from p13n.lake.duck import write_arrow
    from p13n.sources.expectations import validator

    settings = get_settings()
    check = None  # made on the first frame: no frame, no GX context to pay for
    failures, warnings, passed, rows = [], [], 0, []
    now = dt.datetime.now(dt.UTC)
    for table, frame, day in frames:
        check = check or validator(settings)
        outcome = check(table, frame)
        passed += outcome.passed
        failures += [f"{table}: {f}" for f in outcome.critical_failures]
        warnings += [f"{table}: {w}" for w in outcome.warnings]
        rows.append(
            {
                "run_date": day,
                "table_name": table,
                "success": not outcome.critical_failures,
                "passed": outcome.passed,
                "failed": outcome.failed,
                "failures": "; ".join(outcome.critical_failures),
                "warnings": "; ".join(outcome.warnings),
                "validated_at": now,
            }
        )
    schema = pa.schema(
        [
            ("run_date", pa.date32()),
            ("table_name", pa.string()),
            ("success", pa.bool_()),
            ("passed", pa.int64()),
            ("failed", pa.int64()),
            ("failures", pa.string()),
            ("warnings", pa.string()),
            ("validated_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    if rows:
        write_arrow(
            settings, OPS_VALIDATIONS, pa.Table.from_pylist(rows, schema=schema), partition_by=["run_date"]
        )
    return _verdict(what, passed, failures, warnings)


def _verdict(what: str, passed: int, failures: list[str], warnings: list[str]) -> dict:
    """Report the warnings; fail the task without retries on a critical failure (the data will not
    change); else say how many expectations passed."""
    for w in warnings:
        progress(f"expectation warning: {w}")
    if failures:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{what} failed their expectations: " + "; ".join(failures))
    progress(f"{what} passed {passed} expectations ({len(warnings)} warnings)")
    return {"passed": passed, "warnings": len(warnings)}


def dags_test_env(env: dict[str, str]) -> dict[str, str]:
    """The environment for `airflow dags test`: DAGs parsed without their deadline alerts.

    Airflow 3.3's `dags test` crashes after a successful run of a DAG with a deadline
    (apache/airflow#73428: `'dict' object has no attribute 'hex'`), and it has no scheduler or
    triggerer to evaluate deadlines anyway. Scheduled runs keep them. It also runs one task at a
    time, so each task may use every core (`share_cores`).
    """
    return {**env, "P13N__AIRFLOW__DEADLINE_ALERTS": "false", "P13N__AIRFLOW__PARALLELISM": "1"}


def preload_task_modules(settings: Settings | None = None) -> list[str]:
    """Import `airflow.preload_modules` (in the scheduler, before it forks its workers: see
    conf/airflow/airflow_local_settings.py); a module that fails to import is skipped, with a warning."""
    import importlib
    import logging

    done = []
    for name in (settings or get_settings()).airflow.preload_modules:
        try:
            importlib.import_module(name)
            done.append(name)
        except Exception as exc:  # a task importing it itself will say why
            logging.getLogger("p13n").warning("p13n: could not preload %s: %s", name, exc)
    return done


def airflow_bin() -> str:
    """The `airflow` command of this environment."""
    return str(Path(sys.executable).parent / "airflow")


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
            # airflow_local_settings.py: the scheduler preloads the tasks' modules before forking
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT / "conf" / "airflow"), env.get("PYTHONPATH")) if p
            ),
            # `airflow standalone` starts its components as `airflow` from PATH: this environment's.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    if settings.env != "prod":
        env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}")
    Path(home).mkdir(parents=True, exist_ok=True)
    return env
