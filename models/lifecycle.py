"""One model lifecycle for every model: track, register, gate, serve the champion, record the run.

Churn, CLV, segments and the recommender differ in what they train and score; what happens around
that is the same and lives here::

    life = Lifecycle(settings, "churn")                   # the MLflow experiment and registered name
    champ = life.champion_metrics(evaluate)               # the champion on this run's evaluation data
    with life.tracked(as_of, params):                     # one MLflow run
        info = log_sklearn(model)
        life.gate(info.model_uri, metrics, champ, key)    # register; promote if the gate passes
        scorer = life.serving()                           # the champion, or a clear error
    ...score, write the scores...
    life.record(lake, as_of, metrics, rows, run)          # ops.model_runs

The gate's rules come from the model's `gates` settings; a rerun with the same `run_key` keeps its
first decision (see `p13n.models.registry`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from p13n.models.registry import Decision, GateRule, champion_version, load_champion, register_and_gate

MODEL_RUNS_SCHEMA = (
    "model string, as_of_date date, version string, promoted boolean, champion_version string, reasons "
    "string, metrics string, rows long"
)


@dataclass
class ModelRun:
    """What one run of a model decided and wrote (a row of `ops.model_runs`)."""

    model: str
    as_of: dt.date
    metrics: dict
    decision: Decision
    rows: int = 0

    def summary(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.metrics.items() if isinstance(v, int | float))
        return f"{self.model} {self.as_of}: {shown}; {self.decision.summary()}"

    def row(self) -> dict:
        return {
            "model": self.model,
            "as_of_date": self.as_of,
            "version": self.decision.version,
            "promoted": self.decision.promoted,
            "champion_version": self.decision.champion_version,
            "reasons": "; ".join(self.decision.reasons),
            "metrics": json.dumps(scalars(self.metrics)),
            "rows": self.rows,
        }


def scalars(metrics: dict) -> dict:
    """The numeric metrics (what MLflow logs and the gate compares)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


class Lifecycle:
    """The registry side of one model: `settings` point MLflow at the store, `model` names it
    (`<experiment_prefix>-<model>`), `flavor` is how the champion loads (sklearn or pyfunc) and
    `rules` the gate (default: the model's `customers.gates` entry)."""

    def __init__(
        self, settings, model: str, flavor: str = "sklearn", rules: dict[str, GateRule] | None = None
    ):
        from p13n.tracking import use_experiment

        use_experiment(settings, model)  # first: the champion is looked up in this store
        self.model, self.flavor = model, flavor
        self.name = f"{settings.mlflow.experiment_prefix}-{model}"
        if rules is None:
            gates = settings.customers.gates.get(model, {})
            rules = {m: GateRule(**g.model_dump()) for m, g in gates.items()}
        self.rules = rules
        self.decision: Decision | None = None

    def champion(self) -> Any | None:
        """The champion model (None before the first promotion)."""
        return load_champion(self.name, self.flavor) if champion_version(self.name) is not None else None

    def champion_version(self) -> int:
        return int(champion_version(self.name).version)

    def champion_metrics(self, evaluate: Callable[[Any], dict]) -> dict | None:
        """The champion's metrics on this run's evaluation data (None when there is no champion)."""
        champ = self.champion()
        return None if champ is None else scalars(evaluate(champ))

    @contextmanager
    def tracked(
        self, as_of: dt.date, params: dict | None = None, input_versions: dict | None = None
    ) -> Iterator:
        """One MLflow run named `<model> <date>` with the date, `params` and the input table versions."""
        import mlflow

        with mlflow.start_run(run_name=f"{self.model} {as_of}"):
            mlflow.log_params({"as_of_date": as_of.isoformat(), **(params or {})})
            if input_versions:
                mlflow.log_params({f"input.{t}.version": v for t, v in input_versions.items()})
            yield mlflow

    def gate(self, model_uri: str, metrics: dict, champion: dict | None, run_key: str | None) -> Decision:
        """Register the run's model and promote it if it passes the gate against `champion`."""
        self.decision = register_and_gate(
            self.name, model_uri, scalars(metrics), champion, self.rules, run_key
        )
        return self.decision

    def serving(self) -> Any:
        """The champion to score with; a clear error when the first model ever failed its gate."""
        champ = self.champion()
        if champ is None:
            reasons = "; ".join(self.decision.reasons) if self.decision else "no model registered"
            raise RuntimeError(
                f"no champion {self.name} model to score with: the first model failed its gate ({reasons})"
            )
        return champ

    def record(self, lake, as_of: dt.date, metrics: dict, rows: int = 0, run=None) -> ModelRun:
        """Write the run's row of `ops.model_runs` (the model's own (date, model) partition, so models
        running in parallel never read-modify-write each other's rows)."""
        import pandas as pd

        from p13n.lake.tables import OPS_MODEL_RUNS

        out = ModelRun(self.model, as_of, metrics, self.decision, rows=rows)
        lake.write(
            OPS_MODEL_RUNS,
            lake.spark.createDataFrame(pd.DataFrame([out.row()]), MODEL_RUNS_SCHEMA),
            mode="overwrite",
            partition_by=["as_of_date", "model"],
            replace_where={"as_of_date": as_of, "model": self.model},
            run=run,
        )
        return out
