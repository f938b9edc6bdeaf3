"""train: a sweep over learning rates x epochs, one MLflow parent run, one child per trial.

The trials run as concurrent Prefect tasks inside the ``trials`` subflow, whose task runner
is chosen per run: threads here, or Dask worker processes (``runner="dask"``). ``mode``
"grid" trains every pair; "halving" runs successive halving with epochs as the budget.
``recipe`` ("digits" or "photos", :mod:`tasks.recipes`) gives every training choice a
default; the parameters left empty (None) take the recipe's value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Literal

from prefect import flow
from pydantic import Field

from tasks.architectures import Arch
from tasks.data_checks import check_dataset_task
from tasks.diagnosis import sweep_advice
from tasks.halving import DEFAULT_ETA, budget, successive_halving
from tasks.leaderboard import best_trial
from tasks.lr_find import centred_lrs, lr_find_task
from tasks.manifest import load_dataset
from tasks.policies import HOUR
from tasks.recipes import DEFAULT_RECIPE, Augmentation, RecipeName, recipe_values
from tasks.reports import publish_sweep
from tasks.sweep import (
    auto_workers,
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
from ursa.images import ResizePolicy
from ursa.settings import Settings

MODES = ("grid", "halving")
Lrs = Annotated[list[Annotated[float, Field(gt=0, le=10)]], Field(min_length=1)]
Epochs = Annotated[list[Annotated[int, Field(ge=1, le=100)]], Field(min_length=1)]


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
    warnings: list[str] = field(default_factory=list)  # why the numbers may mean little
    config: TrainConfig | None = None  # what the trials trained with
    recipe: str = DEFAULT_RECIPE


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
    n_valid: int = 0,
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
        return successive_halving(lrs, epochs, eta, run, n_valid)


@flow(name="train", log_prints=True, timeout_seconds=24 * HOUR)
def train(
    dataset_manifest: str = "",
    recipe: RecipeName = DEFAULT_RECIPE,
    lrs: Lrs | None = None,
    epochs: Epochs | None = None,
    arch: Arch | None = None,
    image_size: Annotated[int, Field(ge=16, le=512)] | None = None,
    batch_size: Annotated[int, Field(ge=2, le=4096)] | None = None,
    seed: Annotated[int, Field(ge=0)] = 0,
    pretrained: bool | None = None,
    weights_path: str = "",
    if_no_weights: Literal["fail", "scratch"] = "fail",
    freeze_epochs: Annotated[int, Field(ge=0)] | None = None,
    augment: bool | None = None,
    augmentation: Augmentation | None = None,
    flip: bool | None = None,
    resize: ResizePolicy | None = None,
    compile: bool = False,
    mode: Literal["grid", "halving"] = "grid",
    eta: Annotated[int, Field(ge=2)] = DEFAULT_ETA,
    lr_find: bool | None = None,
    centre_lrs: bool | None = None,
    lr_find_iters: Annotated[int, Field(ge=10, le=10_000)] = 100,
    runner: Literal["threads", "dask"] = "threads",
    workers: Annotated[int, Field(ge=0, le=256)] = 0,
    dask_address: str = "",
) -> TrainResult:
    """Train (learning rate, epochs) pairs; log the best trial's model to MLflow.

    Args:
        dataset_manifest: A dataset.csv written by ingest (empty: the data folder's last one).
        recipe: The defaults of every empty parameter below: "digits" (small scans from
            scratch: resnet18 at 32 px) or "photos" (lesson 2: resnet34 pretrained at 224 px,
            fine-tuned with the rate from lr_find, photo augmentation, cropped to the square).
        lrs: Learning rates of the sweep (peak rates of the one-cycle schedule).
        epochs: Epoch counts of the sweep (the budget in halving mode).
        arch: Any torchvision classification architecture (resnet18, resnet50,
            convnext_tiny, efficientnet_b0, mobilenet_v3_large, regnet_y_400mf, ...).
        image_size: Training resolution in pixels.
        batch_size: Images per training step.
        seed: Seed of initialisation, data order and augmentation.
        pretrained: Start from pretrained ImageNet weights (a local file, torchvision's cache,
            or downloaded into it from download.pytorch.org or URSA_WEIGHTS_MIRROR).
        weights_path: A local state_dict file for the pretrained backbone.
        if_no_weights: When pretrained weights are missing: fail, or train from scratch.
        freeze_epochs: Epochs with the pretrained backbone frozen before unfreezing.
        augment: Augment the training batches.
        augmentation: The augmentation style: "digits" (small rotations, shifts and scales)
            or "photos" (random resized crops, rotations, lighting).
        flip: Also flip horizontally (wrong for digits and text).
        resize: How pictures become squares: "squash" (stretch), "crop" (the centre) or "pad"
            (black borders). Serving applies the same policy (it is in the model package).
        compile: torch.compile each trial's model: faster steps on a GPU, but its compile
            time pays only on long trials (BENCHMARKS.md has the break-even); off by default.
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
    chosen, overridden = recipe_values(
        recipe,
        {
            "lrs": lrs,
            "epochs": epochs,
            "arch": arch,
            "image_size": image_size,
            "batch_size": batch_size,
            "pretrained": pretrained,
            "freeze_epochs": freeze_epochs,
            "augment": augment,
            "augmentation": augmentation,
            "flip": flip,
            "resize": resize,
            "lr_find": lr_find,
            "centre_lrs": centre_lrs,
        },
    )
    lrs, epochs = chosen.pop("lrs"), chosen.pop("epochs")
    lr_find, centre_lrs = chosen.pop("lr_find"), chosen.pop("centre_lrs")
    config = TrainConfig(
        **chosen, seed=seed, weights_path=weights_path, if_no_weights=if_no_weights, compile=compile
    )
    print(
        f"train: recipe {recipe}" + (f", overridden: {', '.join(overridden)}" if overridden else "")
    )
    grid = trial_grid(lrs, epochs)  # refuse bad values before anything starts
    workers = auto_workers(runner, workers, len(lrs) if mode == "halving" else len(grid))
    task_runner = trial_runner(runner, workers, dask_address)
    config, weights = resolve_weights_task(config, settings.weights_mirror)
    print(f"train: {weights}")
    dataset = load_dataset(dataset_manifest or settings.layout.dataset_manifest())
    warnings = check_dataset_task(dataset)  # refuses what cannot make a classifier
    experiment = experiment_id(settings)
    use_tracking_uri(settings.tracking_uri)  # the sweep's runs are opened through it
    extra = {
        "recipe": recipe,
        "recipe_overridden": ",".join(overridden) or "none",
        "lr_find": lr_find,
        "centre_lrs": centre_lrs,
        "mode": mode,
        "eta": eta,
        "runner": runner,
        "workers": workers,
        "weights": weights,
    }
    parent = start_sweep_task(experiment, config, dataset, grid, extra, warnings)
    # At the recipe's resize_size: photos crop it to image_size per batch (tasks/train.py).
    cache = str(cache_task(dataset, config.resize_size, config.resize))
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
        dataset.n_valid,
    )
    sweep_seconds = time.perf_counter() - started
    print(f"train: {len(results)} trials in {sweep_seconds:.1f} s, {workers} at a time")
    results = diagnose_task(results, settings.tracking_uri)
    spent = budget(lrs, epochs, results)
    best = best_trial(results)
    excluded = finish_sweep_task(
        parent,
        results,
        best,
        str(spent),
        sweep_seconds,
        warnings,
        tracking_uri=settings.tracking_uri,
    )
    model_uri = log_model_task(best, config, dataset, cache, parent, settings.tracking_uri)
    publish_sweep(results, best, parent, excluded, str(spent), warnings)
    for e in excluded:
        print(f"train: excluded {e['trial']}: {e['diagnosis']} ({e['why']})")
    for advice in sweep_advice([r.diagnosis for r in results]):
        print(f"train: {advice}")
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
        warnings=warnings,
        config=config,
        recipe=recipe,
    )
