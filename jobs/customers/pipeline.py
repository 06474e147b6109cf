"""Customer intelligence over the lake: the IO edge around the feature transforms and the models.

Every table is partitioned by `as_of_date` (the run's date) and a run replaces its own partition, so
a rerun or a backfill of a date gives the same rows and history stays queryable:

* `gold.customer_features`, `gold.customer_affinities` — `build_customer_features`
* `gold.churn_scores` — `score_churn`: train on features as of two horizons back, evaluate on one
  horizon back, gate against the champion, score today's features with the champion
* `gold.clv` — `score_clv`: BG/NBD + Gamma-Gamma fitted through the holdout start, judged on the
  holdout, gated, and the champion scores every customer's full history
* `gold.segments` and `gold.send_times` — `segment_customers`: RFM, k-means clusters with personas
  (gated like the others), lifecycle stage from cadence + the two models above, best send time
* `ops.model_runs` — one row per model per run: version, gate decision, metrics
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from p13n.config import Settings
from p13n.customers import activity as act
from p13n.customers import features_duckdb as duck
from p13n.customers.features import affinities, build_features, interval_end, orders_of
from p13n.lake import Lake
from p13n.lake.core import content_key_of
from p13n.lake.tables import (
    GOLD_CHURN_SCORES,
    GOLD_CLV,
    GOLD_CUSTOMER_AFFINITIES,
    GOLD_CUSTOMER_FEATURES,
    GOLD_CUSTOMER_PROFILES,
    GOLD_IDENTITY_KEYS,
    GOLD_SEGMENTS,
    GOLD_SEND_TIMES,
    silver_table,
)
from p13n.models import churn as churn_model
from p13n.models import clv as clv_model
from p13n.models import segments as seg_model
from p13n.models import sendtime
from p13n.models.lifecycle import Lifecycle, ModelRun, scalars
from p13n.models.registry import log_sklearn
from p13n.runctx import RunContext
from p13n.spark import to_pandas

INPUTS = {
    "keys": GOLD_IDENTITY_KEYS,
    "profiles": GOLD_CUSTOMER_PROFILES,
    "products": silver_table("products"),
    "shopify_orders": silver_table("shopify_orders"),
    "shopify_lines": silver_table("shopify_order_lines"),
    "square_transactions": silver_table("square_transactions"),
    "square_lines": silver_table("square_line_items"),
    "legacy_sales": silver_table("legacy_pos_sales"),
    "web": silver_table("web_clickstream"),
    "app": silver_table("app_events"),
    "klaviyo": silver_table("klaviyo_events"),
    "mailchimp": silver_table("mailchimp_activity"),
    "sms": silver_table("sms_events"),
    "returns": silver_table("returns"),
    "loyalty": silver_table("loyalty_members"),
}
Progress = Callable[[str], None]


@dataclass
class Activity:
    """The attributed activity every step reads (Spark DataFrames, cached)."""

    customers: DataFrame
    lines: DataFrame
    events: DataFrame
    messages: DataFrame
    returns: DataFrame
    loyalty: DataFrame
    versions: dict[str, int]
    contents: dict[str, str]  # each input's `Lake.content_key` at the version read
    # Where `feature_frame` computes (`customers.features_engine`, resolved): duckdb or spark.
    engine: str = "spark"
    _local: tuple[duck.LocalActivity, object] | None = field(default=None, repr=False)

    def run_key(self, as_of: dt.date) -> str:
        """The date and what every input holds: what a rerun has in common with its first run (a
        rerun's ingestion and the night's compaction make new versions of the same rows)."""
        from p13n.models.registry import run_key

        return run_key(as_of, self.contents)

    def features(self, as_of: dt.date) -> DataFrame:
        return build_features(
            self.customers, self.lines, self.events, self.messages, self.returns, self.loyalty, as_of
        )

    def local(self):
        """The activity as Arrow in this process and a DuckDB connection over it (pulled once)."""
        if self._local is None:
            frames = ("customers", "lines", "events", "messages", "returns", "loyalty")
            local = duck.LocalActivity(**{name: getattr(self, name).toArrow() for name in frames})
            self._local = (local, local.connect())
        return self._local

    def feature_frame(self, as_of: dt.date) -> pd.DataFrame:
        """`features(as_of)` as pandas, computed by the activity's engine."""
        if self.engine == "duckdb":
            local, con = self.local()
            frame = duck.build_features(local, as_of, con).to_pandas()
            for col in ("first_purchase_at", "last_purchase_at"):  # naive UTC, as Spark's toPandas gives
                frame[col] = frame[col].dt.tz_convert("UTC").dt.tz_localize(None)
            return frame
        return to_pandas(self.features(as_of))

    def later_orders(self, start: dt.date, days: int) -> pd.Series:
        """Orders per customer in the `days` after the end of `start` (the churn label's window)."""
        lo = interval_end(start)
        hi = lo + dt.timedelta(days=days)
        if self.engine == "duckdb":
            _, con = self.local()
            counts = con.execute(duck.LATER_ORDERS, {"lo": lo, "hi": hi}).df()
        else:
            o = orders_of(self.lines).filter(
                (F.col("ordered_at") >= F.lit(lo)) & (F.col("ordered_at") < F.lit(hi))
            )
            counts = to_pandas(o.groupBy("customer_id").count())
        return counts.set_index("customer_id")["count"]


