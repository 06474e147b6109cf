"""Customer features as of a date on DuckDB: the same columns and values as `features.build_features`
(Spark), computed in the task's own process from the attributed activity pulled once as Arrow.

For data that fit one machine (`customers.features_engine`): at 20k customers one as-of date's
features took 7–10 s of both cores on the Spark Connect server (a dozen shuffles of a few hundred
thousand rows) and take well under a second here; the churn task builds three dates. The activity
itself (the identity joins of `activity.py`) is still built by Spark, and pulled as Arrow once.
`tests/customers/test_customer_features.py` runs both engines on the same rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pyarrow as pa

from p13n.customers.features import AFFINITIES, FEATURES, interval_end

FEATURE_SCHEMA = pa.schema(
    [
        ("customer_id", pa.string()),
        ("as_of_date", pa.date32()),
        ("first_purchase_at", pa.timestamp("us", "UTC")),
        ("last_purchase_at", pa.timestamp("us", "UTC")),
        ("recency_days", pa.int32()),
        ("tenure_days", pa.int32()),
        ("orders_total", pa.int64()),
        ("revenue_total", pa.float64()),
        ("orders_365d", pa.int64()),
        ("revenue_365d", pa.float64()),
        ("orders_90d", pa.int64()),
        ("revenue_90d", pa.float64()),
        ("purchase_days", pa.int64()),
        ("avg_order_value", pa.float64()),
        ("cadence_days", pa.float64()),
        ("previous_gap_days", pa.int32()),
        ("share_web", pa.float64()),
        ("share_app", pa.float64()),
        ("share_store", pa.float64()),
        ("top_category", pa.string()),
        ("top_category_share", pa.float64()),
        ("top_brand", pa.string()),
        ("top_brand_share", pa.float64()),
        ("email_sent_90d", pa.int64()),
        ("email_open_rate_90d", pa.float64()),
        ("email_click_rate_90d", pa.float64()),
        ("sms_sent_90d", pa.int64()),
        ("sms_click_rate_90d", pa.float64()),
        ("returns_rate_365d", pa.float64()),
        ("days_since_web", pa.int32()),
        ("days_since_app", pa.int32()),
        ("product_views_30d", pa.int64()),
        ("loyalty_tier", pa.string()),
        ("loyalty_points", pa.int64()),
    ]
)
AFFINITY_SCHEMA = pa.schema(
    [
        ("customer_id", pa.string()),
        ("as_of_date", pa.date32()),
        ("kind", pa.string()),
        ("value", pa.string()),
        ("share", pa.float64()),
        ("rank", pa.int32()),
    ]
)
assert FEATURE_SCHEMA.names == FEATURES and AFFINITY_SCHEMA.names == AFFINITIES

# Spark's `round` of a double is HALF_UP on its shortest decimal form (2.675 -> 2.68): so is this one.
_ROUND = (
    "CREATE MACRO r(x, n) AS CASE WHEN isfinite(x) "
    "THEN CAST(round(CAST(CAST(x AS VARCHAR) AS DECIMAL(38, 20)), n) AS DOUBLE) ELSE x END"
)
# Whole seconds, as Spark's unix_timestamp (the instants are after 1970: truncation is the floor).
_SECONDS = "CREATE MACRO secs(t) AS epoch_us(t) // 1000000"

# Each customer's spend per category and brand in the year before the end, ranked as
# `features._top_affinities` ranks it (spend descending, then the value, a missing one first).
_RANKED = """
ranked AS (
    SELECT customer_id, kind, value,
           r(spend / nullif(sum(spend) OVER (PARTITION BY customer_id, kind), 0), 4) AS share,
           row_number() OVER (
               PARTITION BY customer_id, kind ORDER BY spend DESC NULLS LAST, value ASC NULLS FIRST
           ) AS rank
    FROM (
        SELECT customer_id, 'category' AS kind, category AS value, sum(amount_usd) AS spend
        FROM l WHERE ordered_at >= $d365 GROUP BY ALL
        UNION ALL
        SELECT customer_id, 'brand' AS kind, brand AS value, sum(amount_usd) AS spend
        FROM l WHERE ordered_at >= $d365 GROUP BY ALL
    )
)"""
_LINES = "l AS (SELECT * FROM lines WHERE customer_id IS NOT NULL AND ordered_at < $end)"

_FEATURES = f"""
WITH {_LINES},
orders AS (
    SELECT order_id, customer_id, min(ordered_at) AS ordered_at, first(channel) AS channel,
           sum(amount_usd) AS amount_usd
    FROM l GROUP BY order_id, customer_id
),
purchases AS (
    SELECT customer_id,
           min(ordered_at) AS first_purchase_at,
           max(ordered_at) AS last_purchase_at,
           count(*) AS orders_total,
           r(sum(amount_usd), 2) AS revenue_total,
           count(*) FILTER (WHERE ordered_at >= $d365) AS orders_365d,
           r(coalesce(sum(amount_usd) FILTER (WHERE ordered_at >= $d365), 0.0), 2) AS revenue_365d,
           count(*) FILTER (WHERE ordered_at >= $d90) AS orders_90d,
           r(coalesce(sum(amount_usd) FILTER (WHERE ordered_at >= $d90), 0.0), 2) AS revenue_90d,
           count(DISTINCT CAST(ordered_at AS DATE)) AS purchase_days,
           count(*) FILTER (WHERE channel = 'web') / count(*) AS share_web,
           count(*) FILTER (WHERE channel = 'app') / count(*) AS share_app,
           count(*) FILTER (WHERE channel = 'store') / count(*) AS share_store
    FROM orders GROUP BY customer_id
),
previous_gap AS (  -- the gap before the latest purchase day: a long one means the customer came back
    SELECT customer_id, gap AS previous_gap_days
    FROM (
        SELECT customer_id, d, d - lag(d) OVER (PARTITION BY customer_id ORDER BY d) AS gap
        FROM (SELECT DISTINCT customer_id, CAST(ordered_at AS DATE) AS d FROM orders)
    )
    QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY d DESC) = 1
),
{_RANKED},
top AS (
    SELECT customer_id,
           first(value) FILTER (WHERE kind = 'category') AS top_category,
           first(share) FILTER (WHERE kind = 'category') AS top_category_share,
           first(value) FILTER (WHERE kind = 'brand') AS top_brand,
           first(share) FILTER (WHERE kind = 'brand') AS top_brand_share
    FROM ranked WHERE rank = 1 GROUP BY customer_id
),
engagement AS (
    SELECT customer_id,
           count(*) FILTER (WHERE channel = 'email' AND event = 'sent') AS email_sent_90d,
           count(*) FILTER (WHERE channel = 'email' AND event = 'open')
               / nullif(count(*) FILTER (WHERE channel = 'email' AND event = 'sent'), 0)
               AS email_open_rate_90d,
           count(*) FILTER (WHERE channel = 'email' AND event = 'click')
               / nullif(count(*) FILTER (WHERE channel = 'email' AND event = 'sent'), 0)
               AS email_click_rate_90d,
           count(*) FILTER (WHERE channel = 'sms' AND event = 'sent') AS sms_sent_90d,
           count(*) FILTER (WHERE channel = 'sms' AND event = 'click')
               / nullif(count(*) FILTER (WHERE channel = 'sms' AND event = 'sent'), 0)
               AS sms_click_rate_90d
    FROM messages WHERE "at" < $end AND "at" >= $d90 GROUP BY customer_id
),
behaviour AS (
    SELECT customer_id,
           max("at") FILTER (WHERE channel = 'web') AS last_web,
           max("at") FILTER (WHERE channel = 'app') AS last_app,
           count(*) FILTER (WHERE event_type = 'product_view' AND "at" >= $d30) AS product_views_30d
    FROM events WHERE "at" < $end GROUP BY customer_id
),
bought AS (SELECT customer_id, sum(quantity) AS items FROM l WHERE ordered_at >= $d365 GROUP BY ALL),
returned AS (
    SELECT customer_id, sum(quantity) AS returned FROM returns
    WHERE returned_at < $end AND returned_at >= $d365 GROUP BY ALL
),
universe AS (
    SELECT customer_id FROM customers WHERE first_seen_at < $end
    UNION
    SELECT customer_id FROM orders
),
joined AS (
    SELECT u.customer_id, p.first_purchase_at, p.last_purchase_at,
           coalesce(p.orders_total, 0) AS orders_total,
           coalesce(p.revenue_total, 0.0) AS revenue_total,
           coalesce(p.orders_365d, 0) AS orders_365d,
           coalesce(p.revenue_365d, 0.0) AS revenue_365d,
           coalesce(p.orders_90d, 0) AS orders_90d,
           coalesce(p.revenue_90d, 0.0) AS revenue_90d,
           coalesce(p.purchase_days, 0) AS purchase_days,
           p.share_web, p.share_app, p.share_store, g.previous_gap_days,
           t.top_category, t.top_category_share, t.top_brand, t.top_brand_share,
           coalesce(e.email_sent_90d, 0) AS email_sent_90d, e.email_open_rate_90d,
           e.email_click_rate_90d, coalesce(e.sms_sent_90d, 0) AS sms_sent_90d, e.sms_click_rate_90d,
           b.last_web, b.last_app, coalesce(b.product_views_30d, 0) AS product_views_30d,
           bo.items, re.returned, y.loyalty_tier, y.loyalty_points
    FROM universe u
    LEFT JOIN purchases p USING (customer_id)
    LEFT JOIN previous_gap g USING (customer_id)
    LEFT JOIN top t USING (customer_id)
    LEFT JOIN engagement e USING (customer_id)
    LEFT JOIN behaviour b USING (customer_id)
    LEFT JOIN bought bo USING (customer_id)
    LEFT JOIN returned re USING (customer_id)
    LEFT JOIN loyalty y USING (customer_id)
)
SELECT customer_id, $as_of AS as_of_date, first_purchase_at, last_purchase_at,
       floor(($end_s - secs(last_purchase_at)) / 86400.0) AS recency_days,
       floor(($end_s - secs(first_purchase_at)) / 86400.0) AS tenure_days,
       orders_total, revenue_total, orders_365d, revenue_365d, orders_90d, revenue_90d, purchase_days,
       r(revenue_total / nullif(orders_total, 0), 2) AS avg_order_value,
       r((secs(last_purchase_at) - secs(first_purchase_at)) / 86400.0 / nullif(purchase_days - 1, 0), 1)
           AS cadence_days,
       previous_gap_days, share_web, share_app, share_store,
       top_category, top_category_share, top_brand, top_brand_share,
       email_sent_90d, email_open_rate_90d, email_click_rate_90d, sms_sent_90d, sms_click_rate_90d,
       CASE WHEN items > 0 THEN coalesce(returned, 0) / items END AS returns_rate_365d,
       floor(($end_s - secs(last_web)) / 86400.0) AS days_since_web,
       floor(($end_s - secs(last_app)) / 86400.0) AS days_since_app,
       product_views_30d, loyalty_tier, loyalty_points
