"""`p13n bench experiments`: gold.experiment_results' estimators beside GrowthBook's, and against a
planted truth.

1. **Agreement with `gbstats`** (GrowthBook's statistics engine, the reference): every comparison
   `p13n.measurement.experiments.results` makes (per metric: Welch t, CUPED, sequential; proportions,
   means and the ratio metric) is recomputed by `gbstats` from the same per-arm sums, on simulated
   experiments and, when the lake has them, on the lake's own experiments of its latest date.
   `gbstats_max_rel_diff`: the largest relative difference of a lift, interval bound or p-value.
2. **Coverage of planted lifts**: `--reps` × 72 simulated experiments (`p13n.measurement.simulate`,
   `--rows` customers each, default 20,000), in turn one of `DESIGNS`: an audience holdout (8%), an
   email trigger (10%) and a push trigger (3%) against their holdouts, and API arms (+6% and +2%
   against control); the share of 95% intervals that cover the true lift, per metric and per design
   (nominal 0.95), and the CUPED interval's width against the plain one's (below 1: CUPED narrows it).
   **Attribution's planted truth**: journeys walked on a known Markov chain
   (`simulate.PLANTED_CHAIN`), whose removal effects are known exactly; the Markov model's estimates
   from 50,000 journeys (Spark, as the nightly credits them) against them, and last touch's shares
   against the true shares, to show what a heuristic misses.
3. **Attribution beside `marketing-attribution-models`**: the journeys of the lake's latest scored
   date, credited by `p13n.measurement.attribution` (Spark) and by the package (Polars) on the same
   paths. `attribution_max_rel_diff`: the largest relative difference of a channel's credited revenue
   (five rule-based models) or Markov removal effect.
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pandas as pd

from p13n.measurement.experiments import RESULT_COLUMNS
from p13n.spark import to_pandas

LIFT = 0.08
# The planted designs, in turn: (experiment, lift: a treated share's, or each API arm's)
DESIGNS: tuple[tuple[str, float | dict[str, float]], ...] = (
    ("audience:simulated", LIFT),
    ("trigger:checkout_abandoned", 0.10),  # an email trigger
    ("trigger:back_in_stock", 0.03),  # a push trigger
    ("api:simulated", {"control": 0.0, "als": 0.06, "popular": 0.02}),
)


def gbstats_results(settings, sums: pd.DataFrame) -> pd.DataFrame:
    """The same comparisons as `results`, made by gbstats from the same sums (rows keyed alike)."""
    from gbstats.frequentist.tests import (
        FrequentistConfig,
        SequentialConfig,
        SequentialTwoSidedTTest,
        TwoSidedTTest,
    )
    from gbstats.models.statistics import (
        ProportionStatistic,
        RatioStatistic,
        RegressionAdjustedStatistic,
        SampleMeanStatistic,
    )

    from p13n.measurement.experiments import METRICS, baseline_arm

    m = settings.measurement

    def stat(r, metric: str, adjusted: bool = False):
        n = int(r["units"])
        if metric == "aov":
            return RatioStatistic(
                n=n,
                m_statistic=SampleMeanStatistic(n=n, sum=r["revenue"], sum_squares=r["revenue_sq"]),
                d_statistic=SampleMeanStatistic(n=n, sum=r["orders"], sum_squares=r["orders_sq"]),
                m_d_sum_of_products=r["revenue_x_orders"],
            )
        post, pre = {"conversion": ("converted", "pre_converted"), "orders": ("orders", "pre_orders")}.get(
            metric, ("revenue", "pre_revenue")
        )

        def one(col):
            if metric == "conversion":
                return ProportionStatistic(n=n, sum=r[col])
            return SampleMeanStatistic(n=n, sum=r[col], sum_squares=r[f"{col}_sq"])

        if not adjusted:
            return one(post)
        return RegressionAdjustedStatistic(
            n=n,
            post_statistic=one(post),
            pre_statistic=one(pre),
            post_pre_sum_of_products=r[f"{post}_x_{pre}"],
            theta=0,
        )

    rows = []
    for (experiment, kind), arms in sums.groupby(["experiment", "kind"]):
        by_arm = {r["arm"]: r for _, r in arms.iterrows()}
        base_name = baseline_arm(kind, list(by_arm))
        if base_name not in by_arm:
            continue
        base = by_arm[base_name]
        for arm, r in by_arm.items():
            if arm == base_name:
                continue
            for metric in METRICS:
                plain = TwoSidedTTest(stat(base, metric), stat(r, metric), FrequentistConfig(alpha=m.alpha))
                seq = SequentialTwoSidedTTest(
                    stat(base, metric),
                    stat(r, metric),
                    SequentialConfig(alpha=m.alpha, sequential_tuning_parameter=m.sequential_tuning),
                )
                out = {"experiment": experiment, "arm": arm, "metric": metric}
                for prefix, test in (("", plain), ("seq_", seq)):
                    res = test.compute_result()
                    if res.error_message is None:
                        out |= {f"{prefix}ci_low": res.ci[0], f"{prefix}ci_high": res.ci[1]}
                        out |= {f"{prefix}p_value": res.p_value}
                        if not prefix:
                            out["lift"] = res.expected
                if metric != "aov":
                    res = TwoSidedTTest(
                        stat(base, metric, True), stat(r, metric, True), FrequentistConfig(alpha=m.alpha)
                    ).compute_result()
                    if res.error_message is None:
                        out |= {
                            "cuped_lift": res.expected,
                            "cuped_ci_low": res.ci[0],
                            "cuped_ci_high": res.ci[1],
                        }
                        out["cuped_p_value"] = res.p_value
                rows.append(out)
    return pd.DataFrame(rows)


# Every estimate both engines give: the lifts, interval bounds and p-values of gold.experiment_results.
COMPARED = tuple(
    c
    for c in RESULT_COLUMNS
    if c.endswith(("lift", "ci_low", "ci_high", "p_value")) and c not in ("abs_lift", "srm_p_value")
)


def max_rel_diff(ours: pd.DataFrame, reference: pd.DataFrame) -> tuple[float, int]:
    """(the largest relative difference over every compared value both define, values compared)."""
    keys = ["experiment", "arm", "metric"]
    both = ours.merge(reference, on=keys, suffixes=("", "_ref"))
    worst, compared = 0.0, 0
    for c in COMPARED:
        if f"{c}_ref" not in both:
            continue
        a = pd.to_numeric(both[c], errors="coerce").to_numpy(float)
        b = pd.to_numeric(both[f"{c}_ref"], errors="coerce").to_numpy(float)
        ok = np.isfinite(a) & np.isfinite(b)
        if not ok.any():
            continue
        diff = np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1e-12)
        worst, compared = max(worst, float(diff.max())), compared + int(ok.sum())
    return worst, compared


def mam_credits(paths: pd.DataFrame, half_life_hours: float) -> pd.DataFrame:
    """model, channel, revenue (heuristics) and removal_effect (markov) by `marketing-attribution-models`
    on the journeys `paths` (JOURNEY_COLUMNS, those with at least one touch)."""
    from mam import MAM

    mam = MAM(
        pd.DataFrame(
            {
                "journey_id": paths["journey_id"],
                "channels": paths["channels"].map(" > ".join),
                "hours": paths["hours_before"].map(lambda h: " > ".join(repr(float(x)) for x in h)),
                "converted": paths["converted"],
                "value": paths["revenue"],
            }
        ),
        format_type="journey",
        channels_colname="channels",
        journey_with_conv_colname="converted",
        user_id_colname="journey_id",
        time_till_conv_colname="hours",
        conversion_value_colname="value",
    )
    runs = {
        "first_touch": mam.run_first_click(),
        "last_touch": mam.run_last_click(),
        "linear": mam.run_linear(),
        "position_based": mam.run_position_based(),
        "time_decay": mam.run_time_decay(half_life_hours),
    }
    rows = [
        {"model": model, "channel": str(ch), "revenue": float(v)}
        for model, res in runs.items()
        for ch, v in res.to_pandas().set_index("channels")["attribution"].items()
    ]
    effects = mam.run_markov().metadata["removal_effect"]["removal_effect"]
    rows += [{"model": "markov", "channel": ch, "removal_effect": float(v)} for ch, v in effects.items()]
    return pd.DataFrame(rows)


def attribution_diff(ours: pd.DataFrame, reference: pd.DataFrame) -> tuple[float, int]:
    """(largest relative difference of a credited revenue or removal effect, values compared)."""
    both = ours.merge(reference, on=["model", "channel"], suffixes=("", "_ref"))
    worst, n = 0.0, 0
    for col in ("revenue", "removal_effect"):
        ref = both[f"{col}_ref"]
        rows = both[ref.notna() & (ref.abs() > 1e-9)]
        if col == "revenue":
            rows = rows[rows["model"] != "markov"]  # mam splits Markov credit per journey, not in total
        if len(rows):
            diff = (rows[col] - rows[f"{col}_ref"]).abs() / rows[f"{col}_ref"].abs()
            worst, n = max(worst, float(diff.max())), n + len(rows)
    return worst, n


def _lake_attribution(settings, figures: dict) -> float | None:
    """Journeys of the lake's latest scored date, credited by p13n and by mam."""
    from p13n.customers.pipeline import read_activity
    from p13n.lake.tables import GOLD_SEGMENTS
    from p13n.measurement import attribution as attr
    from p13n.session import lake

    lk = lake()
    if not lk.exists(GOLD_SEGMENTS):
        return None
    day = lk.read(GOLD_SEGMENTS).agg({"as_of_date": "max"}).first()[0]
    m = settings.measurement
    activity = read_activity(lk)
    end = day + dt.timedelta(days=1)
    j = attr.journeys(
        attr.touchpoints(activity.events, activity.messages),
        attr.conversions(activity.lines),
        end - dt.timedelta(days=m.attribution_days),
        end,
        m.lookback_days,
        m.max_touches,
    ).cache()
    paths = to_pandas(j)  # built once: both are timed from the same journeys
    t0 = time.perf_counter()
    ours = attr.attribution(j, m.half_life_hours)
    figures["attribution_seconds_p13n"] = round(time.perf_counter() - t0, 2)
    paths = paths[paths["channels"].map(len) > 0]
    t0 = time.perf_counter()
    reference = mam_credits(paths, m.half_life_hours)
    figures["attribution_seconds_mam"] = round(time.perf_counter() - t0, 2)
    worst, n = attribution_diff(ours, reference)
    figures["attribution_date"] = day.isoformat()
    figures["attribution_journeys"] = len(paths)
    figures["attribution_values_compared"] = n
    return worst


