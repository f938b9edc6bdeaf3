"""Where MLflow records go: the experiment in a tracking store named explicitly.

Every ``MlflowClient`` is given its store. MLflow's fluent API (``mlflow.start_run``,
``mlflow.log_*``) has no such argument: a flow that uses it points it at the store once, on
purpose, with :func:`use_tracking_uri`.
"""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ursa.settings import Settings


def experiment_id(settings: Settings) -> str:
    """The id of the Ursa experiment in ``settings.tracking_uri``, created on first use.

    A new experiment keeps its artifacts beside the database in the data folder, not in
    whatever folder the process happens to run from.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(settings.tracking_uri)
    existing = client.get_experiment_by_name(settings.experiment)
    if existing is not None:
        return existing.experiment_id
    try:
        return client.create_experiment(
            settings.experiment, artifact_location=settings.artifact_location
        )
    except MlflowException:
        # Another process created it between our look-up and create.
        return client.get_experiment_by_name(settings.experiment).experiment_id


def use_tracking_uri(tracking_uri: str) -> None:
    """Point MLflow's fluent API at ``tracking_uri`` for this process (it is process-wide)."""
    mlflow.set_tracking_uri(tracking_uri)
