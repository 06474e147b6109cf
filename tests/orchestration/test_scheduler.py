"""The nightly as production runs it: Airflow's scheduler, DAG processor, triggerer and API server on
PostgreSQL, a LocalExecutor running every task in a process of its own, tasks as thin clients of a Spark
Connect server whose executors run on a Spark standalone cluster (a master and two workers from the
pyspark wheel, separate JVMs); one date triggered through the REST API and followed down the asset chain
to the report. Its tables must equal those of the in-process reference night on the classic local
driver (tests/orchestration/conftest.py): ingestion, identity, scoring and recommendations.

Slow (minutes) but the one test of the path production takes: asset-triggered runs have no logical
date, so every downstream DAG must get its date from the partition key the chain carries.
"""

from __future__ import annotations

import datetime as dt

import pytest
from reference_night import NIGHT, PII_KEY, table_digests

from p13n.generate.retail import generate
from p13n.services.kafka import EmbeddedBroker, free_port
from p13n.services.postgres import PostgresServer
from p13n.services.redis import RedisServer
from p13n.services.spark_cluster import SparkStandaloneCluster
from p13n.services.spark_connect import SparkConnectServer
from p13n.sources.catalog import load_catalog
from p13n.sources.simulate import load_warehouse, replay_topics
from p13n.spark import JVM_RETURN_IDLE_MEMORY

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.kafka]
DAY = NIGHT["start"].isoformat()


