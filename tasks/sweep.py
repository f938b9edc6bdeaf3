"""The sweep: a thin layer over :mod:`tasks.train` — a grid of trials under one MLflow parent
run, the choice of the best trial, and logging its model as an Ursa model package."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from prefect import task

from tasks.data_checks import WARNINGS_TAG
from tasks.leaderboard import leaderboard
from tasks.ledger import ledger_params
from tasks.manifest import Dataset
from tasks.plots import heatmap_figure
from tasks.policies import ACCELERATOR, CPU, NETWORK
from tasks.tensor_cache import load_tensors, tensor_cache
from tasks.train import (
    MEAN,
    STD,
    TrainConfig,
    Trial,
    TrialResult,
    build_model,
    device_for_training,
    diagnose_fit,
    evaluate,
)
from tasks.trial import run_trial
from tasks.trial_report import diagnosis_tags
from tasks.weights import resolve_weights
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
    experiment_id: str,
    config: TrainConfig,
    dataset: Dataset,
    trials: list[Trial],
    extra: dict | None = None,
    warnings: list[str] | None = None,
) -> str:
    """Create the parent run; returns its id. Trials attach to it as children. ``warnings``:
    what makes the dataset's numbers unreliable (:mod:`tasks.data_checks`), as a tag."""
    run = mlflow.start_run(experiment_id=experiment_id, run_name=f"sweep {dataset.digest[:8]}")
    try:
        mlflow.set_tags({"ursa.role": "sweep", WARNINGS_TAG: warnings_tag(warnings)})
        if extra and "recipe" in extra:
            mlflow.set_tag("ursa.recipe", extra["recipe"])
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
                **ledger_params(dataset),  # which cleaning decisions shaped the data
                **(extra or {}),
            }
        )
    finally:
        mlflow.end_run()
    return run.info.run_id


def warnings_tag(warnings: list[str] | None) -> str:
    """The dataset's warnings as one MLflow tag value ("none" when its numbers hold)."""
    return "; ".join(warnings or []) or "none"


def excluded_trials(results: list[TrialResult]) -> list[dict]:
    """The trials that could not be chosen, each with the reason."""
    return [
        {"trial": r.name, "run_id": r.run_id, "diagnosis": r.diagnosis, "why": r.evidence}
        for r in results
        if not r.usable
    ]


def diagnose_in_sweep(results: list[TrialResult], tracking_uri: str) -> list[TrialResult]:
    """Diagnose each trial again, now knowing the best accuracy of the sweep ("far from the
    best trial" is underfitting), and update the MLflow tags that changed."""
    usable = [r for r in results if r.usable]
    if not usable:
        return results
    best_accuracy = max(r.val_accuracy for r in usable)
    client = MlflowClient(tracking_uri)
    updated = []
    for r in results:
        d = diagnose_fit(r.history, r.initial_loss, best_accuracy) if r.history else None
        if d is not None and (d.label, d.evidence) != (r.diagnosis, r.evidence):
            for key, value in diagnosis_tags(d).items():
                client.set_tag(r.run_id, key, value)
            r = replace(r, diagnosis=d.label, evidence=d.evidence)
        updated.append(r)
    return updated


def heatmap(results: list[TrialResult]) -> tuple[list[float], list[int], np.ndarray]:
    """(lrs, epochs, validation accuracy per cell); NaN where no usable trial ran."""
    lrs = sorted({r.lr for r in results})
    epochs = sorted({r.epochs for r in results})
    values = np.full((len(lrs), len(epochs)), np.nan)
    for r in results:
        if r.usable:
            values[lrs.index(r.lr), epochs.index(r.epochs)] = r.val_accuracy
    return lrs, epochs, values


def finish_sweep(
    parent_run_id: str,
    results: list[TrialResult],
    best: TrialResult,
    budget_note: str = "",
    sweep_seconds: float | None = None,
    warnings: list[str] | None = None,
    *,
    tracking_uri: str,
) -> list[dict]:
    """Log the leaderboard, the lr x epochs heatmap, the exclusions, the choice and the
    sweep's wall time on the parent run, and the dataset's warnings on every trial; returns
    the excluded trials with their reasons."""
    board = leaderboard(results)
    excluded = excluded_trials(results)
    client = MlflowClient(tracking_uri)
    for r in results:
        client.set_tag(r.run_id, WARNINGS_TAG, warnings_tag(warnings))
    client.log_table(
        parent_run_id,
        {
            "run_id": [r.run_id for r in board],
            "lr": [r.lr for r in board],
            "epochs": [r.epochs for r in board],
            "val_accuracy": [r.val_accuracy for r in board],
            "val_loss": [r.val_loss for r in board],
            "train_loss": [r.train_loss for r in board],
            "diagnosis": [r.diagnosis for r in board],
            "evidence": [r.evidence for r in board],
            "seconds": [round(r.seconds, 2) for r in board],
        },
        "leaderboard.json",
    )
    lrs, epochs, values = heatmap(results)
    client.log_figure(
        parent_run_id,
        heatmap_figure(lrs, epochs, values, "validation accuracy", "val_accuracy"),
        "heatmap_val_accuracy.png",
    )
    client.log_dict(parent_run_id, {"excluded": excluded}, "excluded_trials.json")
    client.log_metric(parent_run_id, "best_val_accuracy", best.val_accuracy)
    client.log_metric(parent_run_id, "best_val_loss", best.val_loss)
    client.log_metric(parent_run_id, "trials_excluded", len(excluded))
    if sweep_seconds is not None:
        client.log_metric(parent_run_id, "sweep_seconds", sweep_seconds)
    tags = {
        "ursa.best_run_id": best.run_id,
        "ursa.best_trial": best.name,
        "ursa.excluded": "; ".join(f"{e['trial']}: {e['diagnosis']}" for e in excluded) or "none",
    }
    if budget_note:
        tags["ursa.budget"] = budget_note
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, value)
    return excluded


