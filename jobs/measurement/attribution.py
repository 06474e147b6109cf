"""`gold.attribution`: which touchpoints each sale followed, and the credit each channel earns.

Touchpoints are what a customer met, attributed through the identity graph like everything else:
email (Klaviyo and Mailchimp sends, opens, clicks), SMS (sends and clicks), push (sends and opens,
the device's owner), web and app visits (a web visit landing from a campaign counts as that
campaign's channel: paid search, paid social, display, affiliate... by its utm_medium), and store
visits. One touch per customer, channel and day (its first moment): a session of twelve
page views is one web visit, and a campaign's send, open and click on one day are one email touch.
Conversions are orders of every sales system (web, app, both POS systems).

A **journey** ends at a conversion and holds the customer's touches since their previous conversion,
at most `lookback_days` before it (the last `max_touches` of them); touches after a customer's
last conversion form a journey that has not converted (yet). Conversions of the period
(`period_days` up to the as-of date) are credited by six models:

* first touch, last touch, linear (equal shares), position-based (40% first, 40% last, 20% spread
  over the middle; halves for two touches), time decay (a touch's weight halves every
  `half_life_hours` before the conversion);
* the first-order **Markov chain removal effect**: the journeys, converted or not, as transitions
  between channels (start → … → conversion or null, repeats of the same channel collapsed); a
  channel's removal effect is the share of conversions lost when its transitions lead to null
  instead; the period's conversions and revenue are split by the normalized removal effects.

`p13n bench experiments` recomputes every model with the `marketing-attribution-models` package on
the same journeys (`attribution_max_rel_diff`). Journeys are built and credited in Spark; only the
transition counts (channels², a few dozen numbers) reach the driver for the Markov chain.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from p13n.spark import to_pandas

MODELS = ("first_touch", "last_touch", "linear", "position_based", "time_decay", "markov")
START, CONVERSION, NULL = "(start)", "(conversion)", "(null)"

JOURNEY_COLUMNS = [
    "journey_id",
    "customer_id",
    "converted",
    "ended_at",
    "revenue",
    "channels",
    "hours_before",
]


def touchpoints(events: DataFrame, messages: DataFrame, visits: DataFrame | None = None) -> DataFrame:
    """customer_id, at, channel: one touch per customer, channel and day (its first moment)."""
    channel = (  # a campaign's landing (utm_medium) is that campaign's touch, not an organic visit
        F.coalesce(F.col("campaign_channel"), F.col("channel"))
        if "campaign_channel" in events.columns
        else F.col("channel")
    )
    rows = events.select("customer_id", "at", channel.alias("channel")).unionByName(
        messages.select("customer_id", "at", "channel")
    )
    if visits is not None:
        rows = rows.unionByName(visits.select("customer_id", "at", F.lit("store").alias("channel")))
    return (
        rows.filter(F.col("customer_id").isNotNull() & F.col("at").isNotNull())
        .groupBy("customer_id", "channel", F.to_date("at").alias("_day"))
        .agg(F.min("at").alias("at"))
        .drop("_day")
    )


def conversions(lines: DataFrame) -> DataFrame:
    """customer_id, order_id, at, revenue: one row per attributed order."""
    return (
        lines.filter(F.col("customer_id").isNotNull())
        .groupBy("customer_id", "order_id")
        .agg(F.min("ordered_at").alias("at"), F.sum("amount_usd").alias("revenue"))
    )


def journeys(
    touches: DataFrame,
    orders: DataFrame,
    start: dt.date,
    end: dt.date,
    lookback_days: int = 30,
    max_touches: int = 20,
) -> DataFrame:
    """The journeys of the period [start, end) (JOURNEY_COLUMNS): one per conversion in it, and one
    per customer whose touches after their last conversion fall in the `lookback_days` before `end`.
    Conversions without any touch in their window are left out (`unattributed` counts them)."""
    t0 = F.lit(dt.datetime.combine(start - dt.timedelta(days=lookback_days), dt.time()))
    t_end = F.lit(dt.datetime.combine(end, dt.time()))
    t = touches.filter((F.col("at") >= t0) & (F.col("at") < t_end)).select(
        "customer_id", "at", "channel", F.lit(0).alias("kind"), F.lit(None).cast("double").alias("revenue")
    )
    c = orders.filter((F.col("at") >= t0) & (F.col("at") < t_end)).select(
        "customer_id", "at", F.lit(None).cast("string").alias("channel"), F.lit(1).alias("kind"), "revenue"
    )
    w = Window.partitionBy("customer_id").orderBy("at", "kind").rowsBetween(Window.unboundedPreceding, 0)
    seq = t.unionByName(c).withColumn("journey", F.sum("kind").over(w) - F.col("kind"))
    grouped = seq.groupBy("customer_id", "journey").agg(
        F.max(F.when(F.col("kind") == 1, F.col("at"))).alias("converted_at"),
        F.max(F.when(F.col("kind") == 1, F.col("revenue"))).alias("revenue"),
        F.collect_list(F.when(F.col("kind") == 0, F.struct("at", "channel"))).alias("touches"),
    )
    converted = F.col("converted_at").isNotNull()
    ended = F.coalesce(F.col("converted_at"), t_end)
    lookback = F.expr(f"INTERVAL {int(lookback_days)} DAYS")
    window_start = ended - lookback
    inside = F.array_sort(F.filter("touches", lambda x: x["at"] >= window_start))
    kept = F.slice(
        inside, F.greatest(F.lit(1), F.size(inside) - int(max_touches) + 1), F.lit(int(max_touches))
    )
    period = F.lit(dt.datetime.combine(start, dt.time()))
    return (
        grouped.withColumn("touches", F.when(F.size("touches") > 0, kept).otherwise(F.array()))
        .filter(~converted | (F.col("converted_at") >= period))
        .select(
            F.concat_ws(":", "customer_id", F.col("journey").cast("string")).alias("journey_id"),
            "customer_id",
            converted.alias("converted"),
            ended.alias("ended_at"),
            F.coalesce("revenue", F.lit(0.0)).alias("revenue"),
            F.transform("touches", lambda x: x["channel"]).alias("channels"),
            F.transform(
                "touches", lambda x: (F.unix_timestamp(ended) - F.unix_timestamp(x["at"])) / 3600.0
            ).alias("hours_before"),
        )
    )


def heuristic_credits(journeys: DataFrame, half_life_hours: float = 168.0) -> DataFrame:
    """model, channel, conversions, revenue: each converted journey's one conversion (and revenue)
    split over its touches by the five rule-based models."""
    j = journeys.filter(F.col("converted") & (F.size("channels") > 0))
    x = j.select(
        "journey_id",
        "revenue",
        F.size("channels").alias("n"),
        F.posexplode(F.arrays_zip("channels", "hours_before")).alias("pos", "touch"),
    ).select(
        "journey_id",
        "revenue",
        "n",
        "pos",
        F.col("touch.channels").alias("channel"),
        F.col("touch.hours_before").alias("hours"),
    )
    n, pos = F.col("n"), F.col("pos")
    decay = F.pow(F.lit(0.5), F.col("hours") / F.lit(float(half_life_hours)))
    x = x.withColumn("decay", decay / F.sum(decay).over(Window.partitionBy("journey_id")))
    weights = {
        "first_touch": F.when(pos == 0, 1.0).otherwise(0.0),
        "last_touch": F.when(pos == n - 1, 1.0).otherwise(0.0),
        "linear": F.lit(1.0) / n,
        "position_based": F.when(n == 1, 1.0)
        .when(n == 2, 0.5)
        .when((pos == 0) | (pos == n - 1), 0.4)
        .otherwise(F.lit(0.2) / (n - 2)),
        "time_decay": F.col("decay"),
    }
    stacked = x.select(
        "channel",
        "revenue",
        F.explode(
            F.array(*[F.struct(F.lit(m).alias("model"), w.alias("w")) for m, w in weights.items()])
        ).alias("c"),
    )
    return stacked.groupBy(F.col("c.model").alias("model"), "channel").agg(
        F.sum("c.w").alias("conversions"), F.sum(F.col("c.w") * F.col("revenue")).alias("revenue")
    )


def transitions(journeys: DataFrame) -> DataFrame:
    """from_state, to_state, count: every journey as start → channels → conversion | null, repeats of a
    channel collapsed (no transition to the same state)."""
    states = F.concat(
        F.array(F.lit(START)),
        F.col("channels"),
        F.array(F.when(F.col("converted"), F.lit(CONVERSION)).otherwise(F.lit(NULL))),
    )
    pairs = journeys.filter(F.size("channels") > 0).select(
        F.arrays_zip(F.slice(states, 1, F.size(states) - 1), F.slice(states, 2, F.size(states) - 1)).alias(
            "p"
        )
    )
    return (
        pairs.select(F.explode("p").alias("p"))
        .select(F.col("p.0").alias("from_state"), F.col("p.1").alias("to_state"))
        .filter(F.col("from_state") != F.col("to_state"))
        .groupBy("from_state", "to_state")
        .count()
    )


def removal_effects(counts: pd.DataFrame) -> pd.Series:
    """Each channel's removal effect from the transition counts (pure): 1 − P(conversion without the
    channel) / P(conversion), P from the absorbing Markov chain's fundamental matrix."""
    channels = sorted(set(counts["from_state"]) | set(counts["to_state"]) - {START, CONVERSION, NULL})
    channels = [c for c in channels if c not in (START, CONVERSION, NULL)]
    states = [START, *channels, NULL, CONVERSION]
    index = {s: i for i, s in enumerate(states)}
    m = np.zeros((len(states), len(states)))
    for r in counts.itertuples():
        m[index[r.from_state], index[r.to_state]] += r.count
    m[-2, -2] = m[-1, -1] = 1.0

    def p_conversion(matrix: np.ndarray) -> float:
        rows = matrix.sum(axis=1, keepdims=True)
        p = matrix / np.where(rows == 0, 1.0, rows)
        q, r = p[:-2, :-2], p[:-2, -2:]
        return float((np.linalg.solve(np.identity(len(q)) - q, r))[0, 1])

    base = p_conversion(m)
    effects = {}
    for c in channels:
        removed = m.copy()
        removed[:, -2] += removed[:, index[c]]
        removed[:, index[c]] = 0.0
        effects[c] = 1.0 - p_conversion(removed) / base if base > 0 else 0.0
    return pd.Series(effects, dtype=float)


