"""Customer features on a handful of inline rows: attribution through the identity keys, exact values,
and point-in-time correctness (nothing after the as-of day counts)."""

from __future__ import annotations

import datetime as dt
import random
from types import SimpleNamespace

import pytest
from pyspark.sql import functions as F

from p13n.customers import activity as act
from p13n.customers import features_duckdb as duck
from p13n.customers.features import affinities, build_features

pytestmark = pytest.mark.spark
AS_OF = dt.date(2024, 3, 1)


def ts(day: str, hour: int = 12) -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00")


@pytest.fixture
def keys(spark):
    rows = [
        ("shopify_customer_id", "SH1", "C1"),
        ("email_hmac", "e2", "C2"),
        ("loyalty_id", "L1", "C1"),
        ("phone_hmac", "p2", "C2"),
    ]
    return spark.createDataFrame(rows, "key_type string, key_value string, customer_id string")


def test_attribute_takes_the_first_key_that_matches(spark, keys):
    rows = spark.createDataFrame(
        [("o1", "SH1", "e2"), ("o2", None, "e2"), ("o3", "SH9", "zz"), ("o4", None, None)],
        "order_id string, customer_id string, email_hmac string",
    )
    out = act.attribute(rows, keys, [("shopify_customer_id", "customer_id"), ("email_hmac", "email_hmac")])
    got = {r.order_id: r.customer_id for r in out.collect()}
    assert got == {"o1": "C1", "o2": "C2", "o3": None, "o4": None}
    assert "_platform_customer_id" not in out.columns


def test_push_engagement_belongs_to_the_devices_owner(spark, keys):
    app = spark.createDataFrame(
        [
            ("D1", "SH1", None),
            ("D1", "SH1", None),
            ("D1", None, "e2"),  # a shared device: C1 used it more
            ("D2", None, "e2"),
            ("D3", None, None),  # never identified
        ],
        "device_id string, app_user_id string, email_hmac string",
    )
    push = spark.createDataFrame(
        [
            ("P1", "D1", "sent", ts("2024-02-01", 18)),
            ("P1", "D1", "opened", ts("2024-02-01", 19)),
            ("P2", "D2", "sent", ts("2024-02-02", 18)),
            ("P3", "D3", "sent", ts("2024-02-03", 18)),
        ],
        "push_id string, device_id string, event string, occurred_at timestamp",
    )
    got = sorted((r.customer_id, r.event, r.channel) for r in act.push_events(keys, push, app).collect())
    assert got == [("C1", "open", "push"), ("C1", "sent", "push"), ("C2", "sent", "push")]


def test_a_web_visit_from_a_campaign_is_that_campaigns_touch(spark, keys):
    from p13n.measurement.attribution import touchpoints

    web = spark.createDataFrame(
        [
            ("E1", ts("2024-02-01", 9), "SH1", "/p/S1?utm_source=google&utm_medium=CPC&utm_campaign=x"),
            ("E2", ts("2024-02-02", 9), "SH1", "/p/S2?utm_medium=paid_social"),
            ("E3", ts("2024-02-03", 9), "SH1", "/p/S3"),
            ("E4", ts("2024-02-04", 9), "SH1", "/p/S4?utm_medium=newsletter-footer"),  # unknown: organic
        ],
        "event_id string, event_at timestamp, customer_id string, page_url string",
    ).withColumns({"event_type": F.lit("product_view"), "sku": F.lit("S1")})
    app = spark.createDataFrame(
        [("A1", ts("2024-02-05", 9), "SH1", None)],
        "event_id string, event_at timestamp, app_user_id string, email_hmac string",
    ).withColumns({"event_type": F.lit("app_open"), "sku": F.lit(None).cast("string")})
    events = act.behaviour_events(keys, web, app)
    assert sorted((r.channel, r.campaign_channel or "-") for r in events.collect()) == [
        ("app", "-"),
        ("web", "-"),
        ("web", "-"),
        ("web", "paid_search"),
        ("web", "paid_social"),
    ]
    messages = spark.createDataFrame([], "customer_id string, at timestamp, channel string, event string")
    got = sorted(r.channel for r in touchpoints(events, messages).collect())
    assert got == ["app", "paid_search", "paid_social", "web", "web"]


