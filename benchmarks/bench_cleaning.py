"""Does the ranking find mislabelled images? The embedded default with 5% of labels flipped.

    .venv/bin/python benchmarks/bench_cleaning.py [--flip 0.05] [--folds 4] [--epochs 3]

The 1,797 embedded digits are written as a folder of class folders, with 5% of them (seeded)
put in a wrong class folder on purpose; ingest's own path for local folders (copy by content,
verify, dedup, split) turns that into a dataset. Then, in the same run:

1. **Ursa**: ``tasks.cleaning.rank_dataset`` (k-fold out-of-sample probabilities, ranked by
   self-confidence), the clean step as the flow runs it.
2. **Baseline, lesson 2's top losses**: one model trained on every kept image with the same
   recipe, its (in-sample) losses on those images, highest first.
3. **Chance**: a random order holds 10% of the flipped images in its top 10%.

Prints the share of flipped images in the top 10% of each ranking and the ratio. The goal is
at least 80% for Ursa's ranking. Wall times are printed too; the machine is shared, so they
are noisy: rely on the shares, which do not depend on timing.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ursa.offline import set_offline_defaults  # noqa: E402

set_offline_defaults(PREFECT_LOGGING_LEVEL="WARNING")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tasks.cleaning import rank_dataset  # noqa: E402
from tasks.dedup import build_dataset  # noqa: E402
from tasks.manifest import Dataset, ImageRow, read_rows  # noqa: E402
from tasks.sources import local_image_rows  # noqa: E402
from tasks.tensor_cache import Tensors, load_tensors, tensor_cache  # noqa: E402
from tasks.train import TrainConfig, Trial, fit  # noqa: E402
from tasks.verify import verify_rows  # noqa: E402
from ursa.embedded import write_embedded_images  # noqa: E402


def flipped_source(root: Path, embedded: Path, share: float, seed: int) -> set[str]:
    """Copy the digits into ``root/<class>/``, a ``share`` of them into a wrong class;
    return the flipped files' names (``<index>.png``, unique across classes)."""
    files = sorted(embedded.glob("*/*.png"))
    classes = sorted({f.parent.name for f in files})
    rng = random.Random(seed)
    flipped = set(rng.sample(range(len(files)), round(share * len(files))))
    names = set()
    for i, f in enumerate(files):
        label = f.parent.name
        if i in flipped:
            label = rng.choice([c for c in classes if c != label])
            names.add(f.name)
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, root / label / f.name)
    return names


def in_sample_top_losses(dataset: Dataset, trial: Trial, config: TrainConfig) -> list[str]:
    """Lesson 2's way: train on everything, rank everything by its loss; sha256s, worst first."""
    rows = [r for r in read_rows(Path(dataset.manifest_path), ImageRow) if r.status == "kept"]
    rows = [r for r in rows if r.split == "train"] + [r for r in rows if r.split == "valid"]
    cached = load_tensors(tensor_cache(dataset, config.image_size))
    x = torch.cat([cached.x_train, cached.x_valid])
    y = torch.cat([cached.y_train, cached.y_valid])
    model = fit(trial, config, Tensors(cached.classes, x, y, x[:0], y[:0])).model
    from tasks.cleaning import probabilities
    from tasks.train import device_for_training

    probs = probabilities(model, x, device_for_training())
    loss = -np.log(np.maximum(probs[np.arange(len(y)), y.numpy()], 1e-12))
    return [rows[i].sha256 for i in np.argsort(-loss, kind="stable")]


def share_in_top(order: list[str], flipped: set[str], top: float = 0.10) -> float:
    head = order[: round(top * len(order))]
    return sum(s in flipped for s in head) / max(len(flipped), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flip", type=float, default=0.05, help="share of labels flipped")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ursa-bench-cleaning-"))
    try:
        embedded = write_embedded_images(work / "embedded")
        names = flipped_source(work / "source", embedded, args.flip, args.seed)
        data_dir = work / "data"
        rows = local_image_rows(work / "source", data_dir)
        rows = verify_rows(rows, data_dir, workers=None)
        dataset = build_dataset(rows, data_dir, seed=args.seed)
        # Embedded file names (<index>.png) are unique across classes.
        flipped = {r.sha256 for r in rows if r.outcome == "ok" and Path(r.url).name in names}
        kept = [r for r in read_rows(Path(dataset.manifest_path), ImageRow) if r.status == "kept"]
        print(
            f"dataset: {len(kept)} kept images, {len(dataset.classes)} classes, "
            f"{len(flipped)} flipped on purpose ({args.flip:.0%}); "
            f"{args.folds} folds x {args.epochs} epochs, lr {args.lr:g}, {args.image_size} px"
        )
        config = TrainConfig(image_size=args.image_size, seed=args.seed)

        start = time.perf_counter()
        ranking = rank_dataset(dataset, args.folds, args.lr, args.epochs, config)
        ursa_s = time.perf_counter() - start
        from ursa.ranking import read_ranking

        ranked, _ = read_ranking(data_dir)
        ursa_order = [r.sha256 for r in ranked if r.status == "kept"]

        start = time.perf_counter()
        naive_order = in_sample_top_losses(dataset, Trial(args.lr, args.epochs), config)
        naive_s = time.perf_counter() - start

        ursa_share = share_in_top(ursa_order, flipped)
        naive_share = share_in_top(naive_order, flipped)
        print()
        print("| ranking | flipped in top 10% | seconds |")
        print("|---|---|---|")
        print(f"| ursa: {args.folds}-fold self-confidence | {ursa_share:.1%} | {ursa_s:.1f} |")
        print(f"| lesson 2: in-sample top losses | {naive_share:.1%} | {naive_s:.1f} |")
        print("| chance | 10.0% | |")
        print()
        print(
            f"fold accuracy (against the given, partly wrong labels): {ranking.fold_accuracy:.3f}"
        )
        ratio = ursa_share / naive_share if naive_share else float("inf")
        print(f"ursa vs in-sample top losses: {ratio:.2f}x; vs chance: {ursa_share / 0.10:.1f}x")
        print(f"flipped labels found in top 10%: {ursa_share:.0%} (goal 80%)")
        return 0 if ursa_share >= 0.80 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
