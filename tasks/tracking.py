"""Where MLflow records go: the experiment in a tracking store named explicitly.

Every ``MlflowClient`` is given its store, and so is every registry call
(``tasks/registry.py`` registers through the client, not ``mlflow.register_model``).
MLflow's fluent API (``mlflow.start_run``, ``mlflow.log_*``, ``mlflow.pytorch.log_model``,
system metrics) has no such argument and no client equivalent for logging a model or
sampling system metrics: the flows that open runs through it point it at the store once, on
purpose, with :func:`use_tracking_uri`, and so does a trial in a Dask worker process. It is
the one place Ursa sets MLflow's process-wide URI.
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
    """Point MLflow's fluent API at ``tracking_uri`` for this process (it is process-wide).

    Set for the rest of the process, not restored after a block: a sweep's trials log
    through it from several threads at once, and restoring it when one trial ends would move
    it under the runs of the others.
    """
    mlflow.set_tracking_uri(tracking_uri)