def test_a_session_landing_from_a_campaign_is_that_campaigns_touch_throughout(spark, keys):
    """The landing page's campaign is the whole session's, even when the landing was anonymous:
    the visit is one paid touch, not a paid touch followed by an organic one."""
    from p13n.measurement.attribution import touchpoints

    web = spark.createDataFrame(
        [
            ("E1", ts("2024-02-01", 9), "S1", None, "/p/S1?utm_medium=cpc"),  # anonymous landing
            ("E2", ts("2024-02-01", 10), "S1", "SH1", "/p/S2"),
            ("E3", ts("2024-02-01", 11), "S1", "SH1", "/checkout"),
            ("E4", ts("2024-02-01", 12), "S2", "SH1", "/p/S3"),  # a later organic session that day
            ("E5", ts("2024-02-02", 9), None, "SH1", "/p/S4?utm_medium=display"),  # no session id
            ("E6", ts("2024-02-02", 10), None, "SH1", "/p/S4"),
        ],
        "event_id string, event_at timestamp, session_id string, customer_id string, page_url string",
    ).withColumns({"event_type": F.lit("product_view"), "sku": F.lit("S1")})
    app = spark.createDataFrame(
        [], "event_id string, event_at timestamp, app_user_id string, email_hmac string"
    ).withColumns({"event_type": F.lit("app_open"), "sku": F.lit(None).cast("string")})
    events = act.behaviour_events(keys, web, app).filter("customer_id IS NOT NULL")
    got = sorted((r.at.hour, r.campaign_channel or "-") for r in events.collect())
    assert got == [(9, "display"), (10, "-"), (10, "paid_search"), (11, "paid_search"), (12, "-")]
    messages = spark.createDataFrame([], "customer_id string, at timestamp, channel string, event string")
    touches = sorted((str(r.at), r.channel) for r in touchpoints(events, messages).collect())
    assert touches == [
        ("2024-02-01 10:00:00", "paid_search"),
        ("2024-02-01 12:00:00", "web"),
        ("2024-02-02 09:00:00", "display"),
        ("2024-02-02 10:00:00", "web"),
    ]


def _lines(spark, rows):
    schema = ", ".join(
        f"{c} {t}"
        for c, t in zip(
            act.LINES,
            [
                "string",
                "string",
                "string",
                "timestamp",
                "string",
                "string",
                "string",
                "string",
                "int",
                "double",
            ],
            strict=True,
        )
    )
    return spark.createDataFrame(rows, schema)


def _on(engine, customers, lines, events, messages, returns, loyalty, as_of):
    """Features and affinities as dicts (None for a missing value) from the Spark or DuckDB engine."""
    if engine == "spark":
        feats = build_features(customers, lines, events, messages, returns, loyalty, as_of)
        return [r.asDict() for r in feats.collect()], [r.asDict() for r in affinities(lines, as_of).collect()]
    frames = dict(customers=customers, lines=lines, events=events, messages=messages, returns=returns)
    local = duck.LocalActivity(loyalty=loyalty.toArrow(), **{k: v.toArrow() for k, v in frames.items()})
    return duck.build_features(local, as_of).to_pylist(), duck.affinities(local, as_of).to_pylist()


