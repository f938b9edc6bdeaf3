"""Where MLflow records go: the tracking URI and experiment, set once per process."""

from __future__ import annotations

import mlflow

from ursa.settings import Settings


def experiment_id(settings: Settings) -> str:
    """Point MLflow at ``settings.tracking_uri``; return the id of the Ursa experiment.

    A new experiment keeps its artifacts beside the database in the data folder, not in
    whatever folder the process happens to run from.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    existing = mlflow.get_experiment_by_name(settings.experiment)
    if existing is not None:
        return existing.experiment_id
    try:
        return mlflow.create_experiment(
            settings.experiment, artifact_location=settings.artifact_location
        )
    except mlflow.exceptions.MlflowException:
        # Another process created it between our look-up and create.
        return mlflow.get_experiment_by_name(settings.experiment).experiment_id
