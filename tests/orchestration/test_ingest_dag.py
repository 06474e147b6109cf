"""End to end through Airflow: `airflow dags test ingest_sources` lands all 32 sources on generated data.

Real components throughout: Spark and Delta, the embedded Kafka-compatible broker for the two event
topics, fakesnow for the warehouse table, Great Expectations for the silver suites.
"""

from __future__ import annotations

import datetime as dt

import pytest

from p13n.generate.retail import generate
from p13n.lake import Lake
from p13n.orchestration import airflow_env
from p13n.runner import ensure_airflow_db, run_dag
from p13n.services.kafka import EmbeddedBroker
from p13n.sources.catalog import load_catalog
from p13n.sources.simulate import load_warehouse, replay_topics

# In `make test-slow`: test_scheduler ingests every source through Airflow's scheduler in the default
# suite, with the same checks; this is the in-process (`airflow dags test`) path of `p13n run --in-process`.
pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.slow]
DAY = "2024-03-01"


def test_ingest_dag_lands_every_source(spark, settings, tmp_path):
    s = settings.model_copy(update={"data_dir": tmp_path})
    catalog = load_catalog()
    generate(
        catalog, tmp_path, customers=600, days=1, seed=3, start=dt.date.fromisoformat(DAY), bad_rate=0.01
    )
    load_warehouse(s, catalog)
    broker = EmbeddedBroker().start()
    try:
        replay_topics(s, catalog, broker.bootstrap)
        env = airflow_env(s)
        env["P13N_KAFKA_BOOTSTRAP"] = broker.bootstrap
        log = tmp_path / "airflow.log"
        ensure_airflow_db(env, log)
        lines: list[str] = []
        ok, _ = run_dag("ingest_sources", DAY, env, log, echo=lines.append)
    finally:
        broker.stop()
    assert ok, log.read_text()[-4000:]

    lake = Lake(spark, s.lake, s.lake_root)
    runs = {r.source: r for r in lake.read("ops.ingest_runs").collect()}
    assert set(runs) == set(catalog.names())
    for name, r in runs.items():
        assert r.status == "ok" and r.bronze_rows == r.silver_rows + r.quarantined, r
        assert r.silver_rows > 0 and r.expectations_failed == 0, r
        assert lake.read(f"silver.{name}").count() == r.silver_rows
    commit = lake.history("silver.shopify_orders")[0]
    assert (commit["p13n.dag_id"], commit["p13n.task_id"]) == ("ingest_sources", "ingest_shopify_orders")
    assert sum(" read " in line and " silver " in line for line in lines) == len(catalog.sources)
    assert (tmp_path / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()