def markov_credits(counts: pd.DataFrame, conversions: float, revenue: float) -> pd.DataFrame:
    """model markov: the period's conversions and revenue split by the normalized removal effects."""
    effects = removal_effects(counts)
    total = effects.sum()
    share = effects / total if total > 0 else effects * 0.0
    return pd.DataFrame(
        {
            "model": "markov",
            "channel": effects.index,
            "conversions": share.values * conversions,
            "revenue": share.values * revenue,
            "removal_effect": effects.values,
        }
    )


def attribution(journeys: DataFrame, half_life_hours: float = 168.0) -> pd.DataFrame:
    """Every model's credit per channel (model, channel, conversions, revenue, share, removal_effect)."""
    heur = to_pandas(heuristic_credits(journeys, half_life_hours))
    totals = (
        journeys.filter("converted AND size(channels) > 0")
        .agg(F.count(F.lit(1)).alias("n"), F.sum("revenue").alias("revenue"))
        .first()
    )
    counts = to_pandas(transitions(journeys))
    frames = [heur.assign(removal_effect=np.nan)]
    if len(counts) and totals["n"]:
        frames.append(markov_credits(counts, float(totals["n"]), float(totals["revenue"] or 0.0)))
    out = pd.concat(frames, ignore_index=True)
    out["share"] = out["conversions"] / out.groupby("model")["conversions"].transform("sum")
    return out.sort_values(["model", "conversions"], ascending=[True, False]).reset_index(drop=True)