def features_engine(lake: Lake, settings: Settings | None = None) -> str:
    """`customers.features_engine`, with `auto` resolved by the customer profiles' row count (from the
    Delta log: no scan)."""
    from p13n.config import get_settings

    cfg = (settings or get_settings()).customers
    if cfg.features_engine != "auto":
        return cfg.features_engine
    profiles = lake.info(GOLD_CUSTOMER_PROFILES).rows
    return "duckdb" if 0 <= profiles <= cfg.features_duckdb_max_customers else "spark"


def read_activity(lake: Lake, settings: Settings | None = None) -> Activity:
    missing = [t for t in INPUTS.values() if not lake.exists(t)]
    if missing:
        raise FileNotFoundError(
            f"customer intelligence needs {', '.join(missing)}: ingest the sources and resolve identities "
            "first"
        )
    opened = {table: lake.delta_table(table) for table in INPUTS.values()}  # each log read once
    t = {name: lake.read(table) for name, table in INPUTS.items()}
    push = silver_table("push_notifications")  # optional: push engagement needs the app's devices
    t["push"] = lake.read(push) if lake.exists(push) else None
    keys = t["keys"].cache()
    lines = act.purchase_lines(
        keys,
        t["products"],
        t["shopify_orders"],
        t["shopify_lines"],
        t["square_transactions"],
        t["square_lines"],
        t["legacy_sales"],
    ).cache()
    return Activity(
        customers=t["profiles"].select("customer_id", "first_seen_at"),
        lines=lines,
        events=act.behaviour_events(keys, t["web"], t["app"]).cache(),
        messages=act.message_events(
            keys, t["klaviyo"], t["mailchimp"], t["sms"], t["push"], t["app"]
        ).cache(),
        returns=act.returned_items(t["returns"], lines),
        loyalty=act.loyalty_status(keys, t["loyalty"]),
        versions={table: d.version() for table, d in opened.items()},
        contents={table: content_key_of(d) for table, d in opened.items()},
        engine=features_engine(lake, settings),
    )


# ---------------------------------------------------------------------------------- features
def build_customer_features(
    lake: Lake, activity: Activity, as_of: dt.date, run: RunContext | None = None
) -> dict:
    if activity.engine == "duckdb":
        return _build_features_duckdb(lake, activity, as_of, run)
    features = activity.features(as_of).cache()
    # Counted first (it fills the cache): a partition known to be small is written by this process
    # from Arrow, not by a distributed Spark write (`lake.client_write_max_rows`).
    customers = features.count()
    n = lake.replace_partition(
        GOLD_CUSTOMER_FEATURES, features, "as_of_date", as_of, run=run, rows_at_most=customers
    ).rows_written
    lake.replace_partition(
        GOLD_CUSTOMER_AFFINITIES,
        affinities(activity.lines, as_of),
        "as_of_date",
        as_of,
        run=run,
        rows_at_most=customers * 2 * 3,  # at most the top 3 categories and brands of each
    )
    sold = activity.lines.filter(F.col("ordered_at") < F.lit(interval_end(as_of)))
    share = sold.select(F.avg(F.col("customer_id").isNull().cast("double"))).first()[0]
    buyers = features.filter("orders_total > 0").count()
    features.unpersist()
    return {"customers": n, "buyers": buyers, "unattributed_line_share": round(float(share or 0.0), 4)}


