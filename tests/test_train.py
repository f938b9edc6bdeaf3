"""Training and the sweep against a real MLflow store, on real (embedded) images."""

from __future__ import annotations

import math
import os

import mlflow
import pytest
import torch
import torchvision
from mlflow import MlflowClient

from tasks.manifest import Dataset
from tasks.sweep import (
    best_trial,
    finish_sweep,
    latest_model_uri,
    log_best_model,
    start_sweep,
    trial_grid,
)
from tasks.tracking import experiment_id
from tasks.train import (
    TrainConfig,
    Trial,
    TrialResult,
    WeightsUnavailable,
    build_model,
    fit,
    load_tensors,
    run_trial,
    tensor_cache,
)
from tests.datasets import digits_dataset
from ursa.package import load_package
from ursa.settings import Settings

SMALL = TrainConfig(image_size=16, batch_size=32)


@pytest.fixture
def dataset(data_dir) -> Dataset:
    return digits_dataset(data_dir, per_class=12, classes=4)


def test_tensor_cache_decodes_once_and_keeps_the_split(dataset: Dataset) -> None:
    path = tensor_cache(dataset, 16)
    mtime = os.path.getmtime(path)
    data = load_tensors(path)
    assert data.classes == list(dataset.classes)
    assert data.x_train.shape == (dataset.n_train, 3, 16, 16)
    assert data.x_train.dtype == torch.uint8
    assert len(data.y_valid) == dataset.n_valid
    assert tensor_cache(dataset, 16) == path and os.path.getmtime(path) == mtime
    assert not list(path.parent.glob("*.tmp"))


def test_fit_is_seeded_and_learns(dataset: Dataset) -> None:
    data = load_tensors(tensor_cache(dataset, 16))
    _, first = fit(Trial(lr=3e-3, epochs=3), SMALL, data)
    _, again = fit(Trial(lr=3e-3, epochs=3), SMALL, data)
    assert [h["train_loss"] for h in first] == [h["train_loss"] for h in again]
    assert first[-1]["train_loss"] < first[0]["train_loss"]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(first[0])


def test_sweep_logs_parent_children_and_a_loadable_model(dataset: Dataset, data_dir) -> None:
    settings = Settings.from_env()
    experiment = experiment_id(settings)
    trials = trial_grid([1e-3, 3e-3], [1])
    parent = start_sweep(experiment, SMALL, dataset, trials)
    cache = str(tensor_cache(dataset, SMALL.image_size))
    results = [run_trial(t, SMALL, cache, experiment, parent, dataset.digest) for t in trials]
    best = best_trial(results)
    finish_sweep(parent, results, best)
    model_uri = log_best_model(best, SMALL, dataset, cache, parent)

    client = MlflowClient(settings.tracking_uri)
    children = client.search_runs(
        [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert {c.info.run_id for c in children} == {r.run_id for r in results}
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert [m.step for m in history] == [0]
        assert child.data.params["dataset_digest"] == dataset.digest
        assert "loss_curves.png" in [a.path for a in client.list_artifacts(child.info.run_id)]
    parent_run = client.get_run(parent)
    assert parent_run.data.tags["ursa.best_run_id"] == best.run_id
    assert latest_model_uri(experiment) == model_uri

    package = load_package(model_uri, settings.tracking_uri)
    assert package.classes == list(dataset.classes)
    assert package.meta["image_size"] == 16
    assert package.meta["dataset_digest"] == dataset.digest
    artifacts = [a.path for a in client.list_artifacts(best.run_id)]
    assert "confusion_matrix.png" in artifacts


def _result(acc: float, loss: float, run_id: str) -> TrialResult:
    return TrialResult(0.1, 1, run_id, acc, loss, loss, "", 0.0)


def test_best_trial_prefers_accuracy_then_loss_and_never_a_diverged_one() -> None:
    a = _result(0.9, 0.3, "a")
    b = _result(0.9, 0.2, "b")
    nan = _result(0.95, math.nan, "nan")
    assert best_trial([a, b, nan]).run_id == "b"
    with pytest.raises(RuntimeError, match="diverged"):
        best_trial([nan])


def test_trial_grid_refuses_bad_values() -> None:
    assert len(trial_grid([1e-3, 1e-2], [1, 2, 3])) == 6
    with pytest.raises(ValueError, match="-0.1"):
        trial_grid([-0.1], [1])
    with pytest.raises(ValueError, match="0"):
        trial_grid([0.1], [0])
    with pytest.raises(ValueError, match="resnet99"):
        TrainConfig(arch="resnet99")


def test_pretrained_weights_come_from_a_local_file_or_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(WeightsUnavailable, match="pretrained=False"):
        build_model(TrainConfig(pretrained=True), 3)
    weights = tmp_path / "resnet18.pth"
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), weights)
    model = build_model(TrainConfig(pretrained=True, weights_path=str(weights)), 3)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 3


def test_experiment_keeps_artifacts_in_the_data_folder(data_dir) -> None:
    settings = Settings.from_env()
    experiment = mlflow.get_experiment(experiment_id(settings))
    assert experiment.artifact_location.startswith((data_dir / "mlartifacts").as_uri())