def store_visits(keys: DataFrame, visits: DataFrame) -> DataFrame:
    """customer_id, at: Wi-Fi logins in stores, attributed by the visitor's email or phone pseudonym."""
    from p13n.customers.activity import attribute

    found = attribute(visits, keys, [("email_hmac", "email_hmac"), ("phone_hmac", "phone_hmac")])
    return found.filter(F.col("customer_id").isNotNull()).select(
        "customer_id", F.col("visited_at").alias("at")
    )


def attribute_period(lake, settings, activity, as_of: dt.date, run=None) -> pd.DataFrame:
    """The date's `gold.attribution`: the last `attribution_days` of conversions credited by every
    model; written over the date's partition (a rerun replaces it)."""
    from p13n.lake.tables import GOLD_ATTRIBUTION, GOLD_IDENTITY_KEYS, silver_table

    m = settings.measurement
    visits = None
    if lake.exists(silver_table("store_visits")):
        visits = store_visits(lake.read(GOLD_IDENTITY_KEYS), lake.read(silver_table("store_visits")))
    end = as_of + dt.timedelta(days=1)
    start = end - dt.timedelta(days=m.attribution_days)
    j = journeys(
        touchpoints(activity.events, activity.messages, visits),
        conversions(activity.lines),
        start,
        end,
        m.lookback_days,
        m.max_touches,
    ).cache()
    try:
        credits = attribution(j, m.half_life_hours)
        summary = j.agg(
            F.sum(F.col("converted").cast("int")).alias("conversions"),
            F.sum((F.col("converted") & (F.size("channels") == 0)).cast("int")).alias("unattributed"),
            F.sum((~F.col("converted")).cast("int")).alias("open_journeys"),
        ).first()
    finally:
        j.unpersist()
    credits.insert(0, "as_of_date", as_of)
    credits["period_start"] = start
    credits["period_end"] = as_of
    credits["conversions_in_period"] = int(summary["conversions"] or 0)
    credits["unattributed_conversions"] = int(summary["unattributed"] or 0)
    credits["open_journeys"] = int(summary["open_journeys"] or 0)
    frame = credits.astype({"removal_effect": float})
    lake.replace_partition_rows(GOLD_ATTRIBUTION, frame, "as_of_date", as_of, run=run)
    return credits