def bench_experiments(rows: int | None = None, reps: int = 3) -> dict:
    from p13n.config import get_settings
    from p13n.measurement import simulate
    from p13n.measurement.experiments import arm_sums, results, unit_outcomes

    settings = get_settings()
    n = rows or 20_000
    day = dt.date(2024, 3, 1)
    figures: dict = {}
    t0 = time.perf_counter()
    window = settings.measurement.window_days

    def truth_of(lift, arm: str) -> dict[str, float]:
        if isinstance(lift, dict):
            return simulate.true_lifts(lift[arm], window, 0.6, 0.02, baseline=lift["control"])
        return simulate.true_lifts(lift, window, 0.6, 0.02)

    covered: dict[str, list[bool]] = {}
    widths, diffs, compared = [], [], 0
    runs = reps * 72
    for seed in range(runs):
        experiment, lift = DESIGNS[seed % len(DESIGNS)]
        sums = arm_sums(simulate.units(n, seed=seed, lift=lift, window_days=window, experiment=experiment))
        ours = results(settings, sums, day)
        for _, r in ours.iterrows():
            hit = bool(r["ci_low"] <= truth_of(lift, r["arm"])[r["metric"]] <= r["ci_high"])
            covered.setdefault(r["metric"], []).append(hit)
            covered.setdefault(f"design_{experiment.replace(':', '_')}", []).append(hit)
            if r["metric"] == "revenue":
                widths.append((r["cuped_ci_high"] - r["cuped_ci_low"]) / (r["ci_high"] - r["ci_low"]))
        worst, k = max_rel_diff(ours, gbstats_results(settings, sums))
        diffs.append(worst)
        compared += k
        if (seed + 1) % 24 == 0:
            print(f"  {seed + 1}/{runs} simulated experiments", flush=True)
    figures["simulated_experiments"] = runs
    figures["simulated_units"] = n
    figures["planted_lift"] = LIFT
    for key, hits in covered.items():
        figures[f"coverage_{key}"] = round(float(np.mean(hits)), 3)
    figures["cuped_width_ratio_revenue"] = round(float(np.mean(widths)), 4)
    figures["seconds_simulated"] = round(time.perf_counter() - t0, 1)

    from p13n.lake.duck import duckdb_connection, scan, table_exists
    from p13n.lake.tables import GOLD_EXPERIMENT_RESULTS

    lake_compared = 0
    if table_exists(settings.lake_root, GOLD_EXPERIMENT_RESULTS):
        latest = (
            duckdb_connection(settings=settings)
            .execute(f"SELECT max(as_of_date) FROM {scan(settings.lake_root, GOLD_EXPERIMENT_RESULTS)}")
            .fetchone()[0]
        )
        if latest is not None:
            sums = arm_sums(unit_outcomes(settings, latest))
            if len(sums):
                worst, lake_compared = max_rel_diff(
                    results(settings, sums, latest), gbstats_results(settings, sums)
                )
                diffs.append(worst)
                figures["lake_date"] = latest.isoformat()
    figures["lake_values_compared"] = lake_compared
    figures["values_compared"] = compared + lake_compared
    figures["gbstats_max_rel_diff"] = float(max(diffs)) if diffs else float("nan")
    worst = _lake_attribution(settings, figures)
    figures["attribution_max_rel_diff"] = float("nan") if worst is None else worst
    figures |= planted_attribution()
    return figures


