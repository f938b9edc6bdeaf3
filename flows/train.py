"""train: a sweep over learning rates x epochs, one MLflow parent run, one child per trial."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from tasks.manifest import load_dataset
from tasks.reports import publish_sweep
from tasks.sweep import (
    best_trial,
    cache_task,
    finish_sweep_task,
    log_model_task,
    start_sweep_task,
    trial_grid,
    trial_task,
)
from tasks.tracking import experiment_id
from tasks.train import TrainConfig, TrialResult
from ursa.settings import Settings

DEFAULT_LRS = [1e-3, 3e-3]
DEFAULT_EPOCHS = [2, 4]


@dataclass
class TrainResult:
    parent_run_id: str
    model_uri: str
    best: TrialResult
    trials: list[TrialResult]


@flow(name="train", log_prints=True)
def train(
    dataset_manifest: str,
    lrs: list[float] = DEFAULT_LRS,
    epochs: list[int] = DEFAULT_EPOCHS,
    arch: str = "resnet18",
    image_size: int = 32,
    batch_size: int = 64,
    seed: int = 0,
    pretrained: bool = False,
    weights_path: str = "",
) -> TrainResult:
    """Train every (learning rate, epochs) pair; log the best trial's model to MLflow."""
    settings = Settings.from_env()
    config = TrainConfig(
        arch=arch,
        image_size=image_size,
        batch_size=batch_size,
        seed=seed,
        pretrained=pretrained,
        weights_path=weights_path,
    )
    dataset = load_dataset(dataset_manifest)
    trials = trial_grid(lrs, epochs)
    experiment = experiment_id(settings)
    parent = start_sweep_task(experiment, config, dataset, trials)
    cache = cache_task(dataset, config.image_size)
    # Trials run one after another: on a CPU each one already uses every core.
    results = [
        trial_task(trial, config, str(cache), experiment, parent, dataset.digest)
        for trial in trials
    ]
    best = best_trial(results)
    finish_sweep_task(parent, results, best)
    model_uri = log_model_task(best, config, dataset, str(cache), parent)
    publish_sweep(results, best, parent)
    print(f"train: best {best.val_accuracy:.4f} at lr={best.lr:g} epochs={best.epochs}")
    return TrainResult(parent_run_id=parent, model_uri=model_uri, best=best, trials=results)