def _build_features_duckdb(lake: Lake, activity: Activity, as_of: dt.date, run: RunContext | None) -> dict:
    local, con = activity.local()
    features = duck.build_features(local, as_of, con)
    n = lake.replace_partition_rows(
        GOLD_CUSTOMER_FEATURES, features, "as_of_date", as_of, run=run
    ).rows_written
    lake.replace_partition_rows(
        GOLD_CUSTOMER_AFFINITIES, duck.affinities(local, as_of, con), "as_of_date", as_of, run=run
    )
    share = con.execute(duck.UNATTRIBUTED, {"end": interval_end(as_of)}).fetchone()[0]
    buyers = int(pa.compute.sum(pa.compute.greater(features["orders_total"], 0)).as_py() or 0)
    return {"customers": n, "buyers": buyers, "unattributed_line_share": round(float(share or 0.0), 4)}


def read_features(lake: Lake, as_of: dt.date) -> pd.DataFrame:
    df = to_pandas(lake.read(GOLD_CUSTOMER_FEATURES, where=[("as_of_date", "=", as_of)]))
    if df.empty:
        raise LookupError(
            f"{GOLD_CUSTOMER_FEATURES} has no rows for as_of_date {as_of}: run the features step first"
        )
    return df.sort_values("customer_id").reset_index(drop=True)


# ------------------------------------------------------------------------------ model runs
def _save_figure(mlflow, fig, name: str) -> None:
    mlflow.log_figure(fig, name)
    import matplotlib.pyplot as plt

    plt.close(fig)


# ------------------------------------------------------------------------------------ churn
def score_churn(
    lake: Lake,
    settings: Settings,
    activity: Activity,
    as_of: dt.date,
    run: RunContext | None = None,
    progress: Progress = print,
) -> ModelRun:
    life = Lifecycle(settings, "churn")
    cfg = settings.customers
    w = cfg.churn_horizon_days
    train_at, eval_at = as_of - dt.timedelta(days=2 * w), as_of - dt.timedelta(days=w)
    sets = {}
    for name, cutoff in (("train", train_at), ("eval", eval_at)):
        f = activity.feature_frame(cutoff)
        f = f[f["orders_total"] > 0].reset_index(drop=True)
        f["churned"] = churn_model.label(f, activity.later_orders(cutoff, w))
        sets[name] = f
        progress(
            f"churn: {len(f):,} customers as of {cutoff}, {f['churned'].mean():.1%} churned in the next {w} "
            "days"
        )
    if sets["train"].empty:
        raise ValueError(
            f"churn: no customer had bought before {train_at}, the training cutoff ({2 * w} days before "
            f"{as_of}: twice customers.churn_horizon_days); the purchase history must reach back that far"
        )
    model = churn_model.train_churn(sets["train"], sets["train"]["churned"], seed=cfg.seed)
    ev = sets["eval"]
    metrics = churn_model.evaluate_churn(ev["churned"], churn_model.predict_churn(model, ev))
    champ = life.champion_metrics(
        lambda m: churn_model.evaluate_churn(ev["churned"], churn_model.predict_churn(m, ev))
    )
    params = {
        "horizon_days": w,
        "train_cutoff": train_at,
        "eval_cutoff": eval_at,
        "train_customers": len(sets["train"]),
    }
    with life.tracked(as_of, params, activity.versions) as mlflow:
        mlflow.log_metrics(scalars(metrics))
        mlflow.log_dict({k: metrics[k] for k in ("calibration", "gains")}, "evaluation.json")
        _save_figure(mlflow, _churn_figure(metrics), "churn_lift_and_calibration.png")
        info = log_sklearn(model)
        decision = life.gate(info.model_uri, metrics, champ, activity.run_key(as_of))
    progress(decision.summary())
    scorer = life.serving()
    today = read_features(lake, as_of)
    buyers = today[today["orders_total"] > 0].reset_index(drop=True)
    p = churn_model.predict_churn(scorer, buyers)
    bands = cfg.churn_bands
    scores = pd.DataFrame(
        {
            "customer_id": buyers["customer_id"],
            "as_of_date": as_of,
            "churn_probability": np.round(p, 4),
            "risk_band": churn_model.risk_band(p, bands["medium"], bands["high"]),
            "horizon_days": w,
            "model_version": life.champion_version(),
        }
    )
    lake.replace_partition_rows(GOLD_CHURN_SCORES, scores, "as_of_date", as_of, run=run)
    return life.record(lake, as_of, scalars(metrics), len(scores), run)


