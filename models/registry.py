"""Champion/challenger in the MLflow model registry, shared by every model.

A freshly trained model is registered as a new version (the challenger). It becomes the `champion`
alias only when it passes the gate: every gated metric at or above its floor, and none worse than
the champion's by more than its tolerance, both measured on the same evaluation data. The decision
and its reasons are logged to the challenger's run (`gate.json`, tags) and its model version.
Scoring always loads the champion.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass, field

CHAMPION = "champion"


@dataclass(frozen=True)
class GateRule:
    higher_is_better: bool = True
    tolerance: float = 0.0  # how much worse than the champion a challenger may be
    floor: float | None = None  # an absolute bound every model must meet (min, or max if lower is better)


@dataclass
class Decision:
    model: str
    version: str
    promoted: bool
    champion_version: str | None
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verdict = "promoted to champion" if self.promoted else "not promoted"
        return f"{self.model} v{self.version} {verdict}: " + "; ".join(self.reasons)


def decide(challenger: dict, champion: dict | None, rules: dict[str, GateRule]) -> tuple[bool, list[str]]:
    """Whether the challenger passes, and why (one reason per rule)."""
    ok, reasons = True, []
    for metric, rule in rules.items():
        value = challenger.get(metric)
        if value is None:
            ok = False
            reasons.append(f"{metric} missing")
            continue
        sign = 1 if rule.higher_is_better else -1
        if rule.floor is not None and sign * (value - rule.floor) < 0:
            ok = False
            reasons.append(f"{metric} {value:.4g} fails the floor {rule.floor:.4g}")
            continue
        if champion is None or champion.get(metric) is None:
            reasons.append(f"{metric} {value:.4g} (no champion to compare)")
            continue
        delta = sign * (value - champion[metric])
        if delta < -rule.tolerance:
            ok = False
            reasons.append(f"{metric} {value:.4g} worse than the champion's {champion[metric]:.4g}")
        else:
            reasons.append(f"{metric} {value:.4g} vs the champion's {champion[metric]:.4g}")
    return ok, reasons


# Classes skops does not trust by default that our own models contain (reviewed: scikit-learn's
# calibrated classifier and histogram-gradient-boosting trees). Models are only loaded from our registry.
TRUSTED_TYPES = [
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
]


def log_sklearn(model):
    """Log a scikit-learn model to the active run (skops format), returning its ModelInfo."""
    import mlflow

    with _without_airflow_moves():
        return mlflow.sklearn.log_model(
            model, name="model", pip_requirements=["scikit-learn"], skops_trusted_types=TRUSTED_TYPES
        )


@contextlib.contextmanager
def _without_airflow_moves():
    """Where skops is imported: on its first import in a process (the first model saved or loaded)
    it looks every scipy ufunc up in every loaded module, and in an Airflow task each read of an
    Airflow module's moved name warns (1,160 log lines in each churn task, which loads the champion
    before it saves a model)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The `airflow\.")
        yield


def champion_version(name: str):
    """The registered model's champion version, or None (no model or no champion yet)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def load_champion(name: str, flavor: str = "sklearn"):
    """The champion model object (sklearn estimator, or the python model behind a pyfunc)."""
    import mlflow

    uri = f"models:/{name}@{CHAMPION}"
    if flavor == "sklearn":
        with _without_airflow_moves():
            return mlflow.sklearn.load_model(uri)
    return mlflow.pyfunc.load_model(uri).unwrap_python_model()


def _version_for(name: str, run_key: str):
    """The version an earlier run with the same key registered (a rerun of the same date and inputs)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        versions = MlflowClient().search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    return next((v for v in versions if v.tags.get("run_key") == run_key), None)


def run_key(as_of, inputs: dict[str, str | int], extra: str = "") -> str:
    """What a rerun has in common with its first run: the date, what every input table holds (its
    `Lake.content_key`) and `extra`, e.g. a hash of the settings that shape the model."""
    import hashlib

    inputs = ",".join(f"{t}@{v}" for t, v in sorted(inputs.items())) + (f"|{extra}" if extra else "")
    return f"{as_of}:{hashlib.sha256(inputs.encode()).hexdigest()[:16]}"


def register_and_gate(
    name: str,
    model_uri: str,
    challenger: dict,
    champion: dict | None,
    rules: dict[str, GateRule],
    run_key: str | None = None,
) -> Decision:
    """Register the active run's model as a version of `name`; promote it if it passes the gate.

    With a `run_key` (the date and what its input tables hold), a rerun finds the version its first run
    registered and keeps that decision, so rerunning a date changes neither the registry nor the scores.
    """
    import mlflow
    from mlflow import MlflowClient

    earlier = _version_for(name, run_key) if run_key else None
    if earlier is not None:
        passed = earlier.tags.get("gate") == "passed"
        reasons = [f"rerun of {run_key}: keeps version {earlier.version}'s decision"]
        current = champion_version(name)
        mlflow.set_tags({"gate.decision": "rerun", "gate.model_version": str(earlier.version)})
        return Decision(
            name, str(earlier.version), passed, str(current.version) if current else None, reasons
        )
    current = champion_version(name)
    version = mlflow.register_model(model_uri, name)
    passed, reasons = decide(challenger, champion if current else None, rules)
    decision = Decision(
        name, str(version.version), passed, str(current.version) if current else None, reasons
    )
    client = MlflowClient()
    client.set_model_version_tag(name, version.version, "gate", "passed" if passed else "failed")
    client.set_model_version_tag(name, version.version, "gate.reasons", "; ".join(reasons)[:4000])
    if run_key:
        client.set_model_version_tag(name, version.version, "run_key", run_key)
    if passed:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    mlflow.set_tags(
        {"gate.decision": "promoted" if passed else "rejected", "gate.model_version": version.version}
    )
    mlflow.log_dict(
        decision.as_dict() | {"challenger": challenger, "champion": champion if current else None},
        "gate.json",
    )
    return decision
