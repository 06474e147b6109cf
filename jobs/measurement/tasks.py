"""Measurement entry points for the DAGs and the CLI (`p13n experiments`)."""

from __future__ import annotations

import datetime as dt

from p13n.config import get_settings
from p13n.orchestration import progress


def land_exposures_task() -> dict:
    """The API's exposures from Redis into `silver.exposures` (exactly once; see `exposures`)."""
    import redis

    from p13n.measurement.exposures import land_exposures
    from p13n.services.redis import redis_for
    from p13n.serving.keys import Keys

    settings = get_settings()
    with redis_for(settings) as url:
        client = redis.Redis.from_url(url)
        try:
            out = land_exposures(
                settings, client, Keys(settings.serving.namespace).exposures, progress=progress
            )
        finally:
            client.close()
    progress(out.text())
    return {"read": out.read, "landed": out.landed, "unknown": out.unknown}


def measure_task(ds: str) -> dict:
    """The date's `gold.experiment_results`, and one line per experiment in the task log."""
    from p13n.lake.duck import read_arrow, table_exists
    from p13n.lake.tables import (
        GOLD_EXPERIMENT_RESULTS,
        GOLD_JOURNEY_EVENTS,
        GOLD_JOURNEY_STATE,
        SILVER_SENDS,
    )
    from p13n.measurement.experiments import measure
    from p13n.orchestration import validate_frames

    settings = get_settings()
    day = dt.date.fromisoformat(ds)
    frame = measure(settings, day)
    for line in summary_lines(frame):
        progress(line)
    # One Great Expectations context per process costs about 13 s: this task checks the night's
    # sends, journeys and results together (the journeys task writes, this one validates).
    checked = {GOLD_EXPERIMENT_RESULTS: (frame, day)}
    for table, column in (
        (SILVER_SENDS, "send_date"),
        (GOLD_JOURNEY_STATE, "as_of_date"),
        (GOLD_JOURNEY_EVENTS, "as_of_date"),
    ):
        if table_exists(settings.lake_root, table):
            checked[table] = (read_arrow(settings, table, filters=[(column, "=", day)]).to_pandas(), day)
    validate_frames(checked, "measurement and journey outputs")
    return {"experiments": int(frame["experiment"].nunique()), "rows": len(frame)}


def summary_lines(frame, metric: str = "revenue") -> list[str]:
    """Per experiment and arm: units, the metric's lift with its interval, and any warning."""
    lines = []
    for _, r in frame[frame["metric"] == metric].iterrows():
        if r["lift"] is None or r["lift"] != r["lift"]:
            effect = r["note"] or "no estimate"
        else:
            effect = (
                f"{metric} per customer {r['lift']:+.1%} [{r['ci_low']:+.1%}, {r['ci_high']:+.1%}], "
                f"p={r['p_value']:.3f}"
            )
        srm = "  SAMPLE RATIO MISMATCH" if r["sample_ratio_mismatch"] else ""
        lines.append(
            f"{r['experiment']} · {r['arm']} vs {r['baseline_arm']}: "
            f"{r['units']:,} vs {r['baseline_units']:,} customers; {effect}{srm}"
        )
    return lines


def attribution_task(ds: str) -> dict:
    """The date's `gold.attribution` (score_customers' attribution task)."""
    from p13n.customers.pipeline import read_activity
    from p13n.measurement.attribution import attribute_period
    from p13n.runctx import RunContext
    from p13n.session import lake

    settings, lk = get_settings(), lake()
    day = dt.date.fromisoformat(ds)
    credits = attribute_period(lk, settings, read_activity(lk), day, run=RunContext.from_env())
    if credits.empty:
        progress(f"attribution {ds}: no journeys in the last {settings.measurement.attribution_days} days")
        return {"conversions": 0}
    first = credits.iloc[0]
    markov = credits[credits["model"] == "markov"].sort_values("share", ascending=False)
    shares = ", ".join(f"{r.channel} {r.share:.0%}" for r in markov.itertuples())
    progress(
        f"attribution {first['period_start']} … {ds}: {first['conversions_in_period']:,} conversions "
        f"({first['unattributed_conversions']:,} without a touch), {first['open_journeys']:,} journeys not "
        f"converted yet; Markov credit: {shares or 'none'}"
    )
    return {"conversions": int(first["conversions_in_period"]), "channels": int(markov["channel"].nunique())}