def _churn_figure(metrics: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    gains = metrics["gains"]
    x = np.linspace(0, 1, len(gains))
    a.plot(x, gains, label="model")
    a.plot([0, 1], [0, 1], "--", color="grey", label="random")
    a.set(
        title=f"Cumulative gains (top-decile lift {metrics['lift_top_decile']})",
        xlabel="share of customers, riskiest first",
        ylabel="share of churners found",
    )
    a.legend()
    cal = metrics["calibration"]
    b.plot([c["predicted"] for c in cal], [c["observed"] for c in cal], "o-", label="model")
    b.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    b.set(
        title=f"Calibration (ECE {metrics['ece']})",
        xlabel="predicted churn probability",
        ylabel="observed churn rate",
    )
    b.legend()
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------- CLV
class CLVModel:
    """BG/NBD + Gamma-Gamma as an MLflow python model (`predict` gives the CLV table of a summary)."""

    def __init__(self, bg: clv_model.BetaGeo, gg: clv_model.GammaGamma, months: int, discount: float):
        self.bg, self.gg, self.months, self.discount = bg, gg, months, discount

    def score(self, summary: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "expected_purchases_365d": clv_model.expected_purchases(self.bg, summary, 365.0),
                "probability_alive": clv_model.probability_alive(self.bg, summary),
                "expected_order_value": clv_model.expected_spend(self.gg, summary),
                "clv_12m": clv_model.lifetime_value(self.bg, self.gg, summary, self.months, self.discount),
            },
            index=summary.index,
        )


def _pyfunc(model: CLVModel):
    import mlflow.pyfunc

    class _Wrapped(mlflow.pyfunc.PythonModel):
        def __init__(self, inner):
            self.inner = inner

        def predict(self, context, model_input, params=None):
            return self.inner.score(model_input)

    return _Wrapped(model)


def _order_history(activity: Activity, as_of: dt.date) -> pd.DataFrame:
    return to_pandas(
        orders_of(activity.lines)
        .filter(F.col("ordered_at") < F.lit(interval_end(as_of)))
        .select("customer_id", F.to_date("ordered_at").alias("date"), "amount_usd")
    )


def score_clv(
    lake: Lake,
    settings: Settings,
    activity: Activity,
    as_of: dt.date,
    run: RunContext | None = None,
    progress: Progress = print,
) -> ModelRun:
    import mlflow

    life = Lifecycle(settings, "clv", flavor="pyfunc")

    cfg = settings.customers
    history = _order_history(activity, as_of)
    cal_end = as_of - dt.timedelta(days=cfg.clv_holdout_days)
    holdout = clv_model.summarize(history, "customer_id", "date", "amount_usd", cal_end, as_of)
    bg, gg = clv_model.fit_bgnbd(holdout), clv_model.fit_gamma_gamma(holdout)
    metrics = _clv_metrics(CLVModel(bg, gg, cfg.clv_months, cfg.clv_monthly_discount), holdout)
    progress(
        f"clv: BG/NBD r={bg.r:.3f} alpha={bg.alpha:.2f} a={bg.a:.3f} b={bg.b:.3f}; Gamma-Gamma p={gg.p:.2f} "
        f"q={gg.q:.2f} gamma={gg.gamma:.2f}"
    )
    champ = life.champion_metrics(lambda m: _clv_metrics(m, holdout))
    summary = clv_model.summarize(history, "customer_id", "date", "amount_usd", as_of, as_of)
    params = {
        "calibration_end": cal_end,
        "holdout_days": cfg.clv_holdout_days,
        "months": cfg.clv_months,
        "monthly_discount": cfg.clv_monthly_discount,
    }
    with life.tracked(as_of, params, activity.versions):
        mlflow.log_params({f"bgnbd.{k}": round(v, 6) for k, v in bg.params().items()})
        mlflow.log_params({f"gamma_gamma.{k}": round(v, 6) for k, v in gg.params().items()})
        mlflow.log_metrics(metrics)
        model = CLVModel(bg, gg, cfg.clv_months, cfg.clv_monthly_discount)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=_pyfunc(model), pip_requirements=["scipy", "pandas"]
        )
        decision = life.gate(info.model_uri, metrics, champ, activity.run_key(as_of))
        scorer = life.serving().inner
        scored = scorer.score(summary)
        _save_figure(mlflow, _clv_figure(scored, holdout, scorer), "clv_distribution_and_holdout.png")
    progress(decision.summary())
    out = summary.join(scored).reset_index()
    table = pd.DataFrame(
        {
            "customer_id": out["customer_id"],
            "as_of_date": as_of,
            "repeat_purchases": out["frequency"].astype(int),
            "recency_days": out["recency"].round(1),
            "age_days": out["T"].round(1),
            "expected_purchases_365d": out["expected_purchases_365d"].round(3),
            "probability_alive": out["probability_alive"].round(4),
            "expected_order_value": out["expected_order_value"].round(2),
            "clv_12m": out["clv_12m"].round(2),
            "model_version": life.champion_version(),
        }
    )
    lake.replace_partition_rows(GOLD_CLV, table, "as_of_date", as_of, run=run)
    return life.record(lake, as_of, metrics, len(table), run)


