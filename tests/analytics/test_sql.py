"""The analysts' SQL of sql/: every file runs on DuckDB and on Spark SQL with the same result, on a
few inline rows whose answers are worked out by hand."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from p13n.analytics.sql import SqlError, files, render, run_duckdb, run_spark, source

pytestmark = pytest.mark.spark
DAY = dt.date(2024, 3, 1)
T = pd.Timestamp


def _tables(root: str) -> None:
    keys = [
        ("shopify_customer_id", "SH1", "A"),
        ("loyalty_id", "L2", "B"),
        ("email_hmac", "h3", "C"),
        ("shopify_customer_id", "SH3", "C"),
    ]
    data = {
        "gold/identity_keys": pd.DataFrame(keys, columns=["key_type", "key_value", "customer_id"]),
        # A: web in January, app in February; C: web in January; an unattributed order.
        "silver/shopify_orders": pd.DataFrame(
            {
                "order_id": ["1", "2", "3", "4"],
                "customer_id": ["SH1", "SH1", "SH3", "SH9"],
                "created_at": [
                    T("2024-01-05 10:00"),
                    T("2024-02-07 10:00"),
                    T("2024-01-20 09:00"),
                    T("2024-01-21"),
                ],
                "channel": ["web", "app", "web", "web"],
                "total_usd": [100.0, 50.0, 30.0, 9.0],
            }
        ),
        # B: in store in January (Square, by loyalty id) and March (legacy POS, two lines on one receipt).
        "silver/square_transactions": pd.DataFrame(
            {
                "transaction_id": ["S1"],
                "created_at": [T("2024-01-02 12:00")],
                "loyalty_id": ["L2"],
                "total": [20.0],
                "customer_email_hmac": pd.Series([None], dtype="string"),
            }
        ),
        "silver/legacy_pos_sales": pd.DataFrame(
            {
                "receipt_no": ["R1", "R1"],
                "sold_at": [T("2024-03-02 11:00"), T("2024-03-02 11:00")],
                "loyalty_id": ["L2", "L2"],
                "amount": [5.0, 7.0],
                "sku": ["K1", "K2"],
                "quantity": [1, 2],
            }
        ),
        "silver/shopify_order_lines": pd.DataFrame(
            {"order_id": ["1", "2", "3"], "sku": ["K1", "K9", "K2"], "quantity": [1, 1, 1]}
        ),
        "silver/square_line_items": pd.DataFrame({"transaction_id": ["S1"], "sku": ["K3"], "quantity": [1]}),
        "gold/segments": pd.DataFrame(
            {
                "customer_id": ["A", "B", "C", "A"],
                "as_of_date": [DAY, DAY, DAY, DAY - dt.timedelta(days=1)],
                "persona": ["p1", "p1", None, "p1"],
                "lifecycle_stage": ["active", "active", "new", "new"],
                "rfm_segment": ["x"] * 4,
                "r_score": [1] * 4,
                "f_score": [1] * 4,
                "m_score": [1] * 4,
                "clv_12m": [100.0, 50.0, 10.0, 90.0],
            }
        ),
        "gold/clv": pd.DataFrame(
            {
                "customer_id": ["A", "B", "C"],
                "as_of_date": [DAY] * 3,
                "clv_12m": [100.0, 50.0, 10.0],
                "probability_alive": [0.9, 0.8, 0.5],
                "expected_purchases_365d": [4.0, 2.0, 1.0],
            }
        ),
        "gold/churn_scores": pd.DataFrame(
            {
                "customer_id": ["A", "B"],
                "as_of_date": [DAY] * 2,
                "churn_probability": [0.1, 0.3],
                "risk_band": ["low", "medium"],
            }
        ),
        "gold/customer_features": pd.DataFrame(
            {
                "customer_id": ["A", "B", "C"],
                "as_of_date": [DAY] * 3,
                "orders_total": [2, 2, 1],
                "revenue_total": [150.0, 32.0, 30.0],
                "orders_365d": [2, 2, 1],
                "revenue_365d": [150.0, 32.0, 30.0],
                "avg_order_value": [75.0, 16.0, 30.0],
                "first_purchase_at": [T("2024-01-05")] * 3,
                "last_purchase_at": [T("2024-02-07")] * 3,
                "recency_days": [23, 1, 41],
                "share_web": [0.5, 0, 1],
                "share_app": [0.5, 0, 0],
                "share_store": [0, 1, 0],
                "top_category": ["c"] * 3,
                "top_brand": ["b"] * 3,
                "loyalty_tier": [None, "gold", None],
                "loyalty_points": [None, 120, None],
            }
        ),
        "gold/customer_profiles": pd.DataFrame(
            {
                "customer_id": ["A", "B", "C"],
                "first_seen_at": [T("2023-01-01")] * 3,
                "last_seen_at": [T("2024-03-01")] * 3,
                "sources": ["shopify"] * 3,
                "city": ["X"] * 3,
                "state": ["NY"] * 3,
                "household_id": ["h"] * 3,
                "consent_email": ["granted"] * 3,
                "consent_sms": ["revoked"] * 3,
                "consent_push": ["unknown"] * 3,
                "consent_personalization": ["granted"] * 3,
            }
        ),
        # Recommended on DAY: A bought K9 within 30 days? No (before); B bought K1 (legacy, Mar 2): a hit.
        "gold/recommendations": pd.DataFrame(
            {
                "customer_id": ["A", "B", "B"],
                "as_of_date": [DAY] * 3,
                "list_type": ["personalized"] * 3,
                "source": ["als"] * 3,
                "sku": ["K9", "K1", "K5"],
                "rank": [1, 1, 2],
            }
        ),
    }
    # A and B were sent the vip audience, C held out; each bought within 14 days of entering.
    data["silver/sends"] = pd.DataFrame(
        {
            "program_type": ["audience"] * 3,
            "program": ["vip"] * 3,
            "destination": ["klaviyo"] * 3,
            "channel": ["email"] * 3,
            "customer_id": ["A", "B", "C"],
            "status": ["sent", "sent", "held_out"],
            "cost": [0.5, 0.5, 0.0],
            "sent_at": [T("2024-01-04", tz="UTC"), T("2024-02-28", tz="UTC"), T("2024-01-10", tz="UTC")],
            "send_date": [dt.date(2024, 1, 3), dt.date(2024, 2, 27), dt.date(2024, 1, 9)],
        }
    )
    # Campaign K1 reached A (opened and clicked, bought 2 days later) and someone the graph does not know.
    data["silver/klaviyo_events"] = pd.DataFrame(
        {
            "event_id": ["e1", "e2", "e3", "e4"],
            "email_hmac": ["hA", "hA", "hA", "hZ"],
            "metric": ["received", "opened", "clicked", "received"],
            "campaign_id": ["K1"] * 4,
            "occurred_at": [
                T("2024-01-03 08:00"),
                T("2024-01-03 09:00"),
                T("2024-01-03 09:05"),
                T("2024-01-03 08:00"),
            ],
        }
    )
    # Mailchimp's M1 went to B and bounced; B bought in store the next day all the same.
    data["silver/mailchimp_activity"] = pd.DataFrame(
        {
            "activity_id": ["m1", "m2"],
            "email_hmac": ["hB", "hB"],
            "action": ["sent", "bounce"],
            "campaign_id": ["M1", "M1"],
            "occurred_at": [T("2024-01-01 08:00"), T("2024-01-01 08:01")],
        }
    )
    data["gold/identity_keys"] = pd.concat(
        [
            data["gold/identity_keys"],
            pd.DataFrame(
                [("email_hmac", "hA", "A"), ("email_hmac", "hB", "B")],
                columns=["key_type", "key_value", "customer_id"],
            ),
        ]
    )
    for path, frame in data.items():
        write_deltalake(f"{root}/{path}", frame)
    from p13n.config import get_settings
    from p13n.measurement import experiments, simulate

    units = simulate.units(2000, seed=3, lift=0.2, experiment="audience:vip")
    results = experiments.results(get_settings(), experiments.arm_sums(units), DAY)
    write_deltalake(
        f"{root}/gold/experiment_results",
        pa.Table.from_pandas(
            results.astype({"note": "string"}), schema=experiments.result_schema(), preserve_index=False
        ),
    )


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sql") / "lake")
    _tables(root)
    return root


def _settings(root: str, tmp_path):
    from p13n.config import load_settings

    return load_settings("test", environ={"P13N_DATA_DIR": str(tmp_path), "P13N__LAKE__ROOT": root})


def _norm(frame: pd.DataFrame) -> list[tuple]:
    out = frame.copy()
    for c in out.columns:
        if out[c].dtype.kind in "Mm" or out[c].map(lambda v: isinstance(v, dt.date | dt.datetime)).any():
            out[c] = pd.to_datetime(out[c]).dt.strftime("%Y-%m-%d %H:%M:%S")
    out = out.astype(object).where(out.notna(), None)
    rows = [tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in out.itertuples(index=False)]
    return sorted(rows, key=repr)


def test_every_file_gives_the_same_rows_on_duckdb_and_spark(lake_root, spark, tmp_path):
    from p13n.lake import Lake

    settings = _settings(lake_root, tmp_path)
    lake = Lake(spark, settings.lake, lake_root)
    assert len(files()) == 10
    for name in files():
        _, text = source(name)
        duck = run_duckdb(settings, text)
        sparked = run_spark(lake, text).toPandas()
        assert list(duck.columns) == list(sparked.columns), name
        assert len(duck) > 0, name
        assert _norm(duck) == _norm(sparked), name


def test_the_marts_answer_what_the_rows_say(lake_root, tmp_path):
    settings = _settings(lake_root, tmp_path)
    orders = run_duckdb(settings, source("orders")[1]).sort_values("order_id")
    assert list(orders["order_id"]) == ["legacy:R1", "shopify:1", "shopify:2", "shopify:3", "square:S1"]
    assert orders.set_index("order_id").loc["legacy:R1", "revenue_usd"] == 12.0  # two lines, one receipt
    clv = run_duckdb(settings, source("clv_by_acquisition_channel")[1]).set_index("acquisition_channel")
    assert clv["customers"].to_dict() == {"web": 2, "store": 1}  # A and C online first, B in store
    assert clv.loc["web", "avg_clv_12m"] == 55.0
    cohorts = run_duckdb(settings, source("cohort_retention")[1])
    got = {
        (str(r.cohort_month)[:7], r.months_since_first): (r.cohort_customers, r.active_customers)
        for r in cohorts.itertuples()
    }
    # January: A, B, C; A again in February, B again in March.
    assert got == {("2024-01", 0): (3, 3), ("2024-01", 1): (3, 1), ("2024-01", 2): (3, 1)}
    assert cohorts["partial_period"].all()  # January is the lake's first month, March its last
    recs = run_duckdb(settings, source("recommendation_performance")[1]).iloc[0]
    assert (recs["customers"], recs["customers_who_bought"], recs["hit_rate_30d"]) == (2, 1, 0.5)
    campaigns = run_duckdb(settings, source("campaign_performance")[1]).iloc[0]
    assert (campaigns["sent"], campaigns["held_out"], campaigns["sent_conversion"]) == (2, 1, 1.0)
    assert (campaigns["sent_revenue_per_customer"], campaigns["held_out_revenue_per_customer"]) == (
        56.0,
        30.0,
    )
    assert campaigns["incremental_revenue"] == 52.0 and not campaigns["window_complete"]
    assert (campaigns["cost"], campaigns["roi"]) == (1.0, 52.0)
    mails = run_duckdb(settings, source("email_campaigns")[1]).set_index("campaign_id")
    k1, m1 = mails.loc["K1"], mails.loc["M1"]
    assert (k1["sends"], k1["deliveries"], k1["unique_opens"], k1["unique_clicks"]) == (2, 2, 1, 1)
    assert (k1["converted_recipients"], k1["revenue_7d"], k1["conversion_rate_7d"]) == (1, 100.0, 0.5)
    assert (m1["sends"], m1["deliveries"], m1["converted_recipients"], m1["revenue_7d"]) == (1, 0, 1, 20.0)
    lifts = run_duckdb(settings, source("experiment_results")[1]).set_index("metric")
    assert set(lifts.index) == {"conversion", "orders", "revenue", "aov"}
    assert lifts.loc["revenue", "verdict"] in ("better", "inconclusive")
    seg = run_duckdb(settings, source("segment_performance")[1])
    moved = seg[(seg["as_of_date"] == pd.Timestamp(DAY)) & (seg["lifecycle_stage"] == "active")]
    assert int(moved["moved_in"].iloc[0]) == 1  # A: new the day before, active now


def test_references_are_checked():
    with pytest.raises(SqlError, match="no sql/nope.sql"):
        render("SELECT * FROM {{ nope }}", str)
    with pytest.raises(SqlError, match="no SQL file 'missing'"):
        source("missing")


def test_analysts_sql_reads_only_the_lake_tables_it_names(lake_root, tmp_path):
    settings = _settings(lake_root, tmp_path)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pii.key").write_text("k")
    assert len(run_duckdb(settings, "SELECT * FROM {{ gold.segments }}")) > 0
    for query in (
        "SELECT * FROM read_text('/etc/passwd')",
        f"SELECT * FROM read_text('{tmp_path}/secrets/pii.key')",
        "COPY (SELECT 1) TO '/tmp/p13n-sql-out.csv'",
        f"ATTACH '{tmp_path}/w.db'",
        f"SELECT * FROM {{{{ gold.segments }}}}, delta_scan('{lake_root}/silver/shopify_orders')",
        "SELECT 1; SET enable_external_access = true",
        "INSTALL httpfs",
    ):
        with pytest.raises(SqlError, match="not allowed|Error"):
            run_duckdb(settings, query)
    assert not Path("/tmp/p13n-sql-out.csv").exists()
    write_deltalake(
        f"{lake_root}/restricted/customer_profiles",
        pd.DataFrame({"customer_id": ["A"], "email": ["a@x.io"]}),
        mode="overwrite",
    )
    with pytest.raises(
        SqlError, match=r"restricted.customer_profiles: restricted zone .*privacy.sql_restricted_zones"
    ):
        run_duckdb(settings, "SELECT email FROM {{ restricted.customer_profiles }}")
    with pytest.raises(SqlError, match="ParserException"):
        run_duckdb(settings, "SELEC 1")
    granted = settings.model_copy(
        update={"privacy": settings.privacy.model_copy(update={"sql_restricted_zones": True})}
    )
    assert run_duckdb(granted, "SELECT email FROM {{ restricted.customer_profiles }}")["email"].tolist() == [
        "a@x.io"
    ]