@pytest.mark.parametrize("engine", ["spark", "duckdb"])
def test_features_are_exact_and_point_in_time(spark, engine):
    lines = _lines(
        spark,
        [
            # C1: three orders, one in store, the last after the as-of day (must not count)
            ("o1", "o1", "C1", ts("2023-12-01"), "web", "S1", "grocery", "B1", 2, 30.0),
            ("o1", "o1", "C1", ts("2023-12-01"), "web", "S2", "toys", "B2", 1, 10.0),
            ("o2", "o2", "C1", ts("2024-02-20"), "store", "S1", "grocery", "B1", 1, 20.0),
            ("o3", "o3", "C1", ts("2024-03-02", 1), "app", "S3", "toys", "B2", 1, 99.0),
            # C2: one order long ago
            ("o4", "o4", "C2", ts("2022-06-01"), "app", "S3", "toys", "B2", 1, 50.0),
        ],
    )
    customers = spark.createDataFrame(
        [
            ("C1", ts("2023-11-01")),
            ("C2", ts("2022-05-01")),
            ("C3", ts("2024-02-01")),
            ("C4", ts("2024-03-05")),
        ],
        "customer_id string, first_seen_at timestamp",
    )
    events = spark.createDataFrame(
        [
            ("C1", ts("2024-02-25"), "web", "product_view", "S1", None),
            ("C1", ts("2024-03-03"), "app", "product_view", "S1", None),
        ],
        ", ".join(
            f"{c} {t}"
            for c, t in zip(
                act.EVENTS, ["string", "timestamp", "string", "string", "string", "string"], strict=True
            )
        ),
    )
    messages = spark.createDataFrame(
        [
            ("C1", ts("2024-02-10"), "email", "sent"),
            ("C1", ts("2024-02-10", 20), "email", "open"),
            ("C1", ts("2024-02-13"), "email", "sent"),
            ("C1", ts("2023-10-01"), "email", "sent"),
        ],
        "customer_id string, at timestamp, channel string, event string",
    )
    returns = spark.createDataFrame(
        [("C1", ts("2024-02-22"), "o2", "S1", 1)],
        "customer_id string, returned_at timestamp, source_order_id string, sku string, quantity int",
    )
    loyalty = spark.createDataFrame(
        [("C1", "gold", 120)], "customer_id string, loyalty_tier string, loyalty_points int"
    )
    feats, affs = _on(engine, customers, lines, events, messages, returns, loyalty, AS_OF)
    out = {r["customer_id"]: SimpleNamespace(**r) for r in feats}
    assert sorted(out) == ["C1", "C2", "C3"]  # C4 was not known yet
    c1 = out["C1"]
    assert (c1.orders_total, c1.revenue_total, c1.orders_90d, c1.revenue_90d) == (2, 60.0, 1, 20.0)
    assert (c1.recency_days, c1.tenure_days, c1.purchase_days) == (
        10,
        91,
        2,
    )  # whole days to the end of AS_OF
    assert (c1.avg_order_value, c1.cadence_days, c1.previous_gap_days) == (30.0, 81.0, 81)
    assert (c1.share_web, c1.share_app, c1.share_store) == (0.5, 0.0, 0.5)
    assert (c1.top_category, c1.top_category_share, c1.top_brand) == ("grocery", 0.8333, "B1")
    assert (c1.email_sent_90d, c1.email_open_rate_90d, c1.returns_rate_365d) == (2, 0.5, 0.25)
    assert (c1.days_since_web, c1.days_since_app, c1.product_views_30d) == (5, None, 1)
    assert (c1.loyalty_tier, c1.loyalty_points) == ("gold", 120)
    c2 = out["C2"]
    assert (c2.orders_total, c2.orders_365d, c2.revenue_365d, c2.recency_days, c2.cadence_days) == (
        1,
        0,
        0.0,
        639,
        None,
    )
    c3 = out["C3"]
    assert (c3.orders_total, c3.revenue_total, c3.recency_days, c3.avg_order_value) == (0, 0.0, None, None)
    top = {(r["kind"], r["rank"]): (r["value"], r["share"]) for r in affs if r["customer_id"] == "C1"}
    assert top == {
        ("category", 1): ("grocery", 0.8333),
        ("category", 2): ("toys", 0.1667),
        ("brand", 1): ("B1", 0.8333),
        ("brand", 2): ("B2", 0.1667),
    }