def _clv_metrics(model, holdout: pd.DataFrame) -> dict:
    inner = getattr(model, "inner", model)
    m = clv_model.evaluate_holdout(inner.bg, holdout)
    m["holdout_aggregate_error_abs"] = abs(m["holdout_aggregate_error"])
    return m


def _clv_figure(scored: pd.DataFrame, holdout: pd.DataFrame, model: CLVModel):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.hist(scored["clv_12m"].clip(upper=scored["clv_12m"].quantile(0.99)), bins=50)
    a.set(title="12-month CLV per customer", xlabel="USD (99th percentile cap)", ylabel="customers")
    predicted = clv_model.expected_purchases(model.bg, holdout, float(holdout["holdout_duration"].iloc[0]))
    bucket = holdout["frequency"].clip(upper=7).astype(int)
    by = (
        pd.DataFrame({"bucket": bucket, "actual": holdout["holdout_frequency"], "predicted": predicted})
        .groupby("bucket")
        .mean()
    )
    b.plot(by.index, by["actual"], "o-", label="actual")
    b.plot(by.index, by["predicted"], "s--", label="BG/NBD")
    b.set(
        title="Holdout purchases by calibration repeat purchases",
        xlabel="repeat purchases (7 = 7+)",
        ylabel="mean holdout purchases",
    )
    b.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------- segments
def segment_customers(
    lake: Lake,
    settings: Settings,
    activity: Activity,
    as_of: dt.date,
    run: RunContext | None = None,
    progress: Progress = print,
    truth: pd.DataFrame | None = None,
) -> ModelRun:
    life = Lifecycle(settings, "segments")

    cfg = settings.customers
    f = read_features(lake, as_of)
    pipeline, k, scores = seg_model.train_clusters(f, tuple(cfg.cluster_k), seed=cfg.seed)
    metrics = {"k": k, "silhouette": round(seg_model.silhouette(pipeline, f, seed=cfg.seed), 4)}
    champ = life.champion_metrics(lambda m: {"silhouette": seg_model.silhouette(m, f, seed=cfg.seed)})
    with life.tracked(as_of, {"k_range": str(cfg.cluster_k), "chosen_k": k}, activity.versions) as mlflow:
        mlflow.log_metrics(metrics | {f"silhouette_k{kk}": v for kk, v in scores.items()})
        info = log_sklearn(pipeline)
        decision = life.gate(info.model_uri, metrics, champ, activity.run_key(as_of))
        scorer = life.serving()
        clusters = seg_model.assign_clusters(scorer, f)
        personas = seg_model.keep_names(
            seg_model.personas(f, clusters),
            pd.Series(clusters.to_numpy(), index=f["customer_id"]),
            _previous_personas(lake, as_of),
        )
        mlflow.log_dict({str(c): p for c, p in personas.items()}, "personas.json")
        _save_figure(mlflow, _cluster_figure(personas), "cluster_profiles.png")
    progress(decision.summary())
    for p in sorted(personas.values(), key=lambda p: -p["size"]):
        progress(f"  cluster {p['cluster']}: {p['persona']} ({p['description']})")
    rfm = seg_model.rfm(f)
    churn = _partition(lake, GOLD_CHURN_SCORES, as_of, ["customer_id", "churn_probability", "risk_band"])
    clv = _partition(lake, GOLD_CLV, as_of, ["customer_id", "probability_alive", "clv_12m"])
    base = (
        f[["customer_id"]].merge(churn, on="customer_id", how="left").merge(clv, on="customer_id", how="left")
    )
    stages = seg_model.lifecycle(f, base["probability_alive"], base["risk_band"], cfg.new_customer_days)
    table = pd.DataFrame(
        {
            "customer_id": f["customer_id"],
            "as_of_date": as_of,
            "r_score": rfm["r_score"].astype(int),
            "f_score": rfm["f_score"].astype(int),
            "m_score": rfm["m_score"].astype(int),
            "rfm_score": rfm["rfm_score"],
            "rfm_segment": rfm["rfm_segment"],
            "cluster": clusters.astype(int),
            "persona": clusters.map(lambda c: personas[int(c)]["persona"]),
            "lifecycle_stage": stages["lifecycle_stage"],
            "churn_risk_band": base["risk_band"],
            "clv_12m": base["clv_12m"],
            "model_version": life.champion_version(),
        }
    )
    lake.replace_partition_rows(GOLD_SEGMENTS, table, "as_of_date", as_of, run=run)
    send = _send_times(lake, settings, activity, as_of, table)
    metrics |= {f"stage_{s}": int((table["lifecycle_stage"] == s).sum()) for s in seg_model.STAGES}
    metrics |= {"send_time_own_share": round(float((send["basis"] == "customer").mean()), 4)}
    if truth is not None:
        metrics |= _send_time_accuracy(send, truth)
    out = life.record(lake, as_of, metrics, len(table), run)
    return out


