"""What one trial leaves in MLflow besides its epoch metrics: the diagnosis tags, the loss of
every mini-batch, loss curves, a confusion matrix, the most-confused pairs and a grid of the
validation images it got most wrong."""

from __future__ import annotations

import time

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric

from tasks.diagnosis import DIAGNOSIS_TAG, EVIDENCE_TAG, Diagnosis
from tasks.grids import image_grid
from tasks.plots import (
    confusion_matrix,
    confusion_matrix_figure,
    loss_curves_figure,
    most_confused,
)
from tasks.train import FitResult, Tensors

TOP_LOSSES = 12
# MLflow's log_batch takes at most 1000 metrics per call.
BATCH = 1000


def diagnosis_tags(diagnosis: Diagnosis) -> dict[str, str]:
    return {DIAGNOSIS_TAG: diagnosis.label, EVIDENCE_TAG: diagnosis.evidence}


def log_step_losses(client: MlflowClient, run_id: str, name: str, losses: list[float]) -> None:
    """Every mini-batch's loss as one metric history, in a few calls rather than one per
    step (each call is a database write). Non-finite values are skipped: MLflow rejects them,
    and the diagnosis already says where the loss went."""
    now = int(time.time() * 1000)
    metrics = [Metric(name, v, now, i) for i, v in enumerate(losses) if np.isfinite(v)]
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH], synchronous=True)


def log_trial_report(
    run_id: str,
    title: str,
    fitted: FitResult,
    data: Tensors,
    diagnosis: Diagnosis,
    tracking_uri: str,
) -> None:
    client = MlflowClient(tracking_uri)
    for key, value in diagnosis_tags(diagnosis).items():
        client.set_tag(run_id, key, value)
    log_step_losses(client, run_id, "train_loss_step", fitted.step_losses)
    client.log_figure(
        run_id,
        loss_curves_figure(fitted.history, f"{title} ({diagnosis.label})"),
        "loss_curves.png",
    )
    if fitted.valid_examples is None:  # no epoch ran, so nothing was validated
        return
    losses, predicted, probs = fitted.valid_examples
    if not len(losses):
        return
    actual = data.y_valid.numpy()
    matrix = confusion_matrix(actual, predicted.numpy(), len(data.classes))
    accuracy = float(np.trace(matrix) / max(matrix.sum(), 1))
    client.log_figure(
        run_id,
        confusion_matrix_figure(matrix, data.classes, f"confusion (valid), acc {accuracy:.3f}"),
        "confusion_matrix.png",
    )
    pairs = most_confused(matrix, data.classes)
    client.log_dict(run_id, {"most_confused": pairs}, "most_confused.json")
    order = np.argsort(-np.nan_to_num(losses.numpy(), nan=np.inf))[:TOP_LOSSES]
    captions = [
        f"{data.classes[actual[i]]}/{data.classes[predicted[i]]}\n"
        f"loss {losses[i]:.2f} p {probs[i]:.2f}"
        for i in order
    ]
    client.log_image(
        run_id,
        image_grid(data.x_valid[order].numpy(), captions, "top losses: actual/predicted, loss, p"),
        artifact_file="top_losses.png",
    )
