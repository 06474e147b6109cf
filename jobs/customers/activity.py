"""What customers did, from the silver sources, attributed to customer ids: purchases, behaviour,
messaging engagement, returns and loyalty. Pure DataFrame-in/DataFrame-out transforms.

Attribution goes through `gold.identity_keys` (email and phone pseudonyms, platform ids → customer
id), so an order placed with any of a customer's identifiers lands on that customer, and identity
merges carry over on the next run. Rows no key attributes are kept out of the customer features
(they still count in the source's own tables); `unattributed_share` measures them.
"""

from __future__ import annotations

from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

# Contracts: the columns each transform ends with.
LINES = [
    "order_id",
    "source_order_id",
    "customer_id",
    "ordered_at",
    "channel",
    "sku",
    "category",
    "brand",
    "quantity",
    "amount_usd",
]
EVENTS = ["customer_id", "at", "channel", "event_type", "sku", "campaign_channel"]
# A web visit's campaign (the landing URL's utm_medium) as the touch it counts as in attribution.
UTM_CHANNELS = {
    "email": "email",
    "sms": "sms",
    "push": "push",
    "cpc": "paid_search",
    "ppc": "paid_search",
    "paid_search": "paid_search",
    "paidsearch": "paid_search",
    "paid_social": "paid_social",
    "paidsocial": "paid_social",
    "social": "social",
    "display": "display",
    "cpm": "display",
    "banner": "display",
    "affiliate": "affiliate",
}
MESSAGES = ["customer_id", "at", "channel", "event"]
RETURNS = ["customer_id", "returned_at", "source_order_id", "sku", "quantity"]
LOYALTY = ["customer_id", "loyalty_tier", "loyalty_points"]
PAID = ("paid", "partially_refunded")


def attribute(rows: DataFrame, keys: DataFrame, candidates: list[tuple[str, str]]) -> DataFrame:
    """`rows` with `customer_id`: the customer of the first candidate (key type, column) found in the
    identity keys. A source's own `customer_id` column (a platform id) is read as a candidate, not kept."""
    if "customer_id" in rows.columns:
        rows = rows.withColumnRenamed("customer_id", "_platform_customer_id")
        candidates = [(k, "_platform_customer_id" if c == "customer_id" else c) for k, c in candidates]
    found = []
    for n, (key_type, column) in enumerate(candidates):
        if column not in rows.columns:
            continue
        k = keys.filter(F.col("key_type") == key_type).select(
            F.col("key_value").alias(f"_key{n}"), F.col("customer_id").alias(f"_cust{n}")
        )
        rows = rows.join(k, rows[column].cast("string") == k[f"_key{n}"], how="left").drop(f"_key{n}")
        found.append(f"_cust{n}")
    customer = F.coalesce(*[F.col(c) for c in found]) if found else F.lit(None).cast("string")
    return rows.withColumn("customer_id", customer).drop(*found, "_platform_customer_id")


def purchase_lines(
    keys: DataFrame,
    products: DataFrame,
    shopify_orders: DataFrame,
    shopify_lines: DataFrame,
    square_transactions: DataFrame,
    square_lines: DataFrame,
    legacy_sales: DataFrame,
) -> DataFrame:
    """Every purchased line of the web shop, the app and both store systems, in USD after discounts."""
    orders = attribute(
        shopify_orders.filter(F.col("financial_status").isin(*PAID)),
        keys,
        [("shopify_customer_id", "customer_id"), ("email_hmac", "email_hmac")],
    )
    shop = _share_out(
        shopify_lines,
        orders.select(
            "order_id",
            "customer_id",
            F.col("created_at").alias("ordered_at"),
            "channel",
            F.col("total_usd").alias("_total"),
        ),
        "order_id",
        "shopify",
    )
    tx = attribute(
        square_transactions,
        keys,
        [
            ("loyalty_id", "loyalty_id"),
            ("email_hmac", "customer_email_hmac"),
            ("phone_hmac", "customer_phone_hmac"),
        ],
    )
    square = _share_out(
        square_lines,
        tx.select(
            "transaction_id",
            "customer_id",
            F.col("created_at").alias("ordered_at"),
            F.lit("store").alias("channel"),
            F.col("total").alias("_total"),
        ),
        "transaction_id",
        "square",
    )
    legacy = attribute(legacy_sales, keys, [("loyalty_id", "loyalty_id")]).select(
        F.concat(F.lit("legacy:"), "receipt_no").alias("order_id"),
        F.col("receipt_no").alias("source_order_id"),
        "customer_id",
        F.col("sold_at").alias("ordered_at"),
        F.lit("store").alias("channel"),
        "sku",
        "quantity",
        F.col("amount").cast("double").alias("amount_usd"),
    )
    catalog = products.select("sku", "category", "brand")
    return (
        shop.unionByName(square)
        .unionByName(legacy)
        .join(catalog, on="sku", how="left")
        .fillna({"category": "unknown", "brand": "unknown"})
        .withColumn("amount_usd", F.round(F.col("amount_usd").cast("double"), 2))
        .select(*LINES)
    )


