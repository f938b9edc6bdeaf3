"""One trial as an MLflow child run of the sweep: train it (:func:`tasks.train.fit`),
diagnose it, leave its report (:mod:`tasks.trial_report`) and save its weights."""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import asdict

import mlflow
import torch

from tasks.tensor_cache import load_tensors
from tasks.tracking import use_tracking_uri
from tasks.train import (
    BN_RECOMPUTE_STEPS,
    TrainConfig,
    Trial,
    TrialResult,
    diagnose_fit,
    fit,
)
from tasks.trial_report import log_trial_report
from ursa.layout import Layout

SYSTEM_METRICS_INTERVAL = 1  # seconds between samples of a trial's CPU, memory, GPU


def batch_norm_note(history: list[dict]) -> str:
    """Which validation passes ran on recomputed batch-norm statistics, for the trial's tag."""
    epochs = [str(h["epoch"] + 1) for h in history if h.get("bn_recomputed")]
    if not epochs:
        return "no"
    return (
        f"before the validation of epoch {', '.join(epochs)} of {len(history)} "
        f"(under {BN_RECOMPUTE_STEPS} steps taken)"
    )


def run_trial(
    trial: Trial,
    config: TrainConfig,
    cache_path: str,
    experiment_id: str,
    parent_run_id: str,
    dataset_digest: str,
    tracking_uri: str = "",
    torch_threads: int = 0,
) -> TrialResult:
    """Train one trial as an MLflow child run of the sweep; save its weights for later logging.

    ``tracking_uri`` and ``torch_threads`` matter when the trial runs in another process (a
    Dask worker): MLflow's URI is per process, and workers sharing a machine share its cores.
    """
    if tracking_uri:
        use_tracking_uri(tracking_uri)
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    data = load_tensors(cache_path)
    start = time.perf_counter()
    # System metrics every second: trials on small data last seconds, not minutes.
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL)
    # Linked to the parent explicitly: the active run is thread-local and trials may run in threads.
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=trial.name,
        parent_run_id=parent_run_id,
        log_system_metrics=True,
    ) as run:
        mlflow.log_params({**asdict(config), **asdict(trial), "dataset_digest": dataset_digest})
        # Which process trained it: on a Dask cluster, the worker's host and pid.
        mlflow.set_tags(
            {"ursa.role": "trial", "ursa.worker": f"{socket.gethostname()}:{os.getpid()}"}
        )

        def log_epoch(record: dict) -> None:
            metrics = {k: v for k, v in record.items() if k != "epoch" and math.isfinite(v)}
            mlflow.log_metrics(metrics, step=record["epoch"])

        fitted = fit(trial, config, data, on_epoch=log_epoch)
        clean = fitted.history[-1].get("train_eval_loss") if fitted.history else None
        if clean is not None and math.isfinite(clean):
            mlflow.log_metric("train_eval_loss", clean, step=fitted.history[-1]["epoch"])
        initial = fitted.step_losses[0] if fitted.step_losses else math.nan
        mlflow.set_tag("ursa.bn_recomputed", batch_norm_note(fitted.history))
        diagnosis = diagnose_fit(fitted.history, initial)
        log_trial_report(
            run.info.run_id, trial.name, fitted, data, diagnosis, mlflow.get_tracking_uri()
        )
        checkpoint = Layout.around(cache_path).checkpoints / f"{run.info.run_id}.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(fitted.model.state_dict(), checkpoint)
        # MLflow's monitor logs a sample only once a whole interval has passed and drops it if
        # the run ends first: a trial quicker than that (tiny data, an early divergence) is
        # kept open until its first sample is in, so that every trial has system metrics.
        short = SYSTEM_METRICS_INTERVAL + 0.5 - (time.perf_counter() - start)
        if short > 0:
            time.sleep(short)
        last = fitted.history[-1]
        return TrialResult(
            lr=trial.lr,
            epochs=trial.epochs,
            run_id=run.info.run_id,
            val_accuracy=last["val_accuracy"],
            val_loss=last["val_loss"],
            train_loss=last["train_loss"],
            checkpoint=str(checkpoint),
            seconds=time.perf_counter() - start,
            history=fitted.history,
            initial_loss=initial,
            diagnosis=diagnosis.label,
            evidence=diagnosis.evidence,
        )