def test_purchase_lines_share_the_order_total_and_attribute_every_system(spark, keys):
    orders = spark.createDataFrame(
        [
            ("W1", "SH1", None, ts("2024-02-01"), "web", "paid", 90.0),
            ("W2", "SH1", None, ts("2024-02-02"), "web", "voided", 5.0),
        ],
        "order_id string, customer_id string, email_hmac string, created_at timestamp, channel string, "
        "financial_status string, total_usd double",
    )
    olines = spark.createDataFrame(
        [("W1", "S1", 2, 25.0), ("W1", "S2", 1, 50.0), ("W2", "S1", 1, 5.0)],
        "order_id string, sku string, quantity int, unit_price double",
    )
    sq = spark.createDataFrame(
        [("Q1", None, None, "p2", ts("2024-02-03"), 40.0)],
        "transaction_id string, loyalty_id string, customer_email_hmac string, customer_phone_hmac string, "
        "created_at timestamp, total double",
    )
    sql_ = spark.createDataFrame(
        [("Q1", "S2", 1, 40.0)], "transaction_id string, sku string, quantity int, unit_price double"
    )
    legacy = spark.createDataFrame(
        [("R1", "L1", ts("2024-02-04"), "S1", 1, "12.50")],
        "receipt_no string, loyalty_id string, sold_at timestamp, sku string, quantity int, amount string",
    )
    products = spark.createDataFrame(
        [("S1", "grocery", "B1"), ("S2", "toys", "B2")], "sku string, category string, brand string"
    )
    got = sorted(
        (r.order_id, r.customer_id, r.sku, r.channel, r.category, r.amount_usd)
        for r in act.purchase_lines(keys, products, orders, olines, sq, sql_, legacy).collect()
    )
    assert got == [
        ("legacy:R1", "C1", "S1", "store", "grocery", 12.5),
        ("shopify:W1", "C1", "S1", "web", "grocery", 45.0),
        ("shopify:W1", "C1", "S2", "web", "toys", 45.0),
        ("square:Q1", "C2", "S2", "store", "toys", 40.0),
    ]


def test_churn_without_enough_history_names_its_training_cutoff(spark, settings, tmp_path):
    """A purchase history shorter than two churn horizons has no training set: the error says why."""
    import re

    from p13n.customers.pipeline import Activity, score_churn

    as_of = dt.date(2024, 3, 2)
    lines = _lines(spark, [("o1", "o1", "C1", ts("2024-02-20"), "web", "S1", "grocery", "B1", 1, 20.0)])
    empty = {
        "events": "customer_id string, at timestamp, channel string, event_type string, sku string, "
        "campaign_channel string",
        "messages": "customer_id string, at timestamp, channel string, event string",
        "returns": "customer_id string, returned_at timestamp, source_order_id string, sku string, "
        "quantity int",
        "loyalty": "customer_id string, loyalty_tier string, loyalty_points int",
    }
    activity = Activity(
        customers=spark.createDataFrame(
            [("C1", ts("2024-01-01"))], "customer_id string, first_seen_at timestamp"
        ),
        lines=lines,
        versions={},
        contents={},
        **{name: spark.createDataFrame([], schema) for name, schema in empty.items()},
    )
    cutoff = as_of - dt.timedelta(days=2 * settings.customers.churn_horizon_days)
    with pytest.raises(
        ValueError, match=re.escape(f"no customer had bought before {cutoff}, the training cutoff")
    ):
        score_churn(None, settings.model_copy(update={"data_dir": tmp_path}), activity, as_of, progress=print)