FROM joined
"""

_AFFINITIES = f"""
WITH {_LINES}, {_RANKED}
SELECT customer_id, $as_of AS as_of_date, kind, value, share, rank FROM ranked WHERE rank <= 3
"""

# Orders per customer placed in [lo, hi): an order's time is its first line's (`features.orders_of`).
LATER_ORDERS = """
SELECT customer_id, count(*) AS count
FROM (
    SELECT order_id, customer_id, min(ordered_at) AS ordered_at
    FROM lines WHERE customer_id IS NOT NULL GROUP BY order_id, customer_id
)
WHERE ordered_at >= $lo AND ordered_at < $hi
GROUP BY customer_id
"""
# The share of purchase lines up to the end that no customer was found for.
UNATTRIBUTED = "SELECT avg(CAST(customer_id IS NULL AS DOUBLE)) FROM lines WHERE ordered_at < $end"


@dataclass
class LocalActivity:
    """The attributed activity (`pipeline.Activity`'s frames) as Arrow tables in this process."""

    customers: pa.Table
    lines: pa.Table
    events: pa.Table
    messages: pa.Table
    returns: pa.Table
    loyalty: pa.Table

    def connect(self):
        """A DuckDB connection (UTC) with the six tables and the macros the queries use."""
        import duckdb

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
        for name in ("customers", "lines", "events", "messages", "returns", "loyalty"):
            con.register(name, getattr(self, name))
        con.execute(_ROUND)
        con.execute(_SECONDS)
        return con


def _params(as_of: dt.date) -> dict:
    end = interval_end(as_of)
    return {
        "as_of": as_of,
        "end": end,
        "end_s": int(end.timestamp()),
        "d365": end - dt.timedelta(days=365),
        "d90": end - dt.timedelta(days=90),
        "d30": end - dt.timedelta(days=30),
    }


def _query(con, sql: str, as_of: dt.date, schema: pa.Schema) -> pa.Table:
    params = _params(as_of)
    used = {k: v for k, v in params.items() if f"${k}" in sql}
    return con.execute(sql, used).fetch_arrow_table().select(schema.names).cast(schema)


def build_features(activity: LocalActivity, as_of: dt.date, con=None) -> pa.Table:
    """One row per customer known by the end of `as_of` (see `features.FEATURES`)."""
    return _query(con or activity.connect(), _FEATURES, as_of, FEATURE_SCHEMA)


def affinities(activity: LocalActivity, as_of: dt.date, con=None) -> pa.Table:
    """`gold.customer_affinities`' rows for `as_of`: top-3 categories and brands by spend share."""
    return _query(con or activity.connect(), _AFFINITIES, as_of, AFFINITY_SCHEMA)
