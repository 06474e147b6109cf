"""Customer intelligence, recommendations and serving end to end: `airflow dags test score_customers`,
then `recommend_products`, then `publish_serving` into a real Redis, on a lake built from generated data with a year of purchase history (ingested and resolved in-process; `test_ingest_dag` covers the
ingestion DAG itself). Real Spark, Delta, the embedded Kafka broker, fakesnow, Great Expectations and
MLflow on SQLite throughout."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from p13n.customers.pipeline import INPUTS
from p13n.generate.retail import generate
from p13n.identity.pipeline import resolve_identities
from p13n.lake import Lake
from p13n.orchestration import airflow_env
from p13n.runner import ensure_airflow_db, run_dag
from p13n.services.kafka import EmbeddedBroker
from p13n.sources.catalog import load_catalog
from p13n.sources.ingest import ingest_batch
from p13n.sources.simulate import load_warehouse, replay_topics

pytestmark = [pytest.mark.airflow, pytest.mark.spark]
DAY = dt.date(2024, 3, 1)


@pytest.mark.timeout(1800)
def test_score_customers_and_recommend_products_dags_write_every_table(spark, settings, tmp_path, redis_url):
    s = settings.model_copy(update={"data_dir": tmp_path})
    catalog = load_catalog()
    generate(catalog, tmp_path, customers=500, days=1, seed=4, start=DAY, bad_rate=0.005, history_days=400)
    load_warehouse(s, catalog)
    lake = Lake(spark, s.lake, s.lake_root)
    needed = set(s.identity.sources) | {"wishlists", "inventory_snapshots"}
    needed |= {t.split(".", 1)[1] for t in INPUTS.values() if t.startswith("silver.")}
    broker = EmbeddedBroker().start()
    try:
        s = s.model_copy(
            update={"sources": s.sources.model_copy(update={"kafka_bootstrap": broker.bootstrap})}
        )
        replay_topics(s, catalog, broker.bootstrap)
        for name in sorted(needed):
            ingest_batch(lake, s, catalog, catalog[name], DAY, b"k")
    finally:
        broker.stop()
    resolve_identities(lake, s, DAY, b"k")
    env = airflow_env(s)
    log = tmp_path / "airflow.log"
    ensure_airflow_db(env, log)
    lines: list[str] = []
    ok, _ = run_dag("score_customers", DAY.isoformat(), env, log, echo=lines.append)
    assert ok, log.read_text()[-4000:]
    _check_customer_tables(lake, DAY, lines)

    # A rerun of the date leaves every table as it was (same rows, same model versions).
    before = {
        t: lake.read(t, where=[("as_of_date", "=", DAY)]).toPandas() for t in ("gold.segments", "gold.clv")
    }
    ok, _ = run_dag("score_customers", DAY.isoformat(), env, log, echo=lines.append)
    assert ok, log.read_text()[-4000:]
    for table, rows in before.items():
        again = lake.read(table, where=[("as_of_date", "=", DAY)]).toPandas()
        key = ["customer_id"]
        assert (
            again.sort_values(key).reset_index(drop=True).equals(rows.sort_values(key).reset_index(drop=True))
        ), table

    # A customer with an erasure on record is never scored (#10 writes these; here by hand).
    erased = sorted(r.customer_id for r in lake.read("gold.churn_scores").select("customer_id").collect())[0]
    lake.write(
        "ops.erasures",
        lake.spark.createDataFrame([(erased, "test")], "customer_id string, request_id string"),
    )
    ok, _ = run_dag("recommend_products", DAY.isoformat(), env, log, echo=lines.append)
    assert ok, log.read_text()[-4000:]
    _check_recommendation_tables(lake, DAY, lines, erased)
    for table in ("gold.recommendations", "gold.interactions"):
        assert lake.read(table).filter(f"customer_id = '{erased}'").count() == 0, table
    first = lake.read("gold.recommendations", where=[("as_of_date", "=", DAY)]).toPandas()
    ok, _ = run_dag("recommend_products", DAY.isoformat(), env, log, echo=lines.append)
    assert ok, log.read_text()[-4000:]
    again = lake.read("gold.recommendations", where=[("as_of_date", "=", DAY)]).toPandas()
    key = ["customer_id", "list_type", "rank"]
    assert again.sort_values(key).reset_index(drop=True).equals(first.sort_values(key).reset_index(drop=True))

    # Publishing: the date's real gold tables go to Redis through the publish DAG, which the DAGs above
    # cleared (their validations in ops.validations, their gates in ops.model_runs).
    _check_publish(lake, s, env, log, lines, redis_url, first, erased)

    # The next day's CLV model is judged against the champion the DAG promoted, in the same store.
    from p13n.customers.pipeline import read_activity, score_clv

    nxt = score_clv(lake, s, read_activity(lake), DAY + dt.timedelta(days=1), progress=lines.append)
    assert nxt.decision.champion_version == "1" and nxt.decision.version == "2"
    assert "champion's" in nxt.decision.reasons[0]
    assert (tmp_path / "mlflow" / "mlflow.db").exists()


def _check_publish(lake, s, env, log, lines, redis_url, recs, erased):
    import redis

    from p13n.serving.keys import Keys, decode_list
    from p13n.serving.publish import status

    env = {**env, "P13N__SERVING__REDIS_URL": redis_url}
    ok, _ = run_dag("publish_serving", DAY.isoformat(), env, log, echo=lines.append)
    assert ok, log.read_text()[-4000:]
    st = status(redis_url, s)
    live = st["versions"][0]
    assert (
        live["status"] == "live" and st["live"] == live["version"] and live["as_of_date"] == DAY.isoformat()
    )
    segments = lake.read("gold.segments", where=[("as_of_date", "=", DAY)]).toPandas()
    customers = (set(recs["customer_id"]) | set(segments["customer_id"])) - {erased}
    assert json.loads(live["keys"])["c"] == len(customers)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(s.serving.namespace)
    assert not r.exists(keys.customer(live["version"], erased))
    reasons = {k: tuple(json.loads(v)) for k, v in r.hgetall(keys.reasons(live["version"])).items()}
    who = recs[recs["list_type"] == "personalized"]["customer_id"].iloc[0]
    want = recs[(recs["customer_id"] == who) & (recs["list_type"] == "personalized")].sort_values("rank")
    got = decode_list(r.hget(keys.customer(live["version"], who), "personalized"), reasons, 50)
    assert [i["sku"] for i in got] == list(want["sku"])
    assert [i["reason"] for i in got] == [x or None for x in want["reason"]]
    assert any("published version" in line for line in lines)


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


def _check_recommendation_tables(lake, day, lines, erased):
    where = [("as_of_date", "=", day)]
    profiles = lake.read(
        "gold.customer_profiles", columns=["customer_id", "consent_personalization"]
    ).toPandas()
    profiles = profiles[profiles["customer_id"] != erased]
    recs = lake.read("gold.recommendations", where=where).toPandas()
    pers = recs[recs["list_type"] == "personalized"]
    # every customer gets a full personalized list; objectors only the non-personal popular list
    assert set(pers["customer_id"]) == set(profiles["customer_id"])
    assert (pers.groupby("customer_id").size() == 20).all()
    objectors = set(profiles.loc[profiles["consent_personalization"] == "revoked", "customer_id"])
    assert objectors and set(pers.loc[pers["customer_id"].isin(objectors), "source"]) == {"popular"}
    assert not set(recs.loc[recs["list_type"] != "personalized", "customer_id"]) & objectors
    assert {"als", "item_similarity", "buy_again"} <= set(pers["source"])
    assert set(recs["list_type"]) == {"personalized", "buy_again", "recently_viewed", "popular_in_segment"}
    assert recs["reason"].str.len().gt(0).all()
    restock = recs.loc[recs["source"] == "buy_again", "reason"]
    assert restock.str.match(r"Time to restock\? You buy this about every \d+ days").all()
    # non-repeatable items a customer bought are never recommended back to them
    products = lake.read("silver.products", columns=["sku", "repeatable"]).toPandas()
    inter = lake.read("gold.interactions", where=where).toPandas()
    bought = inter[inter["purchases"] > 0].merge(products, on="sku")
    once = bought.loc[~bought["repeatable"], ["customer_id", "sku"]]
    assert once.merge(pers, on=["customer_id", "sku"]).empty
    # out-of-stock items (nothing on hand at the web warehouse on the day) are never recommended
    inv = lake.read("silver.inventory_snapshots").toPandas()
    inv = inv[(inv["location_id"] == "DC-WEB") & (inv["snapshot_date"] == inv["snapshot_date"].max())]
    out = set(inv.loc[inv["on_hand"] == 0, "sku"])
    assert out and not out & set(recs["sku"])
    similar = lake.read("gold.item_similarity", where=where).toPandas()
    assert similar.groupby("sku").size().min() == 10 and set(similar["basis"]) == {"behaviour", "content"}
    assert len(lake.read("gold.bought_together", where=where).toPandas()) > 0
    assert "all" in set(lake.read("gold.trending", where=where).toPandas()["scope"])
    run = lake.read("ops.model_runs", where=where + [("model", "=", "recommend")]).collect()[0]
    metrics = json.loads(run.metrics)
    assert run.promoted and metrics["lift_over_popularity"] > 1.0
    assert any("recommendation outputs passed" in line for line in lines)