def _share_out(lines: DataFrame, orders: DataFrame, key: str, system: str) -> DataFrame:
    """Lines with their order's customer, time and channel; each line's amount is the order's paid
    total (`_total`: USD, after discounts) shared out by line value, since lines carry list prices."""
    value = F.col("quantity") * F.col("unit_price")
    return (
        lines.select(key, "sku", "quantity", "unit_price")
        .join(orders, on=key, how="inner")
        .withColumn("amount_usd", F.col("_total") * value / F.sum(value).over(Window.partitionBy(key)))
        .select(
            F.concat(F.lit(f"{system}:"), key).alias("order_id"),
            F.col(key).alias("source_order_id"),
            "customer_id",
            "ordered_at",
            "channel",
            "sku",
            "quantity",
            "amount_usd",
        )
    )


def campaign_channel(url: SparkColumn) -> SparkColumn:
    """The touch a landing URL's campaign parameters make of a visit (`UTM_CHANNELS` by utm_medium,
    lower-cased), or null for an organic visit."""
    medium = F.lower(F.regexp_extract(url, r"[?&]utm_medium=([^&#]+)", 1))
    mapping = F.create_map(*[F.lit(x) for kv in UTM_CHANNELS.items() for x in kv])
    return F.element_at(mapping, medium)


def behaviour_events(keys: DataFrame, web: DataFrame, app: DataFrame) -> DataFrame:
    """Web and app events of identified visitors; a web event's `campaign_channel` is its session's
    campaign: the landing page's (the session's first event) utm_medium, when it has one (a session
    without an id: the event's own URL)."""
    campaign = campaign_channel(F.col("page_url")) if "page_url" in web.columns else F.lit(None)
    if "page_url" in web.columns and "session_id" in web.columns:
        # Over every event of the session, before attribution: an anonymous landing counts too.
        landing = Window.partitionBy("session_id").orderBy("event_at", "event_id")
        session = landing.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
        web = web.withColumn(
            "_campaign",
            F.when(F.col("session_id").isNotNull(), F.first(campaign).over(session)).otherwise(campaign),
        )
        campaign = F.col("_campaign")
    w = attribute(web, keys, [("shopify_customer_id", "customer_id")]).select(
        "customer_id",
        F.col("event_at").alias("at"),
        F.lit("web").alias("channel"),
        "event_type",
        "sku",
        campaign.cast("string").alias("campaign_channel"),
    )
    a = attribute(app, keys, [("shopify_customer_id", "app_user_id"), ("email_hmac", "email_hmac")]).select(
        "customer_id",
        F.col("event_at").alias("at"),
        F.lit("app").alias("channel"),
        "event_type",
        "sku",
        F.lit(None).cast("string").alias("campaign_channel"),
    )
    return w.unionByName(a).filter(F.col("customer_id").isNotNull()).select(*EVENTS)