@pytest.mark.timeout(1500)  # about 6.5 minutes on 2 cores
def test_one_date_runs_down_the_asset_chain_under_the_scheduler(settings, tmp_path, scored_night):
    from p13n.alerts import read_alerts
    from p13n.lake.duck import duckdb_connection, scan
    from p13n.scheduler import (
        CHAIN,
        AirflowServices,
        client,
        services_env,
        slot_overruns,
        trigger_date,
        wait_for_dags,
        watch_chain,
    )

    s = settings.model_copy(update={"data_dir": tmp_path / "data"})
    catalog = load_catalog()
    generate(catalog, s.data_dir, **NIGHT)  # the reference night's day
    load_warehouse(s, catalog)
    ui_port = free_port()  # the Connect server's UI: what it holds cached
    with (
        PostgresServer(tmp_path / "pg") as pg,
        SparkStandaloneCluster(tmp_path / "cluster", workers=2, cores=1, memory="1g") as cluster,
        SparkConnectServer(
            on_cluster(s, cluster, ui_port), log_path=tmp_path / "spark-connect.log"
        ) as connect,
    ):
        broker = EmbeddedBroker().start()
        redis = RedisServer(tmp_path / "redis").start()
        replay_topics(s, catalog, broker.bootstrap)
        env = services_env(s, port=free_port())
        env.update(
            {
                "P13N_DATA_DIR": str(s.data_dir),
                "P13N_PII_KEY": PII_KEY,
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url,
                "P13N__SPARK__REMOTE": connect.url,
                "P13N_KAFKA_BOOTSTRAP": broker.bootstrap,
                "P13N__SERVING__REDIS_URL": redis.url,
                "P13N__ACTIVATION__WITHOUT_KEY": "csv",  # no platform keys here: their import files
                # A source failing for good: the run records and alerts it once, the chain goes on
                # (stores is no identity source); and a deadline ingestion cannot meet.
                "P13N_FAULTS": "ingest.stores:raise",
                "P13N__AIRFLOW__DEADLINES_MINUTES__INGEST_SOURCES": "1",
                # Tasks are thin clients waiting on Spark Connect most of the time: 4 at once on 2 cores.
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
            }
        )
        services = AirflowServices(env, tmp_path / "logs")
        try:
            services.start()
            api = client(env=env)
            wait_for_dags(api, CHAIN)
            since = dt.datetime.now(dt.UTC)
            trigger_date(api, "ingest_sources", DAY)
            lines: list[str] = []
            runs = watch_chain(
                api,
                DAY,
                since,
                timeout=1500,
                echo=lines.append,
                stop_on_failure=False,
                log_root=s.logs_dir / "airflow",
            )
            # The server shares cached frames between sessions and keeps them after a task's process
            # exits: the night's last reader of the activity released them.
            cached = _cached_frames(ui_port)
            jvms = _jvms(f"spark.connect.grpc.binding.port={connect.port}", str(tmp_path))
            # The same date again: a new run, never a duplicate-key error.
            again = trigger_date(api, "ingest_sources", DAY, unpause=False)
            tree = services.processes()
        finally:
            services.stop()
            redis.stop()
            broker.stop()
            pg.remove()
        leftovers = [p for p in tree if p.is_running() and p.status() != "zombie"]

    # No executor slot stays taken once its task is done: a supervisor slept its 5 s heartbeat interval
    # after one task in five. Under CI's load a slot can still take 2-3 s to free, never 5 s this often.
    overruns = slot_overruns(tmp_path / "logs" / "airflow-scheduler.log")
    slept = [v for v in overruns.values() if v >= 4.5]
    assert len(overruns) > 40 and len(slept) <= len(overruns) // 20, sorted(overruns.values())[-5:]

    states = {r.dag_id: r.state for r in runs}
    assert states == {**dict.fromkeys(CHAIN, "success"), "ingest_sources": "failed"}, "\n".join(lines[-60:])
    assert again["partition_key"] == DAY and again["dag_run_id"] != runs[0].run_id
    assert not leftovers, [p.cmdline() for p in leftovers]
    assert not [n for n in cached if "key_type" in n or "SortAggregate(key=[order_id" in n], cached
    # The server's and the executors' JVMs run with the options that give back the heap they grew
    # once idle (the JVM keeps it otherwise: 7.4 GB held idle after a 60M-row aggregation, 1.2 GB with),
    # and the server with glibc's arenas capped.
    driver = [(c, e) for c, e in jvms if "SparkConnectServer" in c]
    executors = [(c, e) for c, e in jvms if "CoarseGrainedExecutorBackend" in c]
    assert len(driver) == 1 and len(executors) >= 2, [c for c, _ in jvms]
    assert all(JVM_RETURN_IDLE_MEMORY in c for c, _ in driver + executors), [c for c, _ in jvms]
    assert driver[0][1].get("MALLOC_ARENA_MAX") == "2"

    root = s.lake_root
    con = duckdb_connection()
    ingest = dict(
        con.execute(
            f"SELECT source, status FROM {scan(root, 'ops.ingest_runs')} WHERE batch_date = ?",
            [dt.date.fromisoformat(DAY)],
        ).fetchall()
    )
    assert ingest["stores"] == "failed"
    assert sum(v == "ok" for v in ingest.values()) == len(catalog.sources) - 1
    # Every other source landed and reconciles (bronze = silver + quarantine), with its progress line.
    for name, status, bronze, silver, quarantined, failed_exp in con.execute(
        f"""SELECT source, status, bronze_rows, silver_rows, quarantined, expectations_failed
            FROM {scan(root, "ops.ingest_runs")} WHERE source <> 'stores'"""
    ).fetchall():
        assert status == "ok" and bronze == silver + quarantined and silver > 0 and failed_exp == 0, name
    assert sum(" read " in line and " silver " in line for line in lines) == len(catalog.sources) - 1
    assert (s.data_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()
    (error,) = con.execute(
        f"SELECT error FROM {scan(root, 'ops.ingest_runs')} WHERE source = 'stores'"
    ).fetchone()
    assert error == "FaultInjected: fault injected at ingest.stores (P13N_FAULTS)"
    assert any(
        line.endswith("stores: FAILED: FaultInjected: fault injected at ingest.stores (P13N_FAULTS)")
        for line in lines
    ), lines
    for table, column in (
        ("gold.customer_profiles", None),
        ("gold.segments", "as_of_date"),
        ("gold.recommendations", "as_of_date"),
    ):
        where = f" WHERE {column} = DATE '{DAY}'" if column else ""
        assert con.execute(f"SELECT count(*) FROM {scan(root, table)}{where}").fetchone()[0] > 0, table
    assert (s.data_dir / "reports" / DAY / "index.html").exists()
    commits = _history(root, "gold.segments")
    assert commits[0]["p13n.dag_id"] == "score_customers" and commits[0]["p13n.run_date"] == DAY
    (orders,) = _history(root, "silver.shopify_orders")[:1]
    assert (orders["p13n.dag_id"], orders["p13n.task_id"], orders["p13n.run_date"]) == (
        "ingest_sources",
        "ingest_shopify_orders",
        DAY,
    )

    # The same day through the scheduler, Spark Connect and the cluster's executors writes the tables of
    # the in-process reference night (classic local driver, `airflow dags test`), row for row.
    got = table_digests(root)
    # Not compared: ops.* (runs and timings) and gold.attribution, whose touchpoints include the push
    # notifications only this run ingests (the reference ingests the sources scoring needs).
    compared = {
        t: want
        for t, want in scored_night.digests.items()
        if t.split(".")[0] != "ops" and t != "gold.attribution"
    }
    assert {"silver.shopify_orders", "gold.customer_profiles", "gold.churn_scores", "gold.segments"} <= set(
        compared
    ) and {"gold.interactions", "gold.recommendations", "gold.item_similarity"} <= set(compared)
    differ = {t: (want, got.get(t)) for t, want in compared.items() if got.get(t) != want}
    assert not differ, differ

    alerts = read_alerts(s)
    failed = [a for a in alerts if a["kind"] == "task_failed"]
    assert [(a["dag_id"], a["task_id"]) for a in failed] == [("ingest_sources", "ingest_stores")]
    missed = [a for a in alerts if a["kind"] == "deadline_missed" and a["dag_id"] == "ingest_sources"]
    assert missed and all(a["run_id"] for a in missed), alerts  # the run it is about, named


def on_cluster(settings, cluster, ui_port: int | None = None):
    """The settings with Spark's master on the standalone cluster (the Connect server is its driver),
    with its UI on `ui_port` when given."""
    spark = {"master": cluster.url, "server_memory": "2g"}
    if ui_port:
        spark |= {"ui_enabled": True, "conf": {**settings.spark.conf, "spark.ui.port": str(ui_port)}}
    return settings.model_copy(update={"spark": settings.spark.model_copy(update=spark)})


def _jvms(server: str, cluster_dir: str) -> list[tuple[str, dict]]:
    """The command lines and environments of this test's JVMs: its Connect server's (`server` in its
    command line) and its cluster's (working directory under `cluster_dir`). Other tests may run JVMs."""
    import psutil

    out = []
    for p in psutil.process_iter(["name", "cmdline", "cwd", "environ"]):
        line = " ".join(p.info["cmdline"] or [])
        if p.info["name"] == "java" and (server in line or (p.info["cwd"] or "").startswith(cluster_dir)):
            out.append((line, p.info["environ"] or {}))
    return out


def _cached_frames(ui_port: int) -> list[str]:
    """The plans of the frames the Spark application holds cached, from its UI's REST API."""
    import json
    import urllib.request

    base = f"http://127.0.0.1:{ui_port}/api/v1/applications"
    with urllib.request.urlopen(base, timeout=30) as r:
        (app,) = json.load(r)
    with urllib.request.urlopen(f"{base}/{app['id']}/storage/rdd", timeout=30) as r:
        return [frame["name"] for frame in json.load(r)]


def _history(root: str, table: str) -> list[dict]:
    from deltalake import DeltaTable

    from p13n.lake.duck import table_uri

    return DeltaTable(table_uri(root, table)).history()