def log_best_model(
    best: TrialResult,
    config: TrainConfig,
    dataset: Dataset,
    cache_path: str,
    parent_run_id: str,
    tracking_uri: str,
) -> str:
    """Log the best trial's weights as a model package in its own run; return the model URI."""
    data = load_tensors(cache_path)
    model = build_model(TrainConfig(**{**asdict(config), "pretrained": False}), len(data.classes))
    model.load_state_dict(torch.load(best.checkpoint, map_location="cpu", weights_only=True))
    device = device_for_training()
    model.to(device)
    _, accuracy, _ = evaluate(model, data.x_valid, data.y_valid, device, size=config.image_size)
    meta = {
        "arch": config.arch,
        "classes": list(data.classes),
        "image_size": config.image_size,
        "resize": config.resize,
        "resize_size": config.resize_size,  # serving resizes to it, then cuts the centre
        "mean": list(MEAN),
        "std": list(STD),
        "metrics": {"val_accuracy": accuracy, "val_loss": best.val_loss},
        "dataset_digest": dataset.digest,
        "trial": {"lr": best.lr, "epochs": best.epochs, "run_id": best.run_id},
        "diagnosis": best.diagnosis,
    }
    with mlflow.start_run(run_id=best.run_id):
        mlflow.set_tag("ursa.best", "true")
        model_uri = log_package(model, meta)
    # The sweep run names its model, so "the latest trained model" is one search away.
    MlflowClient(tracking_uri).set_tag(parent_run_id, "ursa.model_uri", model_uri)
    return model_uri


def latest_model_uri(experiment_id: str, tracking_uri: str) -> str:
    """The model URI of the most recent finished sweep in the experiment."""
    runs = MlflowClient(tracking_uri).search_runs(
        [experiment_id],
        filter_string="tags.`ursa.role` = 'sweep' and tags.`ursa.model_uri` != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise LookupError(
            f"Experiment {experiment_id} has no finished sweep with a model; "
            "run 'ursa train' first."
        )
    return runs[0].data.tags["ursa.model_uri"]


# Prefect wrappers. Weights and tensors stay on disk; only paths and small records travel.
cache_task = task(name="tensor-cache", **CPU)(tensor_cache)
start_sweep_task = task(name="start-sweep", **CPU)(start_sweep)  # a retry = a 2nd run
trial_task = task(
    name="trial", task_run_name="trial lr={trial.lr} epochs={trial.epochs}", **ACCELERATOR
)(run_trial)
finish_sweep_task = task(name="finish-sweep", **NETWORK)(finish_sweep)
diagnose_task = task(name="diagnose-in-sweep", **NETWORK)(diagnose_in_sweep)
# No retries, though it may download: offline, the flow must stop within seconds.
resolve_weights_task = task(name="resolve-weights", **CPU)(resolve_weights)
log_model_task = task(name="log-best-model", **CPU)(log_best_model)  # a retry = a 2nd model


def auto_workers(runner: str, workers: int, n_trials: int) -> int:
    """Trials at a time: ``workers`` when given (>= 1); 0 chooses. On a GPU, one (trials
    would share one device). On CPUs, one trial per core up to the number of trials: one-thread
    trials side by side train as fast as one multi-thread trial and keep doing so while
    Prefect, MLflow and the reports use the CPU too, because a one-thread trial has no thread
    team that waits for its slowest member (BENCHMARKS.md has the figures)."""
    if workers < 0:
        raise ValueError(f"workers is {workers}; expected 0 (choose) or a positive number.")
    if workers:
        return workers
    if runner == "threads" and device_for_training().type == "cuda":
        return 1
    return max(1, min(n_trials, os.cpu_count() or 1))


def longest_first(trials: list[Trial]) -> list[Trial]:
    """Submission order for concurrent trials: the most epochs first, so that the short ones
    fill in at the end instead of one long trial running alone with cores idle."""
    return sorted(trials, key=lambda t: -t.epochs)


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restore torch's thread count on leaving: a trial that sets it in a worker thread also
    changes the default that every later thread of the process starts with."""
    kept = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(kept)


def trial_runner(runner: str, workers: int, dask_address: str = ""):
    """The Prefect task runner that trials run on: threads in this process, or Dask worker
    processes (a local cluster of ``workers`` processes, or the cluster at ``dask_address``)."""
    if workers < 1:
        raise ValueError(f"workers is {workers}; expected at least 1.")
    if runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    raise ValueError(f"runner is '{runner}'; expected 'threads' or 'dask'.")


def threads_per_trial(runner: str, workers: int) -> int:
    """Torch threads for each trial, so that concurrent trials split the cores rather than
    oversubscribe them: Dask worker processes each set their own; in threads the setting is
    process-wide, which is the same split. 0 (torch's default: every core) for one trial."""
    if workers <= 1 or runner not in ("threads", "dask"):
        return 0
    return max(1, (os.cpu_count() or 1) // workers)
