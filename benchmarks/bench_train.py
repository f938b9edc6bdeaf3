"""Training speed and sweep efficiency on the embedded default.

    .venv/bin/python benchmarks/bench_train.py                 # speed: Ursa vs floor vs naive
    .venv/bin/python benchmarks/bench_train.py --efficiency    # halving vs the full grid

Speed (the default sweep: resnet18 at 32 px, lrs 1e-3,3e-3 x epochs 2,4, seed 0), three
figures from one run, same model, optimizer, schedule, epochs, batch size and seed:

1. **Ursa**: the ``train`` flow end to end (decoding the tensor cache from scratch, every
   trial, per-trial reports, the sweep's parent run, logging the best model package), under
   an already-running Prefect test server so that server start-up is not counted.
2. **Model-only floor**: the same forward and backward passes and optimizer steps, on
   normalised float tensors already in memory, plus the same per-epoch validation forward
   passes; no augmentation, no logging, nothing else.
3. **Naive reference**: torchvision ``ImageFolder`` + PIL transforms (equivalent random
   affine + contrast augmentation, ``ToTensor``, ``Normalize``) decoding every PNG every
   epoch through a ``DataLoader``, same training loop.

Efficiency: the full grid (6 learning rates x epochs 1,2,4) against successive halving
(eta 3) on the same grid, at 16 px so that it runs in a few minutes; reports each one's best
validation accuracy and the epochs it trained.

The machine is shared with other engineers' tests: absolute seconds drift from run to run,
so rely on the same-run ratios printed at the end.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ursa.offline import set_offline_defaults  # noqa: E402

# The data set-up runs a flow before any test harness: on a busy machine the ephemeral
# server it starts needs longer than its default 20 s.
set_offline_defaults(
    PREFECT_LOGGING_LEVEL="WARNING", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="600"
)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from tasks.manifest import Dataset, ImageRow, read_rows  # noqa: E402
from tasks.sweep import (  # noqa: E402
    auto_workers,
    longest_first,
    threads_per_trial,
    torch_threads_kept,
    trial_grid,
)
from tasks.tensor_cache import load_tensors, tensor_cache  # noqa: E402
from tasks.train import (  # noqa: E402
    MEAN,
    STD,
    TrainConfig,
    Trial,
    build_model,
    device_for_training,
    memory_format,
    model_inputs,
    phase_optimizer,
    training_phases,
)

LRS = [1e-3, 3e-3]
EPOCHS = [2, 4]
LAYOUT = memory_format(device_for_training())  # the layout Ursa trains in here


class Clock:
    """Wall seconds and CPU seconds (this process and its reaped children: DataLoader
    workers). Other engineers' jobs on the same cores stretch wall time but barely move CPU
    time, so the CPU ratio is the steadier of the two on a shared machine."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), self._cpu_now()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = self._cpu_now() - self._cpu

    @staticmethod
    def _cpu_now() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def setup(root: Path) -> Dataset:
    """A data folder holding the ingested embedded default and an MLflow store with Ursa's
    experiment, as after any earlier run (neither is timed)."""
    os.environ["URSA_DATA_DIR"] = str(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    from flows.ingest import ingest
    from tasks.tracking import experiment_id
    from ursa.settings import Settings

    experiment_id(Settings.from_env())
    return ingest(source="embedded").dataset


def ursa_sweep(dataset: Dataset, lrs: list[float], epochs: list[int], **kw) -> tuple[Clock, dict]:
    from flows.train import train

    shutil.rmtree(dataset.data_dir / "cache", ignore_errors=True)  # decode-once is counted
    with Clock() as clock:
        result = train(dataset_manifest=dataset.manifest_path, lrs=lrs, epochs=epochs, **kw)
    return clock, {
        "sweep_seconds": result.sweep_seconds,
        "best": result.best.val_accuracy,
        "best_trial": result.best.name,
        "budget": result.budget,
        "trials": {t.name: (t.val_accuracy, t.diagnosis) for t in result.trials},
        "results": result.trials,
    }


def _train_loop(model, trial, config, steps, batches_for_epoch, valid_batches) -> float:
    """The training loop the floor and the naive reference share (Ursa's optimizer and
    one-cycle schedule); ``steps`` mini-batches per epoch; returns the final val accuracy."""
    criterion = nn.CrossEntropyLoss()
    accuracy = math.nan
    for phase, epochs in training_phases(trial, config):
        optimizer, rates = phase_optimizer(model, phase, trial.lr)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=rates, total_steps=max(steps * epochs, 1)
        )
        for _ in range(epochs):
            model.train()
            for x, y in batches_for_epoch():
                loss = criterion(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            model.eval()
            correct = seen = 0
            with torch.inference_mode():
                for x, y in valid_batches():
                    correct += (model(x).argmax(1) == y).sum().item()
                    seen += len(y)
            accuracy = correct / max(seen, 1)
    return accuracy


def floor(dataset: Dataset, config: TrainConfig, workers: int = 1) -> tuple[Clock, float]:
    """Model-only: float tensors in memory, same passes; returns (seconds, best accuracy).
    ``workers`` > 1 trains that many trials side by side in threads, longest first, each
    with cores/workers torch threads: the floor of the schedule Ursa uses."""
    data = load_tensors(tensor_cache(dataset, config.image_size))

    device = device_for_training()
    x_train, x_valid = model_inputs(data.x_train, device), model_inputs(data.x_valid, device)
    threads = threads_per_trial("threads", workers)

    def one(trial: Trial) -> float:
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        model = build_model(config, len(data.classes)).to(memory_format=LAYOUT)

        def train_batches():
            order = torch.randperm(len(data.y_train), generator=generator)
            for i in range(0, len(order), config.batch_size):
                idx = order[i : i + config.batch_size]
                yield x_train[idx], data.y_train[idx]

        def valid_batches():
            for i in range(0, len(data.y_valid), 256):
                yield x_valid[i : i + 256], data.y_valid[i : i + 256]

        steps = math.ceil(len(data.y_train) / config.batch_size)
        return _train_loop(model, trial, config, steps, train_batches, valid_batches)

    trials = longest_first(trial_grid(LRS, EPOCHS))
    with torch_threads_kept(), Clock() as clock:
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                accuracies = list(pool.map(one, trials))
        else:
            accuracies = [one(t) for t in trials]
    return clock, max(accuracies)


def warm_up(dataset: Dataset, config: TrainConfig) -> None:
    """A few training steps before anything is timed, so that no phase pays the process's
    first-use costs (oneDNN kernels, allocator) for the others."""
    data = load_tensors(tensor_cache(dataset, config.image_size))
    model = build_model(config, len(data.classes)).to(memory_format=LAYOUT)
    optimizer, _ = phase_optimizer(model, "scratch", 1e-3)
    x = model_inputs(data.x_train[:64], device_for_training())
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), data.y_train[:64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    shutil.rmtree(dataset.data_dir / "cache", ignore_errors=True)


def naive(dataset: Dataset, config: TrainConfig, workers: int) -> tuple[Clock, float]:
    """ImageFolder + PIL transforms, decoded every epoch; returns (seconds, best accuracy)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from benchmarks._naive import naive_train_transform

    folder = Path(tempfile.mkdtemp(prefix="ursa-naive-"))
    for row in read_rows(Path(dataset.manifest_path), ImageRow):
        if row.status == "kept":
            target = folder / row.split / row.label / Path(row.image_path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(dataset.data_dir / row.image_path)
    size = config.image_size
    train_tf = naive_train_transform(size)
    valid_tf = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    train_set = datasets.ImageFolder(folder / "train", train_tf)
    valid_set = datasets.ImageFolder(folder / "valid", valid_tf)
    best = 0.0
    clock = Clock().__enter__()
    for lr in LRS:
        for n in EPOCHS:
            torch.manual_seed(config.seed)
            model = build_model(config, len(train_set.classes))
            loader = DataLoader(
                train_set,
                batch_size=config.batch_size,
                shuffle=True,
                num_workers=workers,
                generator=torch.Generator().manual_seed(config.seed),
            )
            valid_loader = DataLoader(valid_set, batch_size=256, num_workers=workers)

            accuracy = _train_loop(
                model,
                Trial(lr, n),
                config,
                len(loader),
                lambda loader=loader: loader,
                lambda v=valid_loader: v,
            )
            best = max(best, accuracy)
    clock.__exit__()
    shutil.rmtree(folder, ignore_errors=True)
    return clock, best


def speed(root: Path, naive_workers: int, rounds: int) -> list[str]:
    from prefect.testing.utilities import prefect_test_harness

    dataset = setup(root)
    config = TrainConfig()
    workers = auto_workers("threads", 0, len(LRS) * len(EPOCHS))
    print(
        f"dataset: {dataset.n_train} train / {dataset.n_valid} valid, {len(dataset.classes)} "
        f"classes; torch threads {torch.get_num_threads()}; Ursa trials at a time {workers}",
        flush=True,
    )
    warm_up(dataset, config)
    best: dict[str, tuple[Clock, float]] = {}

    def keep(name: str, clock: Clock, accuracy: float) -> None:
        print(f"{name:<22} {clock.wall:7.1f} s wall, {clock.cpu:7.1f} s CPU, best {accuracy:.4f}")
        if name not in best or clock.wall < best[name][0].wall:
            best[name] = (clock, accuracy)

    with prefect_test_harness(server_startup_timeout=600):
        for r in range(rounds):
            print(f"round {r + 1} of {rounds}", flush=True)
            flow_clock, info = ursa_sweep(dataset, LRS, EPOCHS)
            keep("ursa train flow", flow_clock, info["best"])
            sweep = Clock()
            sweep.wall, sweep.cpu = info["sweep_seconds"], math.nan
            keep("ursa sweep (trials)", sweep, info["best"])
            keep("floor, one at a time", *floor(dataset, config, workers=1))
            if workers > 1:
                keep(f"floor, {workers} at a time", *floor(dataset, config, workers=workers))
            keep(f"naive, {naive_workers} loaders", *naive(dataset, config, naive_workers))
    ursa, ursa_acc = best["ursa train flow"]
    sweep_s = best["ursa sweep (trials)"][0].wall
    floors = [v for k, v in best.items() if k.startswith("floor")]
    bottom, floor_acc = min(floors, key=lambda v: v[0].wall)
    slow, naive_acc = best[f"naive, {naive_workers} loaders"]
    return [
        f"(best of {rounds} rounds each; floor = the faster of its schedules: {bottom.wall:.1f} s)",
        f"Ursa sweep (trials with their MLflow runs and reports) vs model-only floor, wall: "
        f"{sweep_s / bottom.wall:.2f}x ({sweep_s:.1f} s vs {bottom.wall:.1f} s) (goal <= 1.15x)",
        f"Ursa train flow end to end vs model-only floor, wall: {ursa.wall / bottom.wall:.2f}x "
        f"({ursa.wall:.1f} s; adds the decode, the parent run, the model export) (no goal)",
        f"Ursa train flow vs model-only floor, CPU time: {ursa.cpu / bottom.cpu:.2f}x "
        f"({ursa.cpu:.1f} s vs {bottom.cpu:.1f} s) (no goal)",
        f"Ursa train flow speed-up over naive ImageFolder+PIL, wall: {slow.wall / ursa.wall:.2f}x "
        f"({slow.wall:.1f} s) (goal > 1x)",
        f"Ursa train flow speed-up over naive ImageFolder+PIL, CPU time: "
        f"{slow.cpu / ursa.cpu:.2f}x ({slow.cpu:.1f} s) (goal > 1x)",
        f"best val accuracy Ursa / floor / naive: {ursa_acc:.4f} / {floor_acc:.4f} / "
        f"{naive_acc:.4f} (goal equal)",
        f"default sweep val accuracy: {ursa_acc:.4f} (goal >= 0.97)",
    ]


def halving_diagnostics(grid: list, halving: list, epochs: list[int], n_valid: int) -> list[str]:
    """Why halving lands where it does: every grid trial by rung, the first rung's spread
    against its noise, where the grid's best rate ranked there, and whether the trials that
    both ran (same config, same seed) gave the same result."""
    from tasks.halving import noise
    from tasks.leaderboard import leaderboard

    lines = ["grid trials (val accuracy / val loss, diagnosis):"]
    for r in sorted(grid, key=lambda r: (r.lr, r.epochs)):
        lines.append(
            f"  lr={r.lr:<7g} epochs={r.epochs}: {r.val_accuracy:.4f} / {r.val_loss:.4f} "
            f"({r.diagnosis})"
        )
    first = [r for r in grid if r.epochs == min(epochs)]
    accs = [r.val_accuracy for r in first]
    best = leaderboard(grid)[0]
    order = [r.lr for r in leaderboard(first)]
    lines.append(
        f"first rung ({min(epochs)} epoch): accuracy {min(accs):.4f}..{max(accs):.4f} "
        f"(spread {100 * (max(accs) - min(accs)):.2f} points; noise of a difference at the "
        f"top {100 * noise(max(accs), n_valid):.2f} points on {n_valid} images); the grid's "
        f"best rate {best.lr:g} ranks {order.index(best.lr) + 1} of {len(order)} there"
    )
    by_name = {r.name: r for r in grid}
    same = [
        r.name
        for r in halving
        if (r.val_accuracy, r.val_loss) == (by_name[r.name].val_accuracy, by_name[r.name].val_loss)
    ]
    lines.append(
        f"same seed, same result: {len(same)} of {len(halving)} halving trials match the "
        f"grid's to the last digit"
    )
    lines.append(
        "halving trials: "
        + ", ".join(
            f"{r.name} {r.val_accuracy:.4f}" for r in sorted(halving, key=lambda r: r.epochs)
        )
    )
    return lines


def efficiency(root: Path, seed: int) -> list[str]:
    from prefect.testing.utilities import prefect_test_harness

    dataset = setup(root)
    lrs = [3e-4, 1e-3, 2e-3, 3e-3, 6e-3, 1e-2]
    epochs = [1, 2, 4]
    kw = {"image_size": 16, "seed": seed}
    with prefect_test_harness(server_startup_timeout=600):
        grid_clock, grid = ursa_sweep(dataset, lrs, epochs, mode="grid", **kw)
        print(
            f"grid:    {grid_clock.wall:6.1f} s, best {grid['best']:.4f} "
            f"({grid['best_trial']}), {grid['budget']}",
            flush=True,
        )
        halv_clock, halv = ursa_sweep(dataset, lrs, epochs, mode="halving", eta=3, **kw)
        print(
            f"halving: {halv_clock.wall:6.1f} s, best {halv['best']:.4f} "
            f"({halv['best_trial']}), {halv['budget']}",
            flush=True,
        )
    for line in halving_diagnostics(grid["results"], halv["results"], epochs, dataset.n_valid):
        print(line, flush=True)
    grid_s, halv_s = grid_clock.wall, halv_clock.wall
    used = int(halv["budget"].split()[0])
    total = int(halv["budget"].split()[2])
    gap = 100 * (grid["best"] - halv["best"])
    return [
        f"halving best val accuracy gap to the grid's best, seed {seed}: {gap:.2f} points "
        f"({halv['best']:.4f} vs {grid['best']:.4f}) (goal <= 0.5 points)",
        f"halving epochs vs grid, seed {seed}: {used / total:.0%} ({used} of {total}; "
        f"wall {halv_s:.0f} s vs {grid_s:.0f} s) (goal <= 40%)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--efficiency", action="store_true", help="halving vs the full grid")
    parser.add_argument("--naive-workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--rounds", type=int, default=2, help="speed: best of this many rounds")
    parser.add_argument("--seed", type=int, default=0, help="efficiency: the sweeps' seed")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ursa-bench-train-"))
    try:
        lines = (
            efficiency(root, args.seed)
            if args.efficiency
            else speed(root, args.naive_workers, args.rounds)
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
