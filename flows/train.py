"""train: a sweep over learning rates x epochs, one MLflow parent run, one child per trial.

The trials run as concurrent Prefect tasks inside the ``trials`` subflow, whose task runner
is chosen per run: threads here, or Dask worker processes (``runner="dask"``). ``mode``
"grid" trains every pair; "halving" runs successive halving with epochs as the budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Literal

from prefect import flow
from pydantic import Field

from tasks.halving import DEFAULT_ETA, budget, promoted, rung_trials, rungs
from tasks.lr_find import centred_lrs, lr_find_task
from tasks.manifest import load_dataset
from tasks.policies import HOUR
from tasks.reports import publish_sweep
from tasks.sweep import (
    auto_workers,
    best_trial,
    cache_task,
    diagnose_task,
    finish_sweep_task,
    log_model_task,
    longest_first,
    resolve_weights_task,
    start_sweep_task,
    threads_per_trial,
    torch_threads_kept,
    trial_grid,
    trial_runner,
    trial_task,
)
from tasks.tracking import experiment_id, use_tracking_uri
from tasks.train import TrainConfig, Trial, TrialResult
from ursa.settings import Settings

DEFAULT_LRS = [1e-3, 3e-3]
DEFAULT_EPOCHS = [2, 4]
MODES = ("grid", "halving")


@dataclass
class TrainResult:
    parent_run_id: str
    model_uri: str
    best: TrialResult
    trials: list[TrialResult]
    excluded: list[dict] = field(default_factory=list)
    budget: str = ""
    lr_suggestion: float | None = None
    weights: str = ""
    sweep_seconds: float = 0.0  # the trials alone, with their MLflow runs and reports
    workers: int = 1


@flow(name="trials", log_prints=True)
def trials(
    lrs: list[float],
    epochs: list[int],
    mode: str,
    eta: int,
    config: TrainConfig,
    cache: str,
    experiment: str,
    parent: str,
    digest: str,
    tracking_uri: str,
    torch_threads: int,
) -> list[TrialResult]:
    """Every grid trial at once, or successive halving one rung at a time."""

    def run(batch: list[Trial]) -> list[TrialResult]:
        futures = {
            t: trial_task.submit(
                t, config, cache, experiment, parent, digest, tracking_uri, torch_threads
            )
            for t in longest_first(batch)
        }
        return [futures[t].result() for t in batch]

    with torch_threads_kept():  # trials in threads change torch's process-wide default
        if mode == "grid":
            return run(trial_grid(lrs, epochs))
        results: list[TrialResult] = []
        alive = list(lrs)
        for n in rungs(epochs):
            results += run(rung_trials(alive, n))
            alive = promoted(results[-len(alive) :], eta)
            print(f"halving: after {n} epochs, going on with lrs {alive}")
            if not alive:
                break
        return results


@flow(name="train", log_prints=True, timeout_seconds=24 * HOUR)
def train(
    dataset_manifest: str = "",
    lrs: Annotated[list[Annotated[float, Field(gt=0, le=10)]], Field(min_length=1)] = DEFAULT_LRS,
    epochs: Annotated[list[Annotated[int, Field(ge=1, le=100)]], Field(min_length=1)] = (
        DEFAULT_EPOCHS
    ),
    arch: Literal["resnet18", "resnet34"] = "resnet18",
    image_size: Annotated[int, Field(ge=16, le=512)] = 32,
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 64,
    seed: Annotated[int, Field(ge=0)] = 0,
    pretrained: bool = False,
    weights_path: str = "",
    if_no_weights: Literal["fail", "scratch"] = "fail",
    freeze_epochs: Annotated[int, Field(ge=0)] = 1,
    augment: bool = True,
    flip: bool = False,
    compile: bool = False,
    mode: Literal["grid", "halving"] = "grid",
    eta: Annotated[int, Field(ge=2)] = DEFAULT_ETA,
    lr_find: bool = False,
    centre_lrs: bool = False,
    lr_find_iters: Annotated[int, Field(ge=10, le=10_000)] = 100,
    runner: Literal["threads", "dask"] = "threads",
    workers: Annotated[int, Field(ge=0, le=256)] = 0,
    dask_address: str = "",
) -> TrainResult:
    """Train (learning rate, epochs) pairs; log the best trial's model to MLflow.

    Args:
        dataset_manifest: A dataset.csv written by ingest (empty: the data folder's last one).
        lrs: Learning rates of the sweep (peak rates of the one-cycle schedule).
        epochs: Epoch counts of the sweep (the budget in halving mode).
        arch: The torchvision architecture.
        image_size: Training resolution in pixels.
        batch_size: Images per training step.
        seed: Seed of initialisation, data order and augmentation.
        pretrained: Start from pretrained weights (a local file or torchvision's cache).
        weights_path: A local state_dict file for the pretrained backbone.
        if_no_weights: When pretrained weights are missing: fail, or train from scratch.
        freeze_epochs: Epochs with the pretrained backbone frozen before unfreezing.
        augment: Random crops and shifts on the training batches.
        flip: Also flip horizontally (wrong for digits and text).
        compile: torch.compile each trial's model. On an H100 it trains resnet18/34 at 224 px
            1.3x faster and pays for its compile time after about 250,000 training images
            per trial (BENCHMARKS.md); on CPUs its compile time outweighs the gain.
        mode: The full grid, or successive halving with epochs as the budget.
        eta: Halving keeps the best 1/eta of each rung.
        lr_find: Run the learning-rate range test first and log its plot.
        centre_lrs: Centre the learning rates on the range test's suggestion.
        lr_find_iters: Mini-batches of the range test.
        runner: Run trials in threads of this process or on a Dask cluster.
        workers: Trials at a time (threads, or local Dask workers); 0 chooses: one on a GPU,
            on CPUs one per core up to the number of trials.
        dask_address: A Dask scheduler, e.g. tcp://host:8786 (empty: a local cluster).
    """
    if mode not in MODES:
        raise ValueError(f"mode is '{mode}'; expected one of {MODES}.")
    settings = Settings.from_env()
    config = TrainConfig(
        arch=arch,
        image_size=image_size,
        batch_size=batch_size,
        seed=seed,
        pretrained=pretrained,
        weights_path=weights_path,
        if_no_weights=if_no_weights,
        freeze_epochs=freeze_epochs,
        augment=augment,
        flip=flip,
        compile=compile,
    )
    grid = trial_grid(lrs, epochs)  # refuse bad values before anything starts
    workers = auto_workers(runner, workers, len(lrs) if mode == "halving" else len(grid))
    task_runner = trial_runner(runner, workers, dask_address)
    config, weights = resolve_weights_task(config)
    print(f"train: {weights}")
    dataset = load_dataset(dataset_manifest or settings.data_dir / "datasets" / "dataset.csv")
    experiment = experiment_id(settings)
    use_tracking_uri(settings.tracking_uri)  # the sweep's runs are opened through it
    extra = {"mode": mode, "eta": eta, "runner": runner, "workers": workers, "weights": weights}
    parent = start_sweep_task(experiment, config, dataset, grid, extra)
    cache = str(cache_task(dataset, config.image_size))
    suggestion = None
    if lr_find or centre_lrs:
        suggestion = lr_find_task(
            config, cache, experiment, parent, lr_find_iters, tracking_uri=settings.tracking_uri
        )
        print(f"train: lr_find suggests {suggestion:.2g}")
        if centre_lrs:
            lrs = centred_lrs(suggestion, len(lrs))
            print(f"train: learning rates centred on it: {lrs}")
    started = time.perf_counter()
    results = trials.with_options(task_runner=task_runner)(
        lrs,
        epochs,
        mode,
        eta,
        config,
        cache,
        experiment,
        parent,
        dataset.digest,
        settings.tracking_uri,
        threads_per_trial(runner, workers),
    )
    sweep_seconds = time.perf_counter() - started
    print(f"train: {len(results)} trials in {sweep_seconds:.1f} s, {workers} at a time")
    results = diagnose_task(results, settings.tracking_uri)
    spent = budget(lrs, epochs, results)
    best = best_trial(results)
    excluded = finish_sweep_task(
        parent, results, best, str(spent), sweep_seconds, tracking_uri=settings.tracking_uri
    )
    model_uri = log_model_task(best, config, dataset, cache, parent, settings.tracking_uri)
    publish_sweep(results, best, parent, excluded, str(spent))
    for e in excluded:
        print(f"train: excluded {e['trial']}: {e['diagnosis']} ({e['why']})")
    print(f"train: best {best.val_accuracy:.4f} at {best.name} ({best.diagnosis}); trained {spent}")
    return TrainResult(
        parent_run_id=parent,
        model_uri=model_uri,
        best=best,
        trials=results,
        excluded=excluded,
        budget=str(spent),
        lr_suggestion=suggestion,
        weights=weights,
        sweep_seconds=sweep_seconds,
        workers=workers,
    )