def _previous_personas(lake: Lake, as_of: dt.date) -> pd.Series | None:
    """Each customer's persona on the latest scoring date before `as_of` (None on the first)."""
    if not lake.exists(GOLD_SEGMENTS):
        return None
    before = lake.read(GOLD_SEGMENTS, columns=["as_of_date"]).filter(F.col("as_of_date") < F.lit(as_of))
    last = before.agg(F.max("as_of_date")).first()[0]
    if last is None:
        return None
    rows = _partition(lake, GOLD_SEGMENTS, last, ["customer_id", "persona", "cluster"])
    rows = rows[rows["cluster"] >= 0]
    return rows.set_index("customer_id")["persona"]


def _partition(lake: Lake, table: str, as_of: dt.date, columns: list[str]) -> pd.DataFrame:
    if not lake.exists(table):
        return pd.DataFrame(columns=columns)
    return to_pandas(lake.read(table, where=[("as_of_date", "=", as_of)], columns=columns))


def _send_times(lake: Lake, settings: Settings, activity: Activity, as_of: dt.date, segments: pd.DataFrame):
    end = interval_end(as_of)
    start = end - dt.timedelta(days=settings.customers.send_time_days)
    msgs = to_pandas(
        activity.messages.filter(
            (F.col("at") >= F.lit(start)) & (F.col("at") < F.lit(end)) & (F.col("channel") != "push")
        ).select(  # email and SMS engagement: the hours a customer reads; a push is opened when it arrives
            "customer_id", "at", "event"
        )
    )
    by_segment = segments.set_index("customer_id")["persona"]
    send = sendtime.best_send_times(
        msgs, by_segment, segments["customer_id"], min_customer_opens=settings.customers.send_time_min_opens
    )
    send["as_of_date"] = as_of
    lake.replace_partition_rows(GOLD_SEND_TIMES, send, "as_of_date", as_of)
    return send


def _send_time_accuracy(send: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """On generated data: how often the learned hour is within an hour of the person's favourite."""
    own = send[send["basis"] == "customer"].merge(truth, on="customer_id", how="inner")
    if own.empty:
        return {}
    return {"send_hour_accuracy_1h": round(sendtime.hour_accuracy(own["best_hour"], own["open_hour"]), 4)}


def _cluster_figure(personas: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clusters = [p for c, p in sorted(personas.items()) if c >= 0]
    feats = list(seg_model.CLUSTER_FEATURES)
    z = np.array([[p["z_scores"].get(f, 0.0) for f in feats] for p in clusters])
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.6 * len(clusters)))
    im = ax.imshow(z, cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
    ax.set_xticks(range(len(feats)), feats, rotation=30, ha="right")
    ax.set_yticks(range(len(clusters)), [f"{p['cluster']}: {p['persona']} ({p['size']:,})" for p in clusters])
    fig.colorbar(im, ax=ax, label="z-score vs all buyers")
    ax.set_title("Cluster profiles")
    fig.tight_layout()
    return fig
