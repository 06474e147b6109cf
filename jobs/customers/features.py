"""Customer features as of a date, point-in-time correct: only activity before the end of the as-of
day counts, so the same function builds today's features and the historical ones models train on.

Loyalty tier and points are the member table's current state (the source keeps no history); they
are features for marketers, and the churn model leaves them out for that reason.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

FEATURES = [
    "customer_id",
    "as_of_date",
    "first_purchase_at",
    "last_purchase_at",
    "recency_days",
    "tenure_days",
    "orders_total",
    "revenue_total",
    "orders_365d",
    "revenue_365d",
    "orders_90d",
    "revenue_90d",
    "purchase_days",
    "avg_order_value",
    "cadence_days",
    "previous_gap_days",
    "share_web",
    "share_app",
    "share_store",
    "top_category",
    "top_category_share",
    "top_brand",
    "top_brand_share",
    "email_sent_90d",
    "email_open_rate_90d",
    "email_click_rate_90d",
    "sms_sent_90d",
    "sms_click_rate_90d",
    "returns_rate_365d",
    "days_since_web",
    "days_since_app",
    "product_views_30d",
    "loyalty_tier",
    "loyalty_points",
]
AFFINITIES = ["customer_id", "as_of_date", "kind", "value", "share", "rank"]
DAY = 86400.0


def interval_end(as_of: dt.date) -> dt.datetime:
    """The exclusive end of the as-of day's data interval (midnight UTC after it)."""
    return dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), dt.UTC)


def _days_since(col: str, end: dt.datetime):
    return F.floor((F.lit(end.timestamp()) - F.unix_timestamp(F.col(col))) / DAY).cast("int")


def _before(df: DataFrame, col: str, end: dt.datetime, days: int | None = None) -> DataFrame:
    df = df.filter(F.col(col) < F.lit(end))
    return df.filter(F.col(col) >= F.lit(end - dt.timedelta(days=days))) if days else df


def orders_of(lines: DataFrame) -> DataFrame:
    """Purchase lines → one row per attributed order."""
    return (
        lines.filter(F.col("customer_id").isNotNull())
        .groupBy("order_id", "customer_id")
        .agg(
            F.min("ordered_at").alias("ordered_at"),
            F.first("channel").alias("channel"),
            F.sum("amount_usd").alias("amount_usd"),
            F.sum("quantity").alias("items"),
        )
    )


