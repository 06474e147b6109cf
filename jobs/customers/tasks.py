"""Task bodies of the customer-intelligence DAG: a few lines each, calling the pipeline functions."""

from __future__ import annotations

import datetime as dt

from p13n.config import Settings, get_settings
from p13n.lake.tables import (
    GOLD_CHURN_SCORES,
    GOLD_CLV,
    GOLD_CUSTOMER_AFFINITIES,
    GOLD_CUSTOMER_FEATURES,
    GOLD_IDENTITY_GRAPH,
    GOLD_SEGMENTS,
    GOLD_SEND_TIMES,
)
from p13n.orchestration import progress
from p13n.runctx import RunContext
from p13n.spark import to_pandas

SUITES = (
    GOLD_CUSTOMER_FEATURES,
    GOLD_CUSTOMER_AFFINITIES,
    GOLD_CHURN_SCORES,
    GOLD_CLV,
    GOLD_SEGMENTS,
    GOLD_SEND_TIMES,
)


def _activity():
    from p13n.customers.pipeline import read_activity
    from p13n.session import lake

    return lake(), read_activity(lake())


def features_task(ds: str) -> dict:
    from p13n.customers.pipeline import build_customer_features

    lk, activity = _activity()
    out = build_customer_features(lk, activity, dt.date.fromisoformat(ds), run=RunContext.from_env())
    progress(
        f"customer features as of {ds}: {out['customers']:,} customers, {out['buyers']:,} with purchases, "
        f"{out['unattributed_line_share']:.1%} of purchase lines not attributed to a customer"
    )
    return out


def model_task(model: str, ds: str) -> dict:
    """Train, evaluate, gate and score one model (churn, clv or segments) for the run date."""
    from p13n.customers import pipeline

    settings = get_settings()
    lk, activity = _activity()
    step = {"churn": pipeline.score_churn, "clv": pipeline.score_clv, "segments": pipeline.segment_customers}[
        model
    ]
    kwargs = {"truth": person_traits(settings, lk)} if model == "segments" else {}
    out = step(
        lk,
        settings,
        activity,
        dt.date.fromisoformat(ds),
        run=RunContext.from_env(),
        progress=progress,
        **kwargs,
    )
    progress(out.summary())
    numbers = {k: v for k, v in out.metrics.items() if isinstance(v, int | float)}
    return {"model": model, "version": out.decision.version, "promoted": out.decision.promoted, **numbers}


def validate_task(ds: str) -> dict:
    """The gold suites on this run's partitions; a critical failure fails the task."""
    from p13n.lake.tables import GOLD_ATTRIBUTION
    from p13n.orchestration import validate_outputs
    from p13n.session import lake

    where = [("as_of_date", "=", dt.date.fromisoformat(ds))]
    tables = dict.fromkeys(SUITES, where)
    if lake().exists(GOLD_ATTRIBUTION):  # the DAG's attribution task (not a step of `customers run`)
        tables[GOLD_ATTRIBUTION] = where
    return validate_outputs(tables, "customer outputs")


def person_traits(settings: Settings, lk):
    """On generated data: each customer's true person and favourite open hour (None elsewhere)."""
    import pandas as pd

    from p13n.identity.tasks import load_truth

    truth = load_truth(settings)
    persons = settings.truth_dir / "persons.csv" if truth is not None else None
    if truth is None or not persons.exists() or not lk.exists(GOLD_IDENTITY_GRAPH):
        return None
    traits = pd.read_csv(persons, usecols=["person_id", "open_hour"])
    if "open_hour" not in traits:
        return None
    graph = lk.read(GOLD_IDENTITY_GRAPH)
    latest = graph.agg({"run_date": "max"}).first()[0]
    ids = to_pandas(graph.filter(graph.run_date == latest).select("record_key", "customer_id"))
    owners = ids.merge(truth, on="record_key", how="inner").groupby("customer_id")["person_id"]
    majority = owners.agg(lambda s: s.value_counts().index[0]).reset_index()
    return majority.merge(traits, on="person_id", how="inner")[["customer_id", "open_hour"]]
