"""The sweep: a thin layer over :mod:`tasks.train` — a grid of trials under one MLflow parent
run, the choice of the best trial, and logging its model as an Ursa model package."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict

import mlflow
import torch
from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NONE

from tasks.manifest import Dataset
from tasks.plots import confusion_matrix, confusion_matrix_figure
from tasks.train import (
    MEAN,
    STD,
    TrainConfig,
    Trial,
    TrialResult,
    build_model,
    device_for_training,
    evaluate,
    load_tensors,
    run_trial,
    tensor_cache,
)
from ursa.package import log_package


def trial_grid(lrs: list[float], epochs: list[int]) -> list[Trial]:
    if not lrs or not epochs:
        raise ValueError(
            f"A sweep needs learning rates and epochs; got lrs={lrs}, epochs={epochs}."
        )
    for lr in lrs:
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"Learning rate {lr} is not a positive number.")
    for n in epochs:
        if n < 1:
            raise ValueError(f"Epoch count {n} is not a positive whole number.")
    return [Trial(lr=lr, epochs=n) for lr, n in itertools.product(lrs, epochs)]


def start_sweep(
    experiment_id: str, config: TrainConfig, dataset: Dataset, trials: list[Trial]
) -> str:
    """Create the parent run; returns its id. Trials attach to it as children."""
    run = mlflow.start_run(experiment_id=experiment_id, run_name=f"sweep {dataset.digest[:8]}")
    try:
        mlflow.set_tag("ursa.role", "sweep")
        mlflow.log_params(
            {
                **asdict(config),
                "learning_rates": sorted({t.lr for t in trials}),
                "epochs": sorted({t.epochs for t in trials}),
                "dataset_digest": dataset.digest,
                "dataset_manifest": dataset.manifest_path,
                "n_train": dataset.n_train,
                "n_valid": dataset.n_valid,
                "classes": ",".join(dataset.classes),
            }
        )
    finally:
        mlflow.end_run()
    return run.info.run_id


def best_trial(results: list[TrialResult]) -> TrialResult:
    """Highest validation accuracy, then lowest validation loss; never a diverged trial."""
    usable = [r for r in results if r.usable]
    if not usable:
        raise RuntimeError(
            f"All {len(results)} trials diverged (non-finite loss): lower the learning rates."
        )
    return max(usable, key=lambda r: (r.val_accuracy, -r.val_loss))


def finish_sweep(parent_run_id: str, results: list[TrialResult], best: TrialResult) -> None:
    """Log the leaderboard and the choice on the parent run."""
    board = sorted(results, key=lambda r: (-r.val_accuracy if r.usable else 1, r.val_loss))
    with mlflow.start_run(run_id=parent_run_id):
        mlflow.log_table(
            {
                "run_id": [r.run_id for r in board],
                "lr": [r.lr for r in board],
                "epochs": [r.epochs for r in board],
                "val_accuracy": [r.val_accuracy for r in board],
                "val_loss": [r.val_loss for r in board],
                "train_loss": [r.train_loss for r in board],
                "seconds": [round(r.seconds, 2) for r in board],
            },
            "leaderboard.json",
        )
        mlflow.log_metrics({"best_val_accuracy": best.val_accuracy, "best_val_loss": best.val_loss})
        mlflow.set_tags(
            {
                "ursa.best_run_id": best.run_id,
                "ursa.best_trial": f"lr={best.lr:g} epochs={best.epochs}",
            }
        )


def log_best_model(
    best: TrialResult, config: TrainConfig, dataset: Dataset, cache_path: str, parent_run_id: str
) -> str:
    """Log the best trial's weights as a model package in its own run; return the model URI."""
    data = load_tensors(cache_path)
    model = build_model(TrainConfig(**{**asdict(config), "pretrained": False}), len(data.classes))
    model.load_state_dict(torch.load(best.checkpoint, map_location="cpu", weights_only=True))
    device = device_for_training()
    model.to(device)
    _, accuracy, predicted = evaluate(model, data.x_valid, data.y_valid, device)
    matrix = confusion_matrix(data.y_valid.numpy(), predicted.numpy(), len(data.classes))
    meta = {
        "arch": config.arch,
        "classes": list(data.classes),
        "image_size": config.image_size,
        "mean": list(MEAN),
        "std": list(STD),
        "metrics": {"val_accuracy": accuracy, "val_loss": best.val_loss},
        "dataset_digest": dataset.digest,
        "trial": {"lr": best.lr, "epochs": best.epochs, "run_id": best.run_id},
    }
    with mlflow.start_run(run_id=best.run_id):
        mlflow.log_figure(
            confusion_matrix_figure(
                matrix, list(data.classes), f"confusion (valid), acc {accuracy:.3f}"
            ),
            "confusion_matrix.png",
        )
        mlflow.set_tag("ursa.best", "true")
        model_uri = log_package(model, meta)
    # The sweep run names its model, so "the latest trained model" is one search away.
    MlflowClient().set_tag(parent_run_id, "ursa.model_uri", model_uri)
    return model_uri


def latest_model_uri(experiment_id: str) -> str:
    """The model URI of the most recent finished sweep in the experiment."""
    runs = mlflow.search_runs(
        [experiment_id],
        filter_string="tags.`ursa.role` = 'sweep' and tags.`ursa.model_uri` != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        raise LookupError(
            f"Experiment {experiment_id} has no finished sweep with a model; "
            "run 'ursa train' first."
        )
    return runs[0].data.tags["ursa.model_uri"]


# Prefect wrappers. Weights and tensors stay on disk; only paths and small records travel.
cache_task = task(name="tensor-cache", cache_policy=NONE)(tensor_cache)
start_sweep_task = task(name="start-sweep", cache_policy=NONE)(start_sweep)
trial_task = task(
    name="trial", task_run_name="trial lr={trial.lr} epochs={trial.epochs}", cache_policy=NONE
)(run_trial)
finish_sweep_task = task(name="finish-sweep", cache_policy=NONE)(finish_sweep)
log_model_task = task(name="log-best-model", cache_policy=NONE)(log_best_model)