def build_features(
    customers: DataFrame,
    lines: DataFrame,
    events: DataFrame,
    messages: DataFrame,
    returns: DataFrame,
    loyalty: DataFrame,
    as_of: dt.date,
) -> DataFrame:
    """One row per customer known by the end of `as_of` (see FEATURES)."""
    end = interval_end(as_of)
    lines = _before(lines.filter(F.col("customer_id").isNotNull()), "ordered_at", end)
    orders = orders_of(lines).cache()
    o365 = F.col("ordered_at") >= F.lit(end - dt.timedelta(days=365))
    o90 = F.col("ordered_at") >= F.lit(end - dt.timedelta(days=90))
    purchases = orders.groupBy("customer_id").agg(
        F.min("ordered_at").alias("first_purchase_at"),
        F.max("ordered_at").alias("last_purchase_at"),
        F.count("*").alias("orders_total"),
        F.round(F.sum("amount_usd"), 2).alias("revenue_total"),
        F.count(F.when(o365, 1)).alias("orders_365d"),
        F.round(F.coalesce(F.sum(F.when(o365, F.col("amount_usd"))), F.lit(0.0)), 2).alias("revenue_365d"),
        F.count(F.when(o90, 1)).alias("orders_90d"),
        F.round(F.coalesce(F.sum(F.when(o90, F.col("amount_usd"))), F.lit(0.0)), 2).alias("revenue_90d"),
        F.countDistinct(F.to_date("ordered_at")).alias("purchase_days"),
        *[
            (F.count(F.when(F.col("channel") == c, 1)) / F.count("*")).alias(f"share_{c}")
            for c in ("web", "app", "store")
        ],
    )
    # The gap before the latest purchase day: a long one means the customer came back.
    days = orders.select("customer_id", F.to_date("ordered_at").alias("d")).distinct()
    gap = F.datediff("d", F.lag("d").over(Window.partitionBy("customer_id").orderBy("d")))
    latest = Window.partitionBy("customer_id").orderBy(F.desc("d"))
    previous_gap = (
        days.withColumn("gap", gap)
        .withColumn("_n", F.row_number().over(latest))
        .filter("_n = 1")
        .select("customer_id", F.col("gap").alias("previous_gap_days"))
    )
    affinity = _top_affinities(lines, end).filter("rank = 1")
    top = (
        affinity.groupBy("customer_id")
        .pivot("kind", ["category", "brand"])
        .agg(F.first("value").alias("v"), F.first("share").alias("s"))
        .select(
            "customer_id",
            F.col("category_v").alias("top_category"),
            F.col("category_s").alias("top_category_share"),
            F.col("brand_v").alias("top_brand"),
            F.col("brand_s").alias("top_brand_share"),
        )
    )
    m = _before(messages, "at", end, 90)
    sent = lambda ch: F.count(F.when((F.col("channel") == ch) & (F.col("event") == "sent"), 1))  # noqa: E731
    did = lambda ch, ev: F.count(F.when((F.col("channel") == ch) & (F.col("event") == ev), 1))  # noqa: E731
    engagement = m.groupBy("customer_id").agg(
        sent("email").alias("email_sent_90d"),
        (did("email", "open") / F.nullif(sent("email"), F.lit(0))).alias("email_open_rate_90d"),
        (did("email", "click") / F.nullif(sent("email"), F.lit(0))).alias("email_click_rate_90d"),
        sent("sms").alias("sms_sent_90d"),
        (did("sms", "click") / F.nullif(sent("sms"), F.lit(0))).alias("sms_click_rate_90d"),
    )
    e = _before(events, "at", end)
    behaviour = e.groupBy("customer_id").agg(
        F.max(F.when(F.col("channel") == "web", F.col("at"))).alias("_last_web"),
        F.max(F.when(F.col("channel") == "app", F.col("at"))).alias("_last_app"),
        F.count(
            F.when(
                (F.col("event_type") == "product_view") & (F.col("at") >= F.lit(end - dt.timedelta(days=30))),
                1,
            )
        ).alias("product_views_30d"),
    )
    bought = (
        _before(lines, "ordered_at", end, 365).groupBy("customer_id").agg(F.sum("quantity").alias("_items"))
    )
    returned = (
        _before(returns, "returned_at", end, 365)
        .groupBy("customer_id")
        .agg(F.sum("quantity").alias("_returned"))
    )
    known = customers.filter(F.col("first_seen_at") < F.lit(end)).select("customer_id")
    universe = known.unionByName(orders.select("customer_id")).distinct()
    out = (
        universe.join(purchases, on="customer_id", how="left")
        .join(previous_gap, on="customer_id", how="left")
        .join(top, on="customer_id", how="left")
        .join(engagement, on="customer_id", how="left")
        .join(behaviour, on="customer_id", how="left")
        .join(bought, on="customer_id", how="left")
        .join(returned, on="customer_id", how="left")
        .join(loyalty, on="customer_id", how="left")
        .fillna(
            0,
            subset=[
                "orders_total",
                "orders_365d",
                "orders_90d",
                "purchase_days",
                "email_sent_90d",
                "sms_sent_90d",
                "product_views_30d",
            ],
        )
        .fillna(0.0, subset=["revenue_total", "revenue_365d", "revenue_90d"])
        .withColumn("as_of_date", F.lit(as_of))
        .withColumn("recency_days", _days_since("last_purchase_at", end))
        .withColumn("tenure_days", _days_since("first_purchase_at", end))
        .withColumn(
            "avg_order_value", F.round(F.col("revenue_total") / F.nullif("orders_total", F.lit(0)), 2)
        )
        .withColumn(
            "cadence_days",
            F.round(
                (F.unix_timestamp("last_purchase_at") - F.unix_timestamp("first_purchase_at"))
                / DAY
                / F.nullif(F.col("purchase_days") - 1, F.lit(0)),
                1,
            ),
        )
        .withColumn(
            "returns_rate_365d",
            F.when(F.col("_items") > 0, F.coalesce(F.col("_returned"), F.lit(0)) / F.col("_items")),
        )
        .withColumn("days_since_web", _days_since("_last_web", end))
        .withColumn("days_since_app", _days_since("_last_app", end))
    )
    return out.select(*FEATURES)


def _top_affinities(lines: DataFrame, end: dt.datetime, top: int = 3) -> DataFrame:
    """Each customer's top categories and brands by share of their last year's spend."""
    recent = _before(lines, "ordered_at", end, 365)
    parts = []
    for kind in ("category", "brand"):
        spend = recent.groupBy("customer_id", F.col(kind).alias("value")).agg(
            F.sum("amount_usd").alias("spend")
        )
        # A year of free or fully discounted items has no share to give (Spark 4's ANSI mode would fail
        # the whole query on the division: CDNOW's real purchases of $0 did).
        total = F.nullif(F.sum("spend").over(Window.partitionBy("customer_id")), F.lit(0.0))
        order = Window.partitionBy("customer_id").orderBy(F.desc("spend"), "value")
        parts.append(
            spend.withColumn("share", F.round(F.col("spend") / total, 4))
            .withColumn("rank", F.row_number().over(order))
            .filter(F.col("rank") <= top)
            .select("customer_id", F.lit(kind).alias("kind"), "value", "share", "rank")
        )
    return parts[0].unionByName(parts[1])


def affinities(lines: DataFrame, as_of: dt.date) -> DataFrame:
    """`gold.customer_affinities`: top-3 categories and brands per customer with their spend share."""
    end = interval_end(as_of)
    return (
        _top_affinities(lines.filter(F.col("customer_id").isNotNull()), end)
        .withColumn("as_of_date", F.lit(as_of))
        .select(*AFFINITIES)
    )
