"""MLflow as it runs beside a cluster: a tracking server on a real PostgreSQL, with a sweep's
trials writing to it concurrently. No metric may be lost."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.sweep import finish_sweep, start_sweep, trial_grid
from tasks.tensor_cache import tensor_cache
from tasks.tracking import experiment_id, use_tracking_uri
from tasks.train import TrainConfig
from tasks.trial import run_trial
from tests.datasets import digits_dataset
from tests.servers import mlflow_server, postgres
from ursa.settings import Settings

EPOCHS = 2


def test_concurrent_trials_lose_no_metric_on_postgres(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = digits_dataset(data_dir, per_class=10, classes=3)
    config = TrainConfig(image_size=16, batch_size=16)
    with (
        postgres() as database,
        mlflow_server(database, data_dir / "mlartifacts", tmp_path / "mlflow.log") as tracking,
    ):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
        settings = Settings.from_env()
        experiment = experiment_id(settings)
        use_tracking_uri(tracking)  # start_sweep opens the parent run through MLflow's fluent API
        trials = trial_grid([1e-3, 3e-3, 1e-2], [EPOCHS])
        parent = start_sweep(experiment, config, dataset, trials)
        cache = str(tensor_cache(dataset, config.image_size))
        with ThreadPoolExecutor(max_workers=len(trials)) as pool:
            results = list(
                pool.map(
                    lambda t: run_trial(
                        t, config, cache, experiment, parent, dataset.digest, tracking, 1
                    ),
                    trials,
                )
            )
        best = max(results, key=lambda r: r.val_accuracy)
        finish_sweep(parent, results, best, tracking_uri=tracking)

        client = MlflowClient(tracking)
        children = client.search_runs(
            [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
        )
        assert sorted(c.info.run_id for c in children) == sorted(r.run_id for r in results)
        for child in children:
            for metric in ("train_loss", "val_loss", "val_accuracy"):
                steps = [m.step for m in client.get_metric_history(child.info.run_id, metric)]
                assert sorted(steps) == list(range(EPOCHS)), (child.info.run_name, metric, steps)
            assert child.data.params["dataset_digest"] == dataset.digest
        assert settings.tracking_uri.startswith("http://")
