"""SGD from scratch (fast.ai lesson2-sgd): fit y = a*x + b to noisy points with mini-batch
gradient descent written out by hand — autograd for the gradient, but the update
``p -= lr * p.grad`` is ours, no ``torch.optim``.

The data follow the lesson: x uniform in [-1, 1], y = 3x + 2 plus noise; the noise is
uniform in [-0.5, 0.5] (zero mean, so the line to find really is 3x + 2), whose variance
1/12 ≈ 0.083 is the lowest mean squared error any line can reach.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from prefect import task

from tasks.diagnosis import DIAGNOSIS_TAG, EVIDENCE_TAG, diagnose
from tasks.policies import CPU, NETWORK

TRUE_SLOPE, TRUE_INTERCEPT = 3.0, 2.0


@dataclass
class SGDRun:
    lr: float
    losses: list[float]  # full-data MSE after every step (index 0: before any step)
    params: list[tuple[float, float]]  # (a, b) after every step, index 0 the start
    diagnosis: str = ""
    evidence: str = ""
    run_id: str = ""

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def line_data(n: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): ``n`` points on y = 3x + 2 plus zero-mean uniform noise."""
    if n < 2:
        raise ValueError(f"line_data needs at least 2 points; got n={n}.")
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g) * 2 - 1
    y = TRUE_SLOPE * x + TRUE_INTERCEPT + (torch.rand(n, generator=g) - 0.5)
    return x, y


def mse(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((y_hat - y) ** 2).mean()


def sgd(
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    steps: int = 100,
    batch_size: int = 20,
    seed: int = 0,
    start: tuple[float, float] = (-1.0, 1.0),
) -> SGDRun:
    """Mini-batch SGD on MSE for a line, from the lesson's starting guess a=-1, b=1.

    Stops early once the loss is no longer finite: a diverged run has shown what it had to.
    """
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"Learning rate {lr} is not a positive number.")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1; got {steps}, {batch_size}.")
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor(start[0], requires_grad=True)
    b = torch.tensor(start[1], requires_grad=True)
    with torch.no_grad():
        losses = [mse(a * x + b, y).item()]
    params = [(a.item(), b.item())]
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=g)
        loss = mse(a * x[idx] + b, y[idx])
        loss.backward()
        with torch.no_grad():  # the whole of SGD: step against the gradient, then forget it
            a -= lr * a.grad
            b -= lr * b.grad
            a.grad.zero_()
            b.grad.zero_()
            losses.append(mse(a * x + b, y).item())
        params.append((a.item(), b.item()))
        if not math.isfinite(losses[-1]):
            break
    d = diagnose(losses)
    return SGDRun(lr, losses, params, d.label, d.evidence)


def run_sgd(
    lr: float,
    steps: int,
    batch_size: int,
    n: int,
    seed: int,
    experiment_id: str,
    parent_run_id: str,
    tracking_uri: str,
) -> SGDRun:
    """One learning rate as an MLflow child run: its loss per step, its diagnosis, and a GIF
    of the line converging (or flying off)."""
    from mlflow import MlflowClient

    from tasks.plots import line_animation_gif
    from tasks.trial_report import log_step_losses

    x, y = line_data(n, seed)
    result = sgd(x, y, lr, steps, batch_size, seed)
    client = MlflowClient(tracking_uri)
    run = client.create_run(
        experiment_id,
        run_name=f"sgd lr={lr:g}",
        tags={
            "mlflow.parentRunId": parent_run_id,
            "ursa.role": "sgd",
            DIAGNOSIS_TAG: result.diagnosis,
            EVIDENCE_TAG: result.evidence,
        },
    )
    run_id = run.info.run_id
    for key, value in {"lr": lr, "steps": steps, "batch_size": batch_size, "n": n}.items():
        client.log_param(run_id, key, value)
    log_step_losses(client, run_id, "loss", result.losses)
    a, b = result.params[-1]
    for key, value in {"slope": a, "intercept": b, "final_loss": result.final_loss}.items():
        if math.isfinite(value):
            client.log_metric(run_id, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        gif = Path(tmp) / "line.gif"
        line_animation_gif(x.numpy(), y.numpy(), result.params, gif, f"lr={lr:g}")
        client.log_artifact(run_id, str(gif))
    client.set_terminated(run_id)
    result.run_id = run_id
    return result


def start_sgd(
    experiment_id: str, lrs: list[float], steps: int, batch_size: int, n: int, tracking_uri: str
) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.create_run(
        experiment_id, run_name="sgd from scratch", tags={"ursa.role": "sgd-sweep"}
    )
    for key, value in {"lrs": lrs, "steps": steps, "batch_size": batch_size, "n": n}.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def finish_sgd(
    parent_run_id: str, runs: list[SGDRun], n: int, seed: int, tracking_uri: str
) -> list[dict]:
    """Diagnose each run again knowing the sweep's best loss ("far from the best" is
    underfitting), log the fitted-lines plot on the parent; returns one row per rate."""
    from mlflow import MlflowClient

    from tasks.plots import fitted_lines_figure

    x, y = line_data(n, seed)
    lines = {f"lr={r.lr:g}": r.params[-1] for r in runs}
    client = MlflowClient(tracking_uri)
    finite = [r.final_loss for r in runs if math.isfinite(r.final_loss)]
    for r in runs:
        d = diagnose(r.losses, best_train_loss=min(finite) if finite else None)
        if (d.label, d.evidence) != (r.diagnosis, r.evidence):
            r.diagnosis, r.evidence = d.label, d.evidence
            client.set_tag(r.run_id, DIAGNOSIS_TAG, d.label)
            client.set_tag(r.run_id, EVIDENCE_TAG, d.evidence)
    client.log_figure(
        parent_run_id,
        fitted_lines_figure(x.numpy(), y.numpy(), lines, "SGD from scratch: fitted lines"),
        "fitted_lines.png",
    )
    client.set_terminated(parent_run_id)
    return [
        {
            "lr": r.lr,
            "steps": len(r.losses) - 1,
            "slope": round(r.params[-1][0], 4),
            "intercept": round(r.params[-1][1], 4),
            "final_loss": r.final_loss,
            "diagnosis": r.diagnosis,
            "evidence": r.evidence,
            "mlflow_run": r.run_id,
        }
        for r in runs
    ]


start_sgd_task = task(name="start-sgd", **CPU)(start_sgd)
sgd_task = task(name="sgd", task_run_name="sgd lr={lr}", **CPU)(run_sgd)
finish_sgd_task = task(name="finish-sgd", **NETWORK)(finish_sgd)