def planted_attribution(journeys: int = 50_000, seed: int = 11) -> dict:
    """The Markov model's removal effects on journeys walked on `simulate.PLANTED_CHAIN` against the
    chain's true ones, and last touch's shares against the true shares (normalized effects)."""
    from p13n.measurement import attribution as attr
    from p13n.measurement import simulate
    from p13n.session import spark

    truth = pd.Series(simulate.true_removal_effects())
    paths = simulate.markov_journeys(journeys, seed=seed)
    ours = attr.attribution(spark().createDataFrame(paths))
    markov = ours[ours["model"] == "markov"].set_index("channel")
    last = ours[ours["model"] == "last_touch"].set_index("channel")["share"]
    true_share = truth / truth.sum()
    out = {"planted_journeys": journeys}
    for channel in truth.index:
        shares = (true_share[channel], markov["share"].get(channel, 0.0), last.get(channel, 0.0))
        out[f"planted_share_{channel}"] = "true {:.3f}, markov {:.3f}, last touch {:.3f}".format(*shares)
    out["planted_markov_max_abs_diff"] = round(
        float((markov["removal_effect"].reindex(truth.index).fillna(0.0) - truth).abs().max()), 4
    )
    out["planted_last_touch_share_max_abs_diff"] = round(
        float((last.reindex(truth.index).fillna(0.0) - true_share).abs().max()), 4
    )
    return out
