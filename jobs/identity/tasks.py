"""Task bodies of the identity DAG: a few lines each, calling the identity functions."""

from __future__ import annotations

import datetime as dt
import json

from p13n.config import Settings, get_settings
from p13n.lake.tables import (
    GOLD_CUSTOMER_PROFILES,
    GOLD_IDENTITY_CHANGES,
    GOLD_IDENTITY_GRAPH,
    GOLD_IDENTITY_KEYS,
)
from p13n.orchestration import progress
from p13n.runctx import RunContext

GOLD_SUITES = (GOLD_IDENTITY_GRAPH, GOLD_IDENTITY_CHANGES, GOLD_IDENTITY_KEYS, GOLD_CUSTOMER_PROFILES)


def load_truth(settings: Settings):
    """The generator's ground truth (record_key, person_id), read only where `evaluation.truth_dir` is
    set (the local and test overlays; never production)."""
    import pandas as pd

    if settings.truth_dir is None or not (settings.truth_dir / "identity.csv").exists():
        return None
    path = settings.truth_dir / "identity.csv"
    truth = pd.read_csv(path, dtype=str)
    truth["record_key"] = truth["source"] + ":" + truth["record_id"]
    return truth[["record_key", "person_id"]].drop_duplicates("record_key")


def resolve_task(ds: str) -> dict:
    from p13n.identity.pipeline import resolve_identities
    from p13n.secrets import pii_key
    from p13n.session import lake

    settings = get_settings()
    out = resolve_identities(
        lake(),
        settings,
        dt.date.fromisoformat(ds),
        pii_key(settings),
        run=RunContext.from_env(),
        truth=load_truth(settings),
        progress=progress,
    )
    progress(out.summary())
    log_to_mlflow(settings, out)
    return {"run_date": ds, "customers": out.counts.get("customers"), "f1": out.metrics.get("f1")}


def validate_task(ds: str) -> dict:
    """Run the gold suites on this run's identity outputs; a critical failure fails the task."""
    from p13n.orchestration import validate_outputs

    day = dt.date.fromisoformat(ds)
    where = {
        GOLD_IDENTITY_GRAPH: [("run_date", "=", day)],
        GOLD_IDENTITY_CHANGES: [("change_date", "=", day)],
    }
    return validate_outputs({t: where.get(t) for t in GOLD_SUITES}, "identity outputs")


def log_to_mlflow(settings: Settings, out) -> None:
    """One MLflow run per identity run: parameters, counts, timings, and quality when truth is known."""
    import mlflow

    from p13n.tracking import use_experiment

    use_experiment(settings, "identity")
    with mlflow.start_run(run_name=f"identity {out.run_date}"):
        cfg = settings.identity
        mlflow.log_params(
            {"run_date": out.run_date, "backend": cfg.backend, "match_probability": cfg.match_probability}
        )
        numbers = {**out.counts, **out.timings}
        numbers |= {f"changes_{k}": v for k, v in out.changes.items()}
        numbers |= {k: v for k, v in out.metrics.items() if isinstance(v, int | float)}
        mlflow.log_metrics({k: float(v) for k, v in numbers.items()})
        mlflow.log_dict({"refused": out.refused, "changes": out.changes}, "identity_run.json")
        # The trained Fellegi-Sunter model (m and u per comparison level), reloadable by Splink.
        mlflow.log_dict(json.loads(json.dumps(out.model, default=str)), "splink_model.json")
