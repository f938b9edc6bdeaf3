"""The learning-rate finder: its suggestion on a constructed curve, and a real range test
logged to a real MLflow store."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mlflow import MlflowClient

from tasks.lr_find import centred_lrs, lr_find, run_lr_find, suggest
from tasks.sweep import start_sweep, trial_grid
from tasks.tensor_cache import load_tensors, tensor_cache
from tasks.tracking import experiment_id
from tasks.train import TrainConfig
from tests.datasets import digits_dataset
from ursa.settings import Settings

SMALL = TrainConfig(image_size=16, batch_size=8)


def test_suggestion_is_the_steepest_fall_before_the_minimum() -> None:
    lrs = list(np.logspace(-6, 0, 61))
    # Flat, then falling fastest around 1e-3, bottoming out at 1e-2, then exploding.
    losses = [2.3 - 2.0 / (1 + math.exp(-3 * (math.log10(lr) + 3))) for lr in lrs]
    losses = [
        v + (10 * (math.log10(lr) + 2) ** 2 if lr > 1e-2 else 0)
        for v, lr in zip(losses, lrs, strict=True)
    ]
    suggestion, steepest, minimum = suggest(lrs, losses)
    assert suggestion == steepest
    assert 5e-4 < steepest < 2e-3
    assert 5e-3 < minimum < 2e-2
    with pytest.raises(ValueError, match="no finite loss"):
        suggest([], [])


def test_suggestion_is_never_a_rate_next_to_the_explosion() -> None:
    # A short, noisy range test whose loss still falls at its last rates (the step after
    # exploded): the one-sided slope at the end made the last rate the steepest.
    lrs = [1e-7 * 7.74**i for i in range(9)]
    losses = [0.589, 0.664, 0.632, 0.615, 0.651, 0.619, 0.579, 0.567, 0.499]
    suggestion, _, minimum = suggest(lrs, losses)
    assert suggestion < lrs[-5] and minimum < lrs[-5]


def test_grid_is_centred_on_the_suggestion() -> None:
    assert centred_lrs(1e-3, 3) == [0.000333, 0.001, 0.003]
    assert centred_lrs(1e-3, 2) == pytest.approx([0.000577, 0.00173])
    with pytest.raises(ValueError, match="at least 1"):
        centred_lrs(1e-3, 0)


def test_range_test_on_real_images_is_logged_with_its_plot(data_dir) -> None:
    dataset = digits_dataset(data_dir, per_class=8, classes=3)
    cache = str(tensor_cache(dataset, 16))
    found = lr_find(SMALL, load_tensors(cache), num_iter=20)
    assert found.lrs == sorted(found.lrs) and len(found.lrs) == len(found.losses)
    assert found.lrs[0] == pytest.approx(1e-7)
    assert found.lrs[0] <= found.suggestion <= found.lrs[-1]
    # The range (1e-7 to 10) explodes before its end: the test stops there, keeping only the
    # losses before the explosion (none over 4x the best).
    assert len(found.lrs) < 20 and found.lrs[-1] < 10
    assert all(math.isfinite(v) for v in found.losses)
    assert max(found.losses) <= 4 * min(found.losses)

    settings = Settings.from_env()
    experiment = experiment_id(settings)
    parent = start_sweep(experiment, SMALL, dataset, trial_grid([1e-3], [1]))
    suggestion = run_lr_find(
        SMALL, cache, experiment, parent, num_iter=10, tracking_uri=settings.tracking_uri
    )
    client = MlflowClient(settings.tracking_uri)
    child = client.search_runs([experiment], filter_string="tags.`ursa.role` = 'lr_find'")[0]
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.metrics["suggested_lr"] == pytest.approx(suggestion)
    assert "lr_find.png" in [a.path for a in client.list_artifacts(child.info.run_id)]
    assert client.get_run(parent).data.tags["ursa.lr_find_suggestion"] == f"{suggestion:g}"
