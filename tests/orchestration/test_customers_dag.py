"""Customer intelligence, recommendations and serving end to end: `airflow dags test score_customers`,
then `recommend_products`, then `publish_serving` into a real Redis, on a lake built from generated data with
a year of purchase history (ingested and resolved in-process; `test_ingest_dag` covers the
ingestion DAG itself). Real Spark, Delta, the embedded Kafka broker, fakesnow, Great Expectations and
MLflow on SQLite throughout."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
from reference_night import DAY, PII_KEY

from p13n.lake import Lake
from p13n.orchestration import airflow_env
from p13n.runner import ensure_airflow_db, run_dag
from p13n.services.kafka import EmbeddedBroker
from p13n.sources.catalog import load_catalog
from p13n.sources.ingest import ingest_batch

pytestmark = [pytest.mark.airflow, pytest.mark.spark]


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    "rerun_scores", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["", "rerun"]
)
def test_score_customers_and_recommend_products_dags_write_every_table(
    spark, settings, tmp_path, redis_url, scored_night, rerun_scores
):
    """`rerun_scores` (make test-slow) also reruns score_customers and recommend_products and checks their
    tables unchanged, then forgets a customer after the whole run and scores the next day's CLV against
    the promoted champion (CI's time budget: together over five minutes on 2 cores; in CI
    `test_ingest` reruns ingestion, `tests/privacy` erases on a lake, `test_customer_models` gates a
    challenger against its champion)."""
    # A copy of the session's reference night (tests/orchestration/conftest.py: the day ingested and
    # resolved in-process, then score_customers and recommend_products through `airflow dags test`).
    # MLflow's artifact locations are absolute, so the copy's new runs log beside the reference's store.
    shutil.copytree(scored_night.settings.data_dir, tmp_path, dirs_exist_ok=True)
    s = settings.model_copy(update={"data_dir": tmp_path})
    catalog = load_catalog()
    lake = Lake(spark, s.lake, s.lake_root)
    env = airflow_env(s) | {"P13N_PII_KEY": PII_KEY}
    log = tmp_path / "airflow.log"
    ensure_airflow_db(env, log)
    _check_customer_tables(lake, DAY, scored_night.lines)
    lines: list[str] = []

    # A rerun of the date leaves every table as it was (same rows, same model versions).
    if rerun_scores:
        _check_rerun_of_scores(lake, env, log, lines)

    # A customer with an erasure on record is never recommended (#10 writes these; here by hand): the
    # date's recommendations again, after the erasure.
    erased = sorted(r.customer_id for r in lake.read("gold.churn_scores").select("customer_id").collect())[0]
    lake.write(
        "ops.erasures",
        lake.spark.createDataFrame([(erased, "test")], "customer_id string, request_id string"),
    )
    ok, _ = run_dag("recommend_products", DAY.isoformat(), env, log, echo=lines.append)
    assert ok, log.read_text()[-4000:]
    _check_recommendation_tables(lake, DAY, lines, erased)
    # Its four tasks read their inputs once: the first from the lake (after the erasure above), the
    # others from that copy, which the last one removes; next_basket kept its lists there for lists.
    origins = [line.rsplit("(", 1)[1] for line in lines if "recommendation inputs as of" in line]
    assert origins == ["read from the lake)", *["the run's copy)"] * 3], origins
    kept = [line for line in lines if "next-basket lists as of" in line]
    assert len(kept) == 1 and "no copy" not in kept[0], kept
    assert not list((s.data_dir / "cache" / "recommend").iterdir())
    for table in ("gold.recommendations", "gold.interactions"):
        assert lake.read(table).filter(f"customer_id = '{erased}'").count() == 0, table
    first = lake.read("gold.recommendations", where=[("as_of_date", "=", DAY)]).toPandas()
    if rerun_scores:
        ok, _ = run_dag("recommend_products", DAY.isoformat(), env, log, echo=lines.append)
        assert ok, log.read_text()[-4000:]
        again = lake.read("gold.recommendations", where=[("as_of_date", "=", DAY)]).toPandas()
        key = ["customer_id", "list_type", "rank"]
        assert (
            again.sort_values(key)
            .reset_index(drop=True)
            .equals(first.sort_values(key).reset_index(drop=True))
        )

    # Publishing: the date's real gold tables go to Redis through the publish DAG, which the DAGs above
    # cleared (their validations in ops.validations, their gates in ops.model_runs).
    _check_publish(lake, s, env, log, lines, redis_url, first, erased)

    # Raw contact data only in the restricted zones, after every DAG above.
    _check_no_pii_outside_restricted(s, redis_url, log)

    # The README's read-only commands answer on this lake, and its every table is in the catalog.
    _check_readme_commands(tmp_path)
    _check_catalog_matches_the_lake(s)
    assert (tmp_path / "mlflow" / "mlflow.db").exists()
    if not rerun_scores:
        return

    # Erasure after the full run: a published, exported, warehoused customer, forgotten everywhere.
    _check_forget(lake, s, catalog, redis_url, erased)

    # The next day's CLV model is judged against the champion the DAG promoted, in the same store.
    from p13n.customers.pipeline import read_activity, score_clv

    nxt = score_clv(lake, s, read_activity(lake), DAY + dt.timedelta(days=1), progress=lines.append)
    assert nxt.decision.champion_version == "1" and nxt.decision.version == "2"
    assert "champion's" in nxt.decision.reasons[0]


def _check_rerun_of_scores(lake, env, log, lines):
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


def _check_no_pii_outside_restricted(s, redis_url, log):
    """Every email address and phone number the sources sent (all of them are in `restricted.*`) is
    looked for in every other place the run wrote: silver, gold and ops tables, the logs, the Airflow
    metadata database (XCom), MLflow's store and artifacts, and Redis. `bronze` and `quarantine` keep
    the records as received: they are restricted zones like `restricted` (see SECURITY.md)."""
    import re
    from pathlib import Path

    import redis

    from p13n.lake.duck import duckdb_connection, scan
    from p13n.privacy.erasure import lake_tables

    con = duckdb_connection()
    root = s.lake_root
    parts = []
    for table in lake_tables(root):
        if table.startswith("restricted."):
            cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan(root, table)}").fetchall()}
            parts += [
                f"SELECT CAST({c} AS VARCHAR) AS v FROM {scan(root, table)}"
                for c in ("email", "phone")
                if c in cols
            ]
    con.execute(
        f"CREATE TEMP TABLE pii AS SELECT DISTINCT v FROM ({' UNION ALL '.join(parts)}) WHERE length(v) >= 6"
    )
    planted = {r[0] for r in con.execute("SELECT v FROM pii").fetchall()}
    assert len(planted) > 500
    for table in lake_tables(root):
        if table.split(".")[0] in ("restricted", "bronze", "quarantine"):
            continue
        for name, kind, *_ in con.execute(f"DESCRIBE SELECT * FROM {scan(root, table)}").fetchall():
            if kind == "VARCHAR":
                hits = con.execute(
                    f"SELECT count(*) FROM {scan(root, table)} WHERE {name} IN (SELECT v FROM pii)"
                ).fetchone()[0]
                assert hits == 0, f"{table}.{name} holds {hits} raw contact values"
    emails = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
    phones = re.compile(rb"\+?[0-9][0-9 ().-]{8,}[0-9]")

    def found(blob: bytes) -> set[str]:
        return {m.decode(errors="ignore") for m in emails.findall(blob) + phones.findall(blob)} & planted

    places = [log, s.airflow_home, s.data_dir / "mlflow", s.logs_dir]
    for place in places:
        for f in [place] if Path(place).is_file() else Path(place).rglob("*"):
            if Path(f).is_file():
                assert not found(Path(f).read_bytes()), f
    r = redis.Redis.from_url(redis_url)
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        blob = key + (
            b" ".join(k + b" " + v for k, v in r.hgetall(key).items())
            if kind == b"hash"
            else b" ".join(r.lrange(key, 0, -1))
            if kind == b"list"
            else (r.get(key) or b"")
            if kind == b"string"
            else b""
        )
        assert not found(blob), key


def _check_forget(lake, s, catalog, redis_url, erased):
    import os
    from pathlib import Path

    import redis
    from deltalake import DeltaTable
    from fakes.marketing import FakeKlaviyo, serve

    from p13n.activation.klaviyo import Klaviyo
    from p13n.activation.snowflake import sync_tables
    from p13n.activation.sync import sync
    from p13n.config import AudienceSettings
    from p13n.lake.duck import duckdb_connection, scan, table_uri
    from p13n.privacy.access import export_person
    from p13n.privacy.erasure import find_person, forget, lake_tables, match_sql
    from p13n.sources.systems import snowflake_connection
    from p13n.streaming.consumer import StreamConsumer
    from p13n.streaming.tasks import erased_filter

    os.environ["P13N_PII_KEY"] = "k"  # the key the lake above was pseudonymized with
    audiences = {"everyone": AudienceSettings(destinations={"klaviyo": {"list_id": "All"}})}
    fake = FakeKlaviyo("pk_t", job_polls=1)
    try:
        with serve(fake) as url:
            s = s.model_copy(
                update={
                    "activation": s.activation.model_copy(
                        update={
                            "audiences": audiences,
                            "klaviyo": s.activation.klaviyo.model_copy(
                                update={"host": url, "poll_seconds": 0.05}
                            ),
                        }
                    )
                }
            )
            client = Klaviyo(s, "pk_t")
            sync(s, "everyone", "klaviyo", DAY, client=client, progress=lambda _: None)
            sync_tables(s, DAY, progress=lambda _: None)
            con = duckdb_connection()
            who, email = con.execute(
                f"SELECT p.customer_id, r.email FROM {scan(s.lake_root, 'ops.export_state')} p "
                f"JOIN {scan(s.lake_root, 'restricted.customer_profiles')} r USING (customer_id) "
                f"WHERE p.status = 'member' AND p.customer_id != '{erased}' ORDER BY 1 LIMIT 1"
            ).fetchone()
            assert email in fake.profiles
            person = find_person(s, b"k", customer_id=who)
            shopify = sorted(person.keys["customer_id"])
            path, found = export_person(s, "access-1", customer_id=who, redis_url=redis_url)
            held = json.loads(path.read_text())
            assert held["customer_id"] == who and found["gold.customer_profiles"] == 1
            assert any(email in json.dumps(rows) for rows in held["tables"].values())

            audit = forget(
                s,
                "req-1",
                email=email,
                redis_url=redis_url,
                clients={"klaviyo": client},
                progress=lambda _: None,
            )
    finally:
        os.environ.pop("P13N_PII_KEY", None)
    assert audit["status"] == "completed" and audit["customer_id"] == who
    assert email not in json.dumps(audit, default=str)  # the audit names tables and counts, not the person
    # No trace in any table, in any version that can still be read, nor in any file of the lake.
    for table in lake_tables(s.lake_root):
        if table in ("ops.erasures", "ops.suppressions", "ops.privacy_audit"):
            continue
        assert match_sql(s, table, person) is None, table
    for table in json.loads(audit["lake"]):  # the tables changed: their older versions are gone
        latest = DeltaTable(table_uri(s.lake_root, table)).version()
        if latest > 0:
            with pytest.raises(Exception):  # noqa: B017, PT011 - whichever error delta-rs raises
                DeltaTable(table_uri(s.lake_root, table), version=latest - 1).to_pyarrow_table()
    leaks = [p for p in Path(s.lake_root).rglob("*") if p.is_file() and email.encode() in p.read_bytes()]
    assert not leaks, leaks[:5]
    assert json.loads(audit["lake"])["restricted.customer_profiles"] == 1
    # Redis: no key, field or value of the customer in any version.
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for key in r.scan_iter(count=1000):
        assert who not in key
        kind = r.type(key)
        if kind == "hash":
            assert who not in json.dumps(r.hgetall(key)), key
        elif kind == "list":
            assert who not in r.lrange(key, 0, -1), key
    # The platform deleted the profile; the warehouse has no row of the customer.
    assert fake.deleted == [email] and email not in fake.profiles and email not in fake.list_emails("All")
    with snowflake_connection(s, "P13N", "GOLD") as sf:
        cur = sf.cursor()
        for t in ("CUSTOMER_PROFILES", "SEGMENTS", "RECOMMENDATIONS"):
            cur.execute(f"SELECT count(*) FROM P13N.GOLD.{t} WHERE CUSTOMER_ID = %s", (who,))
            assert cur.fetchone()[0] == 0, t

    # Kept out: a replayed event of theirs is dropped by the stream consumer...
    os.environ["P13N_PII_KEY"] = "k"
    broker = EmbeddedBroker().start()
    try:
        from p13n.services.kafka import ensure_topics, produce_lines

        ensure_topics(broker.bootstrap, ["web-events"], partitions=1)
        event = {
            "event_id": "LATE1",
            "event_at": "2024-03-01T10:00:00Z",
            "event_type": "product_view",
            "session_id": "S1",
            "anonymous_id": "A1",
            "customer_id": shopify[0],
            "sku": "SKU-000001",
        }
        other = event | {"event_id": "LATE2", "customer_id": "SH99999999"}
        produce_lines(broker.bootstrap, "web-events", [json.dumps(event), json.dumps(other)])
        from p13n.streaming.consumer import reset_offsets

        # A new broker: the lake's stored offsets are past its end (the consumer refuses until reset).
        reset_offsets(s.lake_root, catalog["web_clickstream"], broker.bootstrap, "beginning")
        consumer = StreamConsumer(
            s.lake_root, [catalog["web_clickstream"]], broker.bootstrap, keep=erased_filter(s)
        )
        stats = consumer.catch_up()
        consumer.close()
        # ...and a re-delivered batch of theirs is suppressed from silver and bronze alike.
        ingest_batch(lake, s, catalog, catalog["shopify_customers"], DAY, b"k")
    finally:
        broker.stop()
        os.environ.pop("P13N_PII_KEY", None)
    assert (stats.events, stats.suppressed) == (1, 1)
    ids = {
        r[0]
        for r in con.execute(
            f"SELECT event_id FROM {scan(s.lake_root, 'bronze.web_clickstream')} WHERE event_id LIKE 'LATE%'"
        ).fetchall()
    }
    assert ids == {"LATE2"}
    for table in (
        "bronze.shopify_customers",
        "silver.shopify_customers",
        "restricted.shopify_customers",
        "quarantine.shopify_customers",
    ):
        assert match_sql(s, table, person) is None, table
    # ...and bronze's history lost the replayed rows with them (the version before the delete is gone).
    latest = DeltaTable(table_uri(s.lake_root, "bronze.shopify_customers")).version()
    with pytest.raises(Exception):  # noqa: B017, PT011 - whichever error delta-rs raises
        DeltaTable(table_uri(s.lake_root, "bronze.shopify_customers"), version=latest - 1).to_pyarrow_table()


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
    # (the reference night also ran recommend_products: its recipe's gate is the `recommend` row)
    runs = {r.model: r for r in lake.read("ops.model_runs", where=where).collect()}
    assert set(runs) == {"churn", "clv", "segments", "recommend"}
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
    # the next-basket model leads (a shopper's repeat items and their neighbours' come through it);
    # the explore lists fill what it leaves
    assert {"next_basket", "als", "item_similarity"} <= set(pers["source"])
    basket_reasons = pers.loc[pers["source"] == "next_basket", "reason"]
    assert basket_reasons.str.match(
        r"(You buy this (about every \d+ days|regularly)|Often in baskets like yours)$"
    ).all()
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


def _check_readme_commands(data_dir):
    """Every `p13n lake …` and `p13n sql …` command the README shows runs on a whole night's lake."""
    import os
    import shlex
    import subprocess
    import sys

    from test_readme import commands

    # The measurement marts read export_audiences' tables, which this night does not run:
    # tests/analytics/test_sql.py runs them on both engines.
    later = ("experiment_results", "campaign_performance")
    shown = [
        c
        for c in commands()
        if c.startswith(("p13n lake ", "p13n sql ")) and not c.endswith(("NAME", "sql", *later))
    ]
    assert len(shown) >= 5, shown
    env = {**os.environ, "P13N_DATA_DIR": str(data_dir)}
    for command in shown:
        argv = [a.replace("c360.parquet", str(data_dir / "c360.parquet")) for a in shlex.split(command)[1:]]
        out = subprocess.run(
            [sys.executable, "-m", "p13n.cli", *argv], env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0 and out.stdout.strip(), f"{command}: {out.stderr[-1500:]}"


def _check_catalog_matches_the_lake(settings):
    """Every table a night wrote is in `p13n.lake.tables` with the partition columns it really has."""
    from p13n.lake import duck
    from p13n.lake.tables import table

    written = duck.list_tables(settings)
    assert len(written) > 40
    wrong = {}
    for name in written:
        actual = duck.describe(settings, name)["partition_by"]
        if table(name).partition_columns != actual:  # table() raises for a table not in the catalog
            wrong[name] = (table(name).partition_columns, actual)
    assert wrong == {}