def test_duckdb_features_equal_spark_features_on_varied_rows(spark):
    """Seeded rows with what trips engines up (multi-line orders, equal spends, missing categories,
    amounts and shares that round on a half, a customer who only had free items, customers without
    purchases, activity after the day): the two engines give the same rows, value for value."""
    rnd = random.Random(7)
    cats, brands = ["grocery", "toys", None, "beauty"], ["B1", "B2", "B3", None]
    start = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
    when = lambda: start + dt.timedelta(seconds=rnd.randrange(0, 450 * 86400))  # noqa: E731
    rows = []
    for o in range(400):
        cust, at, channel = f"C{rnd.randrange(60)}", when(), rnd.choice(["web", "app", "store"])
        for n in range(rnd.randint(1, 3)):
            sku = f"S{rnd.randrange(8)}"
            # Binary fractions: sums are exact in any order, and halves (0.125 to cents) really are halves.
            amount = rnd.choice([10.0, 2.125, 0.125, 33.25, 7.5, rnd.randint(1, 1600) / 8])
            rows.append(
                (
                    f"o{o}-{n}",
                    f"o{o}",
                    cust,
                    at,
                    channel,
                    sku,
                    rnd.choice(cats),
                    rnd.choice(brands),
                    rnd.randint(1, 4),
                    amount,
                )
            )
    rows.append(("u1", "u1", None, when(), "web", "S1", "toys", "B1", 1, 9.0))  # not attributed
    rows.append(("z1", "z1", "C0", start, "web", "S1", "toys", "B1", 1, 0.0))  # free: no spend to share
    rows = [r if r[2] != "C0" else (*r[:9], 0.0) for r in rows]
    lines = _lines(spark, rows)
    customers = spark.createDataFrame(
        [(f"C{i}", when()) for i in range(70)], "customer_id string, first_seen_at timestamp"
    )
    events = spark.createDataFrame(
        [
            (
                f"C{rnd.randrange(70)}",
                when(),
                rnd.choice(["web", "app"]),
                rnd.choice(["product_view", "add_to_cart"]),
                "S1",
                None,
            )
            for _ in range(300)
        ],
        "customer_id string, at timestamp, channel string, event_type string, sku string, "
        "campaign_channel string",
    )
    messages = spark.createDataFrame(
        [
            (
                f"C{rnd.randrange(70)}",
                when(),
                rnd.choice(["email", "sms"]),
                rnd.choice(["sent", "open", "click"]),
            )
            for _ in range(600)
        ],
        "customer_id string, at timestamp, channel string, event string",
    )
    returns = spark.createDataFrame(
        [(f"C{rnd.randrange(60)}", when(), "o1", "S1", rnd.randint(1, 2)) for _ in range(40)],
        "customer_id string, returned_at timestamp, source_order_id string, sku string, quantity int",
    )
    loyalty = spark.createDataFrame(
        [(f"C{i}", rnd.choice(["gold", None]), i * 10) for i in range(0, 70, 3)],
        "customer_id string, loyalty_tier string, loyalty_points int",
    )
    for as_of in (dt.date(2023, 9, 30), dt.date(2024, 2, 29)):
        args = (customers, lines, events, messages, returns, loyalty, as_of)
        (sf, sa), (df, da) = _on("spark", *args), _on("duckdb", *args)
        assert len(sf) > 40 and len(sa) > 100
        assert [_key(r) for r in sorted(df, key=_key)] == [_key(r) for r in sorted(sf, key=_key)]
        assert _differences(df, sf) == [] and _differences(da, sa) == []


def _key(row: dict) -> tuple:
    return row["customer_id"], row.get("kind") or "", row.get("rank") or 0


def _differences(duckdb_rows: list[dict], spark_rows: list[dict]) -> list[tuple]:
    """(row key, column, DuckDB's value, Spark's) wherever the engines disagree."""
    pairs = zip(sorted(duckdb_rows, key=_key), sorted(spark_rows, key=_key), strict=True)
    return [
        (_key(a), c, a[c], b[c]) for a, b in map(lambda p: map(_naive, p), pairs) for c in b if a[c] != b[c]
    ]


def _naive(row: dict) -> dict:
    """Spark collects timestamps as naive UTC (the session's zone), Arrow as aware ones."""
    aware = lambda v: isinstance(v, dt.datetime) and v.tzinfo  # noqa: E731
    return {k: v.astimezone(dt.UTC).replace(tzinfo=None) if aware(v) else v for k, v in row.items()}
