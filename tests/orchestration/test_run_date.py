"""Which date a DAG run processes: asset-triggered runs have no logical date, so the date comes from
the partition key the chain carries (or the events, the conf, the logical date), or the run fails."""

from __future__ import annotations

import datetime as dt
import json
import os
from types import SimpleNamespace

import pendulum
import pytest

from p13n.orchestration import RunDateError, resolve_run_date
from p13n.scheduler import is_duplicate_run_error


def _event(partition_key=None, extra=None, dag="ingest_sources"):
    return SimpleNamespace(partition_key=partition_key, extra=extra or {}, source_dag_id=dag)


def test_the_partition_key_of_the_run_is_its_date():
    context = {"partition_key": "2024-03-03", "logical_date": None, "dag_run": SimpleNamespace(conf={})}
    assert resolve_run_date(context) == "2024-03-03"


def test_an_asset_triggered_run_without_a_key_takes_the_date_its_events_carry():
    events = {"silver/a": [_event("2024-03-04")], "silver/b": [_event(extra={"date": "2024-03-04"})]}
    context = {"partition_key": None, "logical_date": None, "triggering_asset_events": events}
    assert resolve_run_date(context) == "2024-03-04"


def test_events_of_two_dates_are_refused():
    events = {"silver/a": [_event("2024-03-04")], "silver/b": [_event("2024-03-05")]}
    with pytest.raises(RunDateError, match=r"several dates: \['2024-03-04', '2024-03-05'\]"):
        resolve_run_date({"triggering_asset_events": events})


def test_conf_date_then_logical_date():
    assert resolve_run_date({"dag_run": SimpleNamespace(conf={"date": "2024-03-06"})}) == "2024-03-06"
    logical = pendulum.datetime(2024, 3, 7, 1, tz="UTC")
    assert resolve_run_date({"dag_run": SimpleNamespace(conf=None), "logical_date": logical}) == "2024-03-07"


def test_a_run_with_no_date_fails_with_a_message_saying_how_to_give_one():
    context = {
        "partition_key": None,
        "logical_date": None,
        "dag_run": SimpleNamespace(conf={}),
        "triggering_asset_events": {},
    }
    with pytest.raises(RunDateError, match=r"this run has no date.*p13n trigger DAG --date YYYY-MM-DD"):
        resolve_run_date(context)


def test_a_partition_key_that_is_not_a_date_is_named():
    with pytest.raises(RunDateError, match=r"the run's partition key is 'night-3', not a date"):
        resolve_run_date({"partition_key": "night-3"})
    # A key with a time (CronPartitionTimetable's default format) is the date of that time.
    assert resolve_run_date({"partition_key": "2024-03-03T01:00:00"}) == dt.date(2024, 3, 3).isoformat()


def test_the_raw_duplicate_run_errors_are_recognised():
    sqlite = "sqlite3.IntegrityError: UNIQUE constraint failed: dag_run.dag_id, dag_run.logical_date"
    postgres = 'duplicate key value violates unique constraint "dag_run_dag_id_logical_date_key"'
    assert is_duplicate_run_error(sqlite) and is_duplicate_run_error(postgres)
    assert not is_duplicate_run_error("DAG 'x' not found")


def test_only_wall_clock_runs_queued_meanwhile_are_deleted():
    """After a replayed date's run of a cron DAG: the scheduled runs queued since its unpause are
    deleted, one that already started is reported, and nothing older or manual is touched."""
    from p13n.scheduler import drop_wall_clock_runs

    since = dt.datetime(2026, 12, 6, 14, 24, 49, tzinfo=dt.UTC)

    class Api:
        deleted: list[str] = []

        def runs(self, dag_id):
            return [
                {
                    "dag_run_id": "manual__2024-03-02",
                    "run_type": "manual",
                    "state": "success",
                    "queued_at": "2026-12-06T14:24:49.9Z",
                },
                {
                    "dag_run_id": "scheduled__14:20",
                    "run_type": "scheduled",
                    "state": "queued",
                    "queued_at": "2026-12-06T14:24:50.1Z",
                },
                {
                    "dag_run_id": "scheduled__14:25",
                    "run_type": "scheduled",
                    "state": "running",
                    "queued_at": "2026-12-06T14:25:00.3Z",
                },
                {
                    "dag_run_id": "scheduled__yesterday",
                    "run_type": "scheduled",
                    "state": "queued",
                    "queued_at": "2026-12-05T04:00:00Z",
                },
            ]

        def delete_run(self, dag_id, run_id):
            self.deleted.append(run_id)

    api = Api()
    assert drop_wall_clock_runs(api, "stream_events", since) == (["scheduled__14:20"], ["scheduled__14:25"])
    assert api.deleted == ["scheduled__14:20"]


def test_a_spark_connect_server_whose_start_is_cut_short_is_stopped(settings, tmp_path, monkeypatch):
    """The server leads a session of its own, so Ctrl-C never reaches it: `p13n run` interrupted while
    the server started (now beside the dataset's generation) left its JVM running."""
    from p13n.services import spark_connect

    server = spark_connect.SparkConnectServer(settings, log_path=tmp_path / "connect.log")
    looked: list[int] = []

    def ctrl_c(host: str, port: int) -> bool:
        looked.append(port)
        raise KeyboardInterrupt

    monkeypatch.setattr(spark_connect, "listening", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        server.start()
    assert looked == [server.port]
    assert server.proc.poll() is not None  # the launcher's whole process group is gone


def test_tasks_side_by_side_share_the_cores_and_a_process_gets_them_back():
    """train and next_basket run side by side: each one's OpenMP and BLAS pools get their share of the
    cores, also those scikit-learn and implicit load when first imported inside, and all of them the
    default again after (an in-process run goes on in the same process)."""
    import subprocess
    import sys

    script = """
import json, os
from threadpoolctl import threadpool_info
import numpy
from p13n.orchestration import share_cores
pools = lambda: sorted((i["filepath"].rsplit("/", 1)[-1], i["num_threads"]) for i in threadpool_info())
with share_cores(os.cpu_count()) as share:
    import implicit.cpu.als, sklearn.ensemble
    inside = pools()
print(json.dumps({"share": share, "inside": inside, "after": pools(), "cores": os.cpu_count(),
                  "env": os.environ.get("OMP_NUM_THREADS")}))
"""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, check=True, text=True
        ).stdout
    )
    assert out["share"] == 1 and out["env"] is None
    kinds = {name.split("-")[0].split(".")[0] for name, _ in out["inside"]}
    assert {"libgomp", "libscipy_openblas64_"} <= kinds and len(out["inside"]) >= 3, out
    assert {n for _, n in out["inside"]} == {1}
    assert [name for name, _ in out["after"]] == [name for name, _ in out["inside"]]
    assert {n for _, n in out["after"]} == {out["cores"]}


def test_airflow_dags_test_runs_one_task_at_a_time_so_each_task_keeps_every_core(monkeypatch):
    """`p13n run --in-process` runs train and next_basket one after the other: each gets all cores;
    the scheduler's executor runs them side by side, each with its share."""
    from p13n.orchestration import dags_test_env, share_cores

    cores = os.cpu_count() or 1
    with share_cores(2) as share:
        assert share == max(1, cores // min(2, cores))
    monkeypatch.setenv("P13N__AIRFLOW__PARALLELISM", dags_test_env({})["P13N__AIRFLOW__PARALLELISM"])
    with share_cores(2) as share:
        assert share == cores
