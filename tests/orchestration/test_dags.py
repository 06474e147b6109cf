"""DAG integrity: every DAG imports cleanly and fast, and carries tags, an owner, retries and docs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))
IMPORT_BUDGET_S = 0.5


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert len(dagbag.dags) >= len(DAG_FILES)


def test_one_dag_per_file_named_after_it(dagbag):
    for path in DAG_FILES:
        ids = [d for d, dag in dagbag.dags.items() if Path(dag.fileloc).name == path.name]
        assert ids == [path.stem], f"{path.name} defines {ids}"


def test_every_dag_has_tags_owner_retries_and_docs(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and len(dag.doc_md.strip()) > 40, f"{dag_id} has no doc_md"
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id} has no owner"
            if task.trigger_rule != "one_failed":  # a watcher fails the run on purpose: no retry
                assert task.retries is not None and task.retries >= 1, (
                    f"{dag_id}.{task.task_id} has no retries"
                )
                assert task.retry_exponential_backoff, f"{dag_id}.{task.task_id} retries without backoff"
                assert task.on_failure_callback, f"{dag_id}.{task.task_id} sends no failure alert"


def test_the_nightly_chain_has_deadlines_and_ends_with_the_report(dagbag):
    """Each nightly DAG has a deadline alert from `airflow.deadlines_minutes`, and the Assets chain them
    from ingestion to the run report."""
    nightly = [
        "ingest_sources",
        "resolve_identities",
        "score_customers",
        "recommend_products",
        "publish_serving",
        "export_audiences",
        "run_report",
    ]
    for dag_id in nightly:
        (alert,) = dagbag.dags[dag_id].deadline
        assert alert.interval.total_seconds() > 0 and "deadline_missed" in alert.callback.path
    produced = {a.uri: dag_id for dag_id, dag in dagbag.dags.items() for t in dag.tasks for a in t.outlets}
    report = dagbag.dags["run_report"]
    condition = report.timetable.asset_condition  # AssetAll: both must have an event
    assert type(condition).__name__ == "AssetAll"
    waits = {a.uri for a in condition.objects}
    assert {produced[u] for u in waits} == {"publish_serving", "export_audiences"}


def test_the_nightly_chain_is_partitioned_by_date(dagbag):
    """Ingestion runs are partitioned by the night's date, and every DAG downstream of it is started by
    the partition key of its input assets' events, never by "whatever is new" (no logical date there)."""
    ingest = dagbag.dags["ingest_sources"].timetable
    assert type(ingest).__name__ == "CronPartitionTimetable" and ingest.key_format == "%Y-%m-%d"
    from p13n.scheduler import CHAIN

    for dag_id in CHAIN[1:]:
        assert type(dagbag.dags[dag_id].timetable).__name__ == "PartitionedAssetTimetable", dag_id


def test_unpausing_a_cron_dag_never_runs_the_tick_that_just_passed(dagbag):
    """A cron DAG's first scheduled run, once unpaused, is the next tick: `p13n run` unpauses
    stream_events and lake_maintenance to run a replayed date, and a run of the tick that had just
    passed processed the wall clock's date in the replayed lake (win-back triggers, sends)."""
    import pendulum
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    from p13n.scheduler import CHAIN

    timetables = {d: coerce_to_core_timetable(dag.timetable) for d, dag in dagbag.dags.items()}
    cron = [d for d, t in timetables.items() if d not in CHAIN and t.periodic]
    assert {"stream_events", "lake_maintenance", "privacy_requests"} <= set(cron)
    now = pendulum.now("UTC")
    for dag_id in cron:
        dag = dagbag.dags[dag_id]
        first = timetables[dag_id].next_dagrun_info_v2(
            last_dagrun_info=None,
            restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=dag.catchup),
        )
        assert first.run_after > now, f"{dag_id} would run {first.run_after} at once on unpause"


def test_dag_files_import_fast():
    """A DAG file does no work at parse time: importing it costs little beyond Airflow itself."""
    # One process for every file (a process each cost a minute of the suite). Airflow's own timetable
    # modules are imported first: their cost is Airflow's, not the files'. Each file's best of three
    # parses: the first pays the imports it shares with the others, and a busy machine does not make a
    # light file look heavy.
    code = (
        "import json, time, runpy, airflow.sdk, p13n.orchestration\n"
        "from airflow.sdk import AssetAll, CronPartitionTimetable, PartitionedAssetTimetable\nbest = {}\n"
        f"for path in {[str(p) for p in DAG_FILES]!r}:\n    for _ in range(3):\n"
        "        t = time.perf_counter()\n        runpy.run_path(path)\n"
        "        best[path] = min(best.get(path, float('inf')), time.perf_counter() - t)\n"
        "print(json.dumps(best))\n"
    )
    env_fix = {"P13N_ENV": "local"}  # parse with the default overlay, as the scheduler would
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, **env_fix},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    seconds = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(seconds) == len(DAG_FILES)
    slow = {Path(p).name: round(s, 2) for p, s in seconds.items() if s >= IMPORT_BUDGET_S}
    assert not slow, f"DAG files over the {IMPORT_BUDGET_S}s parse budget: {slow}"


def test_heavy_libraries_are_not_imported_at_parse_time():
    code = (
        "import sys, runpy\n"
        + "".join(f"runpy.run_path({str(p)!r})\n" for p in DAG_FILES)
        + "heavy = [m for m in ('pyspark', 'deltalake', 'great_expectations', 'mlflow', 'sklearn', "
        "'implicit') if m in sys.modules]\nprint(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_sources_run_two_per_core_and_other_dags_one(dagbag, monkeypatch):
    """A source's task is a thin Spark Connect client: ingest_sources runs two per core; every other
    DAG one per core (its tasks run pandas and scikit-learn in their own processes); the executor has
    slots for the larger."""
    import os

    from p13n.config import load_settings
    from p13n.scheduler import services_env

    cores = os.cpu_count() or 1
    assert dagbag.dags["ingest_sources"].max_active_tasks == 2 * cores
    env = services_env(load_settings(), port=18080, base={})
    assert env["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"] == str(cores)
    assert env["AIRFLOW__CORE__PARALLELISM"] == str(2 * cores)
    monkeypatch.setenv("P13N__AIRFLOW__PARALLELISM", "3")
    monkeypatch.setenv("P13N__AIRFLOW__SOURCE_PARALLELISM", "5")
    env = services_env(load_settings(), port=18080, base={})
    assert (env["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"], env["AIRFLOW__CORE__PARALLELISM"]) == ("3", "5")
