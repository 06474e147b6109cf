"""MLflow set-up shared by every model: the tracking store and one experiment per kind of model."""

from __future__ import annotations

from p13n.config import Settings


def use_experiment(settings: Settings, kind: str) -> str:
    """Point MLflow at the configured store and experiment `<prefix>-<kind>` (created on first use,
    with its artifacts next to the local store rather than in the working directory)."""
    import mlflow

    if settings.mlflow_uri.startswith("sqlite:///"):
        (settings.data_dir / "mlflow").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    name = f"{settings.mlflow.experiment_prefix}-{kind}"
    if mlflow.get_experiment_by_name(name) is None:
        location = settings.mlflow_artifacts if not settings.mlflow.tracking_uri else None
        mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(name)
    return name
