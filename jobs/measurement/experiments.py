"""`gold.experiment_results`: what each experiment and holdout caused, measured nightly.

Experiments come from two places, both randomized by a stable hash of the customer id:

* **audience and trigger holdouts** (`silver.sends`): the customers an export sent (arm `treatment`)
  against the eligible ones it held out (arm `holdout`: the audience's own holdout and the global
  one), experiment `audience:<name>` or `trigger:<name>`;
* **the read API's experiments** (`silver.exposures`): each arm of `serving.experiments.<name>`
  against its `control` arm (or the first by name), experiment `api:<name>`;
* **the global holdout** (`activation.global_holdout`: customers who get no personalized message and,
  with `serving.api.global_holdout`, no personalized list): every customer known by the as-of date,
  held out or not by the same hash, over the last `window_days` (a unit enters at the window's start,
  or when first seen if later), experiment `global:holdout`: what the whole programme causes.

A unit is a customer's first send, holdout or exposure in the experiment. Its outcomes are the orders
of every sales system (`sql/orders.sql`: web, app and both store systems, through the identity
graph) from that moment for `measurement.window_days` (cut at the end of the as-of date: a young
experiment is measured on what happened so far, and `window_complete` says how much), and its
covariates the same figures over the `pre_days` before it. Metrics: conversion (ordered at all),
orders and revenue per customer, and average order value (revenue / orders, a ratio).

`unit_outcomes` (SQL, one row per unit) and `arm_sums` (the sufficient statistics per arm) run in
DuckDB over the lake; `results` (pure) turns the sums into comparisons with `p13n.measurement.stats`.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from p13n.lake.tables import (
    GOLD_CUSTOMER_PROFILES,
    GOLD_EXPERIMENT_RESULTS,
    SILVER_EXPOSURES,
    SILVER_SENDS,
)
from p13n.measurement import stats

METRICS = ("conversion", "orders", "revenue", "aov")
# What an experiment can be (gold.experiment_results.kind; its expectation suite lists the same).
KINDS = ("audience", "trigger", "journey", "api", "global")
# (metric, the unit column, its pre-period covariate, proportion?)
_PER_UNIT = (
    ("conversion", "converted", "pre_converted", True),
    ("orders", "orders", "pre_orders", False),
    ("revenue", "revenue", "pre_revenue", False),
)
_SUMMED = ("converted", "orders", "revenue", "pre_converted", "pre_orders", "pre_revenue")

RESULT_COLUMNS = [
    "as_of_date",
    "experiment",
    "kind",
    "arm",
    "baseline_arm",
    "metric",
    "units",
    "baseline_units",
    "mean",
    "baseline_mean",
    "abs_lift",
    "lift",
    "ci_low",
    "ci_high",
    "p_value",
    "cuped_lift",
    "cuped_ci_low",
    "cuped_ci_high",
    "cuped_p_value",
    "seq_ci_low",
    "seq_ci_high",
    "seq_p_value",
    "incremental",
    "srm_p_value",
    "sample_ratio_mismatch",
    "expected_share",
    "observed_share",
    "first_entry",
    "last_entry",
    "window_days",
    "window_complete",
    "note",
]


def _units_sql(has_sends: bool, has_exposures: bool, has_global: bool = False) -> str:
    """One row per experiment and unit, in one order, with revenue summed exactly: DuckDB's parallel
    aggregation adds a unit's orders, and hands the units on to the arms' sums, in an order that
    varies from run to run, and floating-point addition is not associative (a rerun's p-values
    differed in the 16th digit)."""
    parts = []
    if has_global:  # every customer by the same hash as p13n.serving.experiments.bucket, exactly
        parts.append("""
        SELECT 'global:holdout' AS experiment, 'global' AS kind, customer_id,
               CASE WHEN (('0x' || left(sha256($global_salt || ':' || customer_id), 16))::UBIGINT >> 4)
                         / 1152921504606846976.0 < $global_share
                    THEN 'holdout' ELSE 'treatment' END AS arm,
               greatest($end - to_days($window_days), CAST(first_seen_at AS TIMESTAMP)) AS entered_at
        FROM {{ gold.customer_profiles }} WHERE CAST(first_seen_at AS TIMESTAMP) < $end""")
    if has_sends:
        parts.append("""
        SELECT program_type || ':' || program AS experiment, program_type AS kind, customer_id,
               CASE arg_min(status, sent_at) WHEN 'held_out' THEN 'holdout' ELSE 'treatment' END AS arm,
               timezone('UTC', min(sent_at)) AS entered_at
        FROM {{ silver.sends }} WHERE send_date <= $as_of
        GROUP BY ALL""")
    if has_exposures:
        parts.append("""
        SELECT 'api:' || experiment AS experiment, 'api' AS kind, customer_id,
               arg_min(arm, exposed_at) AS arm, timezone('UTC', min(exposed_at)) AS entered_at
        FROM {{ silver.exposures }} WHERE exposure_date <= $as_of
        GROUP BY ALL""")
    units = "\n        UNION ALL".join(parts)
    return f"""
    WITH units AS ({units}),
    o AS (SELECT customer_id, ordered_at, revenue_usd FROM {{{{ orders }}}} WHERE ordered_at < $end),
    joined AS (
        SELECT u.experiment, u.kind, u.arm, u.customer_id, u.entered_at,
               o.ordered_at >= u.entered_at AS post, o.revenue_usd
        FROM units u
        LEFT JOIN o ON o.customer_id = u.customer_id
         AND o.ordered_at >= u.entered_at - to_days($pre_days)
         AND o.ordered_at < least(u.entered_at + to_days($window_days), $end))
    SELECT experiment, kind, arm, customer_id, entered_at,
           count(*) FILTER (WHERE post) AS orders,
           coalesce(sum(revenue_usd::DECIMAL(18, 4)) FILTER (WHERE post), 0)::DOUBLE AS revenue,
           (count(*) FILTER (WHERE post) > 0)::INT AS converted,
           count(*) FILTER (WHERE NOT post) AS pre_orders,
           coalesce(sum(revenue_usd::DECIMAL(18, 4)) FILTER (WHERE NOT post), 0)::DOUBLE AS pre_revenue,
           (count(*) FILTER (WHERE NOT post) > 0)::INT AS pre_converted,
           least(1.0, epoch($end - entered_at) / 86400.0 / $window_days) AS window_share
    FROM joined GROUP BY ALL
    ORDER BY experiment, arm, customer_id"""


def unit_outcomes(settings, as_of: dt.date, con=None) -> pd.DataFrame:
    """One row per experiment and unit: arm, entry time, outcomes in the window, pre-period values."""
    from p13n.analytics.sql import render
    from p13n.lake.duck import duckdb_connection, scan, table_exists
    from p13n.measurement.sends import GLOBAL_SALT

    root = settings.lake_root
    has = {t: table_exists(root, t) for t in (SILVER_SENDS, SILVER_EXPOSURES)}
    share = settings.activation.global_holdout
    has_global = share > 0 and table_exists(root, GOLD_CUSTOMER_PROFILES)
    if not any(has.values()) and not has_global:
        return pd.DataFrame(columns=["experiment", "kind", "arm", "customer_id", "entered_at", *_SUMMED])
    con = con or duckdb_connection(settings=settings)
    query = render(_units_sql(has[SILVER_SENDS], has[SILVER_EXPOSURES], has_global), lambda t: scan(root, t))
    m = settings.measurement
    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())
    params = {"end": end, "pre_days": m.pre_days, "window_days": m.window_days}
    if any(has.values()):
        params["as_of"] = as_of
    if has_global:
        params |= {"global_salt": GLOBAL_SALT, "global_share": share}
    return con.execute(query, params).df()


def arm_sums(units: pd.DataFrame) -> pd.DataFrame:
    """The sufficient statistics of each experiment and arm (pure): n, Σ and Σ² of every outcome and
    covariate, the post × pre cross products (CUPED) and Σ revenue × orders (the ratio metric)."""
    u = units.copy()
    sums = list(_SUMMED)
    for c in _SUMMED:
        u[c] = u[c].astype(float)
        u[f"{c}_sq"] = u[c] ** 2
        sums.append(f"{c}_sq")
    for post, pre in [(p[1], p[2]) for p in _PER_UNIT] + [("revenue", "orders")]:
        u[f"{post}_x_{pre}"] = u[post] * u[pre]
        sums.append(f"{post}_x_{pre}")
    agg = u.groupby(["experiment", "kind", "arm"], sort=True).agg(
        units=("customer_id", "size"),
        first_entry=("entered_at", "min"),
        last_entry=("entered_at", "max"),
        window_share=("window_share", "mean"),
        **{c: (c, "sum") for c in sums},
    )
    return agg.reset_index()


def _stat(row, metric: str, adjusted: bool = False):
    n = int(row["units"])
    if metric == "aov":
        m = stats.Mean(n, row["revenue"], row["revenue_sq"])
        d = stats.Mean(n, row["orders"], row["orders_sq"])
        return stats.Ratio(n, m, d, row["revenue_x_orders"])
    _, post, pre, proportion = next(p for p in _PER_UNIT if p[0] == metric)
    post_stat = stats.Mean(n, row[post], row[f"{post}_sq"], proportion)
    if not adjusted:
        return post_stat
    pre_stat = stats.Mean(n, row[pre], row[f"{pre}_sq"], proportion)
    return stats.Adjusted(post_stat, pre_stat, row[f"{post}_x_{pre}"])


def expected_shares(settings, experiment: str, arms: list[str]) -> dict[str, float]:
    """The share of units each arm should get by design (for the sample-ratio check)."""
    kind, _, name = experiment.partition(":")
    if kind == "api":
        exp = settings.serving.experiments.get(name)
        if exp is None:
            return {}
        total = sum(a.weight for a in exp.arms.values()) or 1.0
        shares = {arm: (1 - exp.holdout) * a.weight / total for arm, a in exp.arms.items()}
        return shares | ({"holdout": exp.holdout} if exp.holdout else {})
    if kind == "global":
        g = settings.activation.global_holdout
        return {"holdout": g, "treatment": 1 - g}
    if kind == "journey":
        from p13n.journeys.model import journeys

        share = journeys()[name].holdout if name in journeys() else None
    else:
        audience = settings.activation.audiences.get(name)
        share = audience.holdout if audience is not None else None
    if share is None:
        return {}
    g = settings.activation.global_holdout
    held = g + (1 - g) * share
    return {"holdout": held, "treatment": 1 - held}


def baseline_arm(kind: str, arms: list[str]) -> str:
    if kind != "api":
        return "holdout"
    return "control" if "control" in arms else sorted(arms)[0]


def results(settings, sums: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    """Every non-baseline arm of every experiment against its baseline, per metric (pure)."""
    m = settings.measurement
    rows = []
    for (experiment, kind), arms in sums.groupby(["experiment", "kind"], sort=True):
        by_arm = {r["arm"]: r for _, r in arms.iterrows()}
        base_name = baseline_arm(kind, list(by_arm))
        units = {a: int(r["units"]) for a, r in by_arm.items()}
        shares = expected_shares(settings, experiment, list(by_arm))
        srm = stats.sample_ratio_p(units, shares) if shares else None
        total = sum(units.values())
        base = by_arm.get(base_name)
        for arm, row in sorted(by_arm.items()):
            if arm == base_name:
                continue
            for metric in METRICS:
                common = {
                    "as_of_date": as_of,
                    "experiment": experiment,
                    "kind": kind,
                    "arm": arm,
                    "baseline_arm": base_name,
                    "metric": metric,
                    "units": units[arm],
                    "baseline_units": units.get(base_name, 0),
                    "srm_p_value": srm,
                    "sample_ratio_mismatch": bool(srm is not None and srm < m.srm_alpha),
                    "expected_share": shares.get(arm),
                    "observed_share": units[arm] / total if total else None,
                    "first_entry": min(r["first_entry"] for r in by_arm.values()),
                    "last_entry": max(r["last_entry"] for r in by_arm.values()),
                    "window_days": m.window_days,
                    "window_complete": float(row["window_share"]),
                }
                if base is None:
                    rows.append(common | {"note": f"no units in the baseline arm {base_name!r} yet"})
                    continue
                plain = stats.compare(_stat(base, metric), _stat(row, metric), alpha=m.alpha)
                seq = stats.compare(
                    _stat(base, metric),
                    _stat(row, metric),
                    alpha=m.alpha,
                    sequential_tuning=m.sequential_tuning,
                )
                cuped = (
                    stats.compare(_stat(base, metric, True), _stat(row, metric, True), alpha=m.alpha)
                    if metric != "aov"
                    else None
                )
                incremental = (
                    plain.absolute * units[arm] if metric in ("orders", "revenue", "conversion") else None
                )
                rows.append(
                    common
                    | {
                        "mean": plain.variant_mean,
                        "baseline_mean": plain.baseline_mean,
                        "abs_lift": plain.absolute,
                        "lift": plain.lift,
                        "ci_low": plain.ci_low,
                        "ci_high": plain.ci_high,
                        "p_value": plain.p_value,
                        "cuped_lift": cuped.lift if cuped else None,
                        "cuped_ci_low": cuped.ci_low if cuped else None,
                        "cuped_ci_high": cuped.ci_high if cuped else None,
                        "cuped_p_value": cuped.p_value if cuped else None,
                        "seq_ci_low": seq.ci_low,
                        "seq_ci_high": seq.ci_high,
                        "seq_p_value": seq.p_value,
                        "incremental": incremental,
                        "note": plain.note,
                    }
                )
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return frame


def measure(settings, as_of: dt.date) -> pd.DataFrame:
    """Compute and write the date's `gold.experiment_results` (replacing the date's rows)."""
    import pyarrow as pa

    from p13n.lake.duck import replace_rows

    units = unit_outcomes(settings, as_of)
    frame = results(settings, arm_sums(units), as_of) if len(units) else pd.DataFrame(columns=RESULT_COLUMNS)
    table = pa.Table.from_pandas(
        frame.astype({"note": "string"}), schema=result_schema(), preserve_index=False
    )
    replace_rows(
        settings, GOLD_EXPERIMENT_RESULTS, table, f"as_of_date = '{as_of}'", partition_by=["as_of_date"]
    )
    return frame


def result_schema():
    import pyarrow as pa

    types = {
        "as_of_date": pa.date32(),
        "units": pa.int64(),
        "baseline_units": pa.int64(),
        "sample_ratio_mismatch": pa.bool_(),
        "first_entry": pa.timestamp("us"),
        "last_entry": pa.timestamp("us"),
        "window_days": pa.int32(),
    }
    text = {"experiment", "kind", "arm", "baseline_arm", "metric", "note"}
    return pa.schema([(c, types.get(c, pa.string() if c in text else pa.float64())) for c in RESULT_COLUMNS])
