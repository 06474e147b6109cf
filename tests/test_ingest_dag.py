"""End to end through Airflow, one night on generated data with a year of purchase history:
`ingest_sources` lands all 32 sources, `resolve_identities` builds the customers, `score_customers`
computes features, churn, CLV, segments and send times.

Real components throughout: Spark and Delta, the embedded Kafka-compatible broker for the two event
topics, fakesnow for the warehouse table, Great Expectations for the suites, MLflow on SQLite.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from p13n.generate.retail import generate
from p13n.lake import Lake
from p13n.orchestration import airflow_env
from p13n.runner import ensure_airflow_db, run_dag
from p13n.services.kafka import EmbeddedBroker
from p13n.sources.catalog import load_catalog
from p13n.sources.simulate import load_warehouse, replay_topics

pytestmark = [pytest.mark.airflow, pytest.mark.spark]
DAY = "2024-03-01"


def test_nightly_dags_land_every_source_and_score_customers(spark, settings, tmp_path):
    s = settings.model_copy(update={"data_dir": tmp_path})
    catalog = load_catalog()
    generate(
        catalog, tmp_path, customers=600, days=1, seed=3, start=dt.date.fromisoformat(DAY), bad_rate=0.01,
        history_days=400,
    )  # fmt: skip
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
    for dag_id in ("resolve_identities", "score_customers"):
        ok, _ = run_dag(dag_id, DAY, env, log, echo=lines.append)
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

    _check_customer_tables(lake, dt.date.fromisoformat(DAY), lines)


def _check_customer_tables(lake, day, lines):
    profiles = lake.read("gold.customer_profiles").count()
    where = [("as_of_date", "=", day)]
    features = lake.read("gold.customer_features", where=where).toPandas()
    assert len(features) == profiles and features["customer_id"].is_unique
    buyers = features[features["orders_total"] > 0]
    assert len(buyers) > 0.6 * len(features)  # a year of history: most known customers bought
    assert (buyers["last_purchase_at"] < "2024-03-02").all()  # nothing after the as-of day
    churn = lake.read("gold.churn_scores", where=where).toPandas()
    assert set(churn["customer_id"]) == set(buyers["customer_id"])
    assert churn["churn_probability"].between(0, 1).all() and set(churn["risk_band"]) <= {
        "low",
        "medium",
        "high",
    }
    clv = lake.read("gold.clv", where=where).toPandas()
    assert (
        len(clv) == len(buyers)
        and (clv["clv_12m"] >= 0).all()
        and clv["probability_alive"].between(0, 1).all()
    )
    segments = lake.read("gold.segments", where=where).toPandas()
    assert len(segments) == profiles
    assert set(segments["lifecycle_stage"]) >= {"active", "lapsed", "prospect"}
    assert (segments.loc[segments["cluster"] == -1, "rfm_segment"] == "Prospect").all()
    send = lake.read("gold.send_times", where=where).toPandas()
    assert len(send) == profiles and send["best_hour"].between(0, 23).all()
    runs = {r.model: r for r in lake.read("ops.model_runs", where=where).collect()}
    assert set(runs) == {"churn", "clv", "segments"}
    assert all(r.promoted and r.version == "1" for r in runs.values())  # first models: champions
    assert json.loads(runs["churn"].metrics)["roc_auc"] > 0.6
    assert any("customer outputs passed" in line for line in lines)