def device_owners(keys: DataFrame, app: DataFrame) -> DataFrame:
    """device_id, customer_id: whose each app device is, by the identified app events on it (the
    customer with the most of them where a device was shared; the smaller id on a tie)."""
    from pyspark.sql import Window

    seen = (
        attribute(app, keys, [("shopify_customer_id", "app_user_id"), ("email_hmac", "email_hmac")])
        .filter(F.col("customer_id").isNotNull() & F.col("device_id").isNotNull())
        .groupBy("device_id", "customer_id")
        .count()
    )
    first = Window.partitionBy("device_id").orderBy(F.col("count").desc(), "customer_id")
    return (
        seen.withColumn("_n", F.row_number().over(first)).filter("_n = 1").select("device_id", "customer_id")
    )


def push_events(keys: DataFrame, push: DataFrame, app: DataFrame) -> DataFrame:
    """Push notifications (keyed by device) as the device owner's sent and open events."""
    return push.join(device_owners(keys, app), on="device_id", how="inner").select(
        "customer_id",
        F.col("occurred_at").alias("at"),
        F.lit("push").alias("channel"),
        F.when(F.col("event") == "sent", "sent").when(F.col("event") == "opened", "open").alias("event"),
    )


def message_events(
    keys: DataFrame,
    klaviyo: DataFrame,
    mailchimp: DataFrame,
    sms: DataFrame,
    push: DataFrame | None = None,
    app: DataFrame | None = None,
) -> DataFrame:
    """Email, SMS and (given the push log and the app's events) push engagement as
    (sent | open | click) events per customer."""
    kl = attribute(klaviyo, keys, [("email_hmac", "email_hmac")]).select(
        "customer_id",
        F.col("occurred_at").alias("at"),
        F.lit("email").alias("channel"),
        F.when(F.col("metric") == "received", "sent")
        .when(F.col("metric") == "opened", "open")
        .when(F.col("metric") == "clicked", "click")
        .alias("event"),
    )
    mc = attribute(mailchimp, keys, [("email_hmac", "email_hmac")]).select(
        "customer_id",
        F.col("occurred_at").alias("at"),
        F.lit("email").alias("channel"),
        F.col("action").alias("event"),
    )
    sm = attribute(sms, keys, [("phone_hmac", "phone_hmac")]).select(
        "customer_id",
        F.col("occurred_at").alias("at"),
        F.lit("sms").alias("channel"),
        F.when(F.col("event") == "sent", "sent").when(F.col("event") == "clicked", "click").alias("event"),
    )
    rows = kl.unionByName(mc).unionByName(sm)
    if push is not None and app is not None:
        rows = rows.unionByName(push_events(keys, push, app))
    return rows.filter(
        F.col("customer_id").isNotNull() & F.col("event").isin("sent", "open", "click")
    ).select(*MESSAGES)


def returned_items(returns: DataFrame, lines: DataFrame) -> DataFrame:
    """Returns, attributed through the order they came from (web, Square or legacy receipt)."""
    owners = (
        lines.select("source_order_id", "customer_id").filter(F.col("customer_id").isNotNull()).distinct()
    )
    return (
        returns.select(F.col("order_ref").alias("source_order_id"), "sku", "quantity", "returned_at")
        .join(owners, on="source_order_id", how="inner")
        .select(*RETURNS)
    )


def loyalty_status(keys: DataFrame, members: DataFrame) -> DataFrame:
    """Each customer's loyalty tier and points (the highest tier where several accounts merged)."""
    rank = F.when(F.col("tier") == "platinum", 4).when(F.col("tier") == "gold", 3)
    rank = rank.when(F.col("tier") == "silver", 2).otherwise(1)
    best = Window.partitionBy("customer_id").orderBy(F.desc("_rank"), F.desc("points_balance"))
    return (
        attribute(members, keys, [("loyalty_id", "loyalty_id")])
        .filter(F.col("customer_id").isNotNull())
        .withColumn("_rank", rank)
        .withColumn("_n", F.row_number().over(best))
        .filter("_n = 1")
        .select(
            "customer_id",
            F.col("tier").alias("loyalty_tier"),
            F.col("points_balance").alias("loyalty_points"),
        )
    )
