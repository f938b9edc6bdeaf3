"""The learning-rate finder (lesson 2's range test, after Leslie Smith): train one fresh model
for a few hundred mini-batches while the rate grows exponentially from tiny to huge, record the
smoothed loss, and stop once it explodes. The curve shows where learning is fastest; the
suggestion is the rate of the steepest descent of the smoothed loss, never past the minimum
nor among the last points before the explosion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from prefect import task
from torch import nn

from tasks.policies import ACCELERATOR
from tasks.tensor_cache import Tensors, load_tensors
from tasks.train import (
    MIN_TRAINING_BATCH,
    TrainConfig,
    autocast_for,
    device_for_training,
    index_batches,
    memory_format,
    model_inputs,
    seeded_model,
    set_frozen,
)

# Points at the end of the range test that the suggestion ignores (fast.ai's ``skip_end``).
SKIP_END = 5


@dataclass
class LRFind:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggestion: float
    steepest: float  # rate of the steepest descent
    minimum: float  # rate of the lowest smoothed loss


def lr_find(
    config: TrainConfig,
    data: Tensors,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    smoothing: float = 0.98,
) -> LRFind:
    """Run the range test; the model is thrown away afterwards."""
    if not (0 < start_lr < end_lr):
        raise ValueError(f"lr_find needs 0 < start_lr < end_lr; got {start_lr}, {end_lr}.")
    if num_iter < 5:
        raise ValueError(f"lr_find needs at least 5 iterations; got {num_iter}.")
    if len(data.y_train) < MIN_TRAINING_BATCH:
        raise ValueError(
            f"lr_find needs at least {MIN_TRAINING_BATCH} training images; got {len(data.y_train)}."
        )
    device = device_for_training()
    model = seeded_model(config, len(data.classes)).to(device, memory_format=memory_format(device))
    model.train()
    # Fine-tuning starts with the backbone frozen, and its first phase trains at the suggested
    # rate: the range test measures that phase (as fast.ai's lr_find on a new vision_learner).
    set_frozen(model, config.pretrained)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=start_lr, weight_decay=1e-2, fused=True)
    criterion = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    ratio = (end_lr / start_lr) ** (1 / (num_iter - 1))
    lrs, losses = [], []
    average, best = 0.0, math.inf
    step = 0
    while step < num_iter:
        for idx in index_batches(
            len(data.y_train), config.batch_size, generator, min_size=MIN_TRAINING_BATCH
        ):
            lr = start_lr * ratio**step
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = model_inputs(data.x_train[idx], device, size=config.image_size)
            y = data.y_train[idx].to(device)
            with autocast_for(device):
                loss = criterion(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            average = smoothing * average + (1 - smoothing) * value
            smoothed = average / (1 - smoothing ** (step + 1))
            step += 1
            if not math.isfinite(smoothed) or smoothed > 4 * best:
                step = num_iter  # exploded: the rest of the range says nothing new
                break
            best = min(best, smoothed)
            lrs.append(lr)
            losses.append(smoothed)
            if step >= num_iter:
                break
    return LRFind(lrs, losses, *suggest(lrs, losses))


def suggest(lrs: list[float], losses: list[float]) -> tuple[float, float, float]:
    """(suggestion, steepest, minimum). The steepest fall of loss against log(lr), looked for
    only before the minimum (past it the loss is already turning up); with too few points,
    a tenth of the minimum's rate (lesson 2's rule of thumb). The last ``SKIP_END`` points
    are left out, as fast.ai's ``lr_find`` leaves them out: they lie next to the explosion
    that ended the test, and the lagging smoothed loss can still be falling there. Kept,
    a short or noisy test's minimum (and its one-sided end slope, the steepest) fell on the
    very last rate, one step short of the explosion (a 10-step test on 8 photos suggested
    1.3, and training at it diverged)."""
    if not lrs:
        raise ValueError("lr_find recorded no finite loss: lower start_lr.")
    kept = max(1, len(lrs) - SKIP_END)
    lrs, losses = lrs[:kept], losses[:kept]
    lowest = int(np.argmin(losses))
    minimum = lrs[lowest]
    if lowest < 3:
        return minimum / 10, minimum / 10, minimum
    slopes = np.gradient(np.asarray(losses[: lowest + 1]), np.log(lrs[: lowest + 1]))
    steepest = lrs[int(np.argmin(slopes))]
    return steepest, steepest, minimum


def centred_lrs(suggestion: float, n: int, factor: float = 3.0) -> list[float]:
    """``n`` rates spaced by ``factor`` on a log scale around the suggestion (odd ``n`` has
    the suggestion itself in the middle)."""
    if n < 1:
        raise ValueError(f"A learning-rate grid needs at least 1 rate; got {n}.")
    offsets = [i - (n - 1) / 2 for i in range(n)]
    return [float(f"{suggestion * factor**o:.3g}") for o in offsets]


def run_lr_find(
    config: TrainConfig,
    cache_path: str,
    experiment_id: str,
    parent_run_id: str,
    num_iter: int = 100,
    *,
    tracking_uri: str,
) -> float:
    """The finder as an MLflow child run of the sweep, with its plot; returns the suggestion."""
    import mlflow

    from tasks.plots import lr_find_figure

    found = lr_find(config, load_tensors(cache_path), num_iter=num_iter)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name="lr_find", parent_run_id=parent_run_id
    ):
        mlflow.set_tag("ursa.role", "lr_find")
        mlflow.log_params({"num_iter": num_iter, "arch": config.arch})
        mlflow.log_metrics(
            {
                "suggested_lr": found.suggestion,
                "steepest_lr": found.steepest,
                "minimum_lr": found.minimum,
            }
        )
        mlflow.log_figure(lr_find_figure(found.lrs, found.losses, found.suggestion), "lr_find.png")
    client = mlflow.MlflowClient(tracking_uri)
    client.set_tag(parent_run_id, "ursa.lr_find_suggestion", f"{found.suggestion:g}")
    return found.suggestion


lr_find_task = task(name="lr-find", **ACCELERATOR)(run_lr_find)
