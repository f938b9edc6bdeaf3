"""Which images are most likely mislabelled: lesson 2's "data cleaning", done out of sample.

**How the probabilities are obtained: k-fold cross-validation over the dataset's kept images
(train and valid together), not the held-out split.** The split only covers a fifth of the
images, and a model scores the images it was trained on too well (it has learnt their
labels, wrong ones included), which is why lesson 2's top losses on the training set hide
mislabelled images. So the kept images are cut into ``folds`` stratified folds; one model per
fold trains on the other folds (:func:`tasks.train.fit`, the training recipe unchanged) and
predicts the fold it never saw. Every kept image gets probabilities from a model that did not
see it. Images that ingest excluded as label conflicts (the same picture under two classes)
were seen by no model: they get the mean of the fold models' probabilities, once per label.

**How they are ranked** (cleanlab's label quality scores): self-confidence, the probability
of the given label, lowest first; the normalised margin, p(given) minus the largest other
probability; and the loss, -log p(given) (lesson 2's top losses; the same order as
self-confidence on the same probabilities). Confident learning's flag marks an image whose
probability for some other class reaches that class's threshold (the mean probability of the
class over the images labelled with it). Near-duplicate groups and label conflicts come from
the dataset manifest. The ranking goes to ``<data>/cleaning/ranking.csv`` (what the review
page shows); :mod:`tasks.cleaning_report` logs it to MLflow and publishes the review link.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NONE

from tasks.architectures import num_classes
from tasks.manifest import Dataset, ImageRow, read_rows
from tasks.progress import progress
from tasks.splits import fold_of
from tasks.tensor_cache import Selection, Tensors, load_tensors, tensor_cache
from tasks.train import (
    TrainConfig,
    Trial,
    device_for_training,
    fit,
    index_batches,
    model_inputs,
)
from ursa.images import input_pixels
from ursa.ranking import RankedImage, ranking_paths, write_ranking

KEPT, CONFLICT = "kept", "label_conflict"


@dataclass(frozen=True)
class Ranking:
    """What the clean step produced: where the ranking is and a few counts (paths travel
    between tasks, not tables)."""

    csv_path: str
    json_path: str
    dataset_digest: str
    n_images: int
    n_confident_issues: int
    n_label_conflicts: int
    fold_accuracy: float  # held-out accuracy of the fold models, against the given labels


@torch.inference_mode()
def probabilities(
    model: torch.nn.Module,
    x: torch.Tensor | Selection,
    device: torch.device,
    batch_size: int = 256,
    size: int | None = None,
) -> np.ndarray:
    """Softmax probabilities (N, classes) for uint8 images (N, 3, S, S), a batch gathered at
    a time; ``size`` as in :func:`tasks.train.model_inputs` (the centre of a larger cache)."""
    model.eval()
    out = []
    for idx in index_batches(len(x), batch_size, None):
        logits = model(model_inputs(x[idx], device, size=size))
        out.append(logits.float().softmax(1).cpu())
    n_classes = num_classes(model)
    return torch.cat(out).numpy() if out else np.zeros((0, n_classes), np.float32)


def _decode(rows: list[ImageRow], data_dir: Path, size: int, resize: str) -> torch.Tensor:
    """uint8 (N, 3, size, size), by the same :func:`ursa.images.input_pixels` as training,
    straight into one tensor: no list of arrays beside it."""
    out = torch.empty((len(rows), 3, size, size), dtype=torch.uint8)
    for i, r in enumerate(rows):
        pixels = input_pixels(data_dir / r.image_path, size, resize)
        out[i] = torch.from_numpy(pixels).permute(2, 0, 1)
    return out


def out_of_sample(
    dataset: Dataset, trial: Trial, config: TrainConfig, folds: int, on_fold=None
) -> tuple[list[ImageRow], np.ndarray, list[str], float]:
    """(rows, probabilities, where each row's came from, fold accuracy) for every kept image
    (k-fold) and every label-conflict row (mean of the fold models)."""
    rows = read_rows(Path(dataset.manifest_path), ImageRow)
    kept = [r for r in rows if r.status == KEPT]
    # The training tensor cache holds the kept images, train then valid, in manifest order:
    # the folds pick theirs out of its maps a batch at a time (a Selection), so that no
    # process holds the dataset's pixels (their pages are the page cache's).
    kept = [r for r in kept if r.split == "train"] + [r for r in kept if r.split == "valid"]
    cached = load_tensors(tensor_cache(dataset, config.resize_size, config.resize))
    maps = (cached.x_train, cached.x_valid)
    y = torch.cat([cached.y_train, cached.y_valid])  # 8 bytes an image
    classes = list(cached.classes)
    conflicts = [r for r in rows if r.status == CONFLICT and r.label in classes]
    # Few (the same picture under two labels), decoded here: the cache holds kept images only.
    x_conflicts = _decode(conflicts, dataset.data_dir, config.resize_size, config.resize)

    assignment = fold_of(kept, folds, config.seed)
    probs = np.zeros((len(kept), len(classes)), dtype=np.float32)
    conflict_probs = np.zeros((len(conflicts), len(classes)), dtype=np.float32)
    device = device_for_training()
    correct = 0
    for k in range(folds):
        held = torch.from_numpy(np.flatnonzero(assignment == k))
        train = torch.from_numpy(np.flatnonzero(assignment != k))
        x_held = Selection(maps, held)
        data = Tensors(classes, Selection(maps, train), y[train], x_held, y[held])
        model = fit(trial, config, data).model
        probs[held.numpy()] = probabilities(model, x_held, device, size=config.image_size)
        conflict_probs += probabilities(model, x_conflicts, device, size=config.image_size) / folds
        correct += int((probs[held.numpy()].argmax(1) == y[held].numpy()).sum())
        if on_fold is not None:
            on_fold(k + 1, folds)
    sources = [f"fold {int(k) + 1} of {folds}" for k in assignment]
    sources += [f"mean of {folds} fold models"] * len(conflicts)
    accuracy = correct / len(kept) if kept else math.nan
    return kept + conflicts, np.concatenate([probs, conflict_probs]), sources, accuracy


def class_thresholds(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Confident learning's per-class threshold: the mean probability of class j over the
    images labelled j (1.0, never reached, for a class with no images)."""
    thresholds = np.ones(n_classes, dtype=np.float64)
    for j in range(n_classes):
        chosen = labels == j
        if chosen.any():
            thresholds[j] = probs[chosen, j].mean()
    return thresholds


def rank_images(
    rows: list[ImageRow],
    probs: np.ndarray,
    classes: list[str],
    sources: list[str],
    manifest: list[ImageRow],
) -> list[RankedImage]:
    """One ranked row per (image, label), most suspect (lowest self-confidence) first."""
    index = {c: i for i, c in enumerate(classes)}
    given = np.array([index[r.label] for r in rows], dtype=np.int64)
    n = len(rows)
    p_given = probs[np.arange(n), given] if n else np.zeros(0)
    others = probs.copy()
    others[np.arange(n), given] = -np.inf
    p_other = others.max(1) if n and len(classes) > 1 else np.zeros(n)
    kept = np.array([r.status == KEPT for r in rows], dtype=bool)
    thresholds = class_thresholds(probs[kept], given[kept], len(classes))
    # Confident learning: some other class's probability reaches that class's threshold.
    above = (probs >= thresholds[None, :]) & (np.arange(len(classes))[None, :] != given[:, None])
    group_size = Counter(r.group for r in manifest if r.group)
    ranked: list[RankedImage] = []
    for i, r in enumerate(rows):
        predicted = int(probs[i].argmax())
        flags = []
        if r.status == CONFLICT:
            flags.append("label_conflict")
        elif group_size[r.group] > 1:
            flags.append("near_duplicates")
        if above[i].any():
            flags.append("confident_issue")
        ranked.append(
            RankedImage(
                rank=0,
                sha256=r.sha256,
                image_path=r.image_path,
                given=r.label,
                predicted=classes[predicted],
                confidence=round(float(probs[i, predicted]), 6),
                self_confidence=round(float(p_given[i]), 6),
                margin=round(float(p_given[i] - p_other[i]), 6),
                loss=round(float(-math.log(max(float(p_given[i]), 1e-12))), 6),
                status=r.status,
                split=r.split,
                duplicates=max(group_size[r.group] - 1, 0) if r.status == KEPT else 0,
                flags=";".join(flags),
                source=sources[i],
            )
        )
    ranked.sort(key=lambda r: (r.self_confidence, r.sha256, r.given))
    for position, r in enumerate(ranked, start=1):
        r.rank = position
    return ranked


def rank_dataset(
    dataset: Dataset,
    folds: int = 4,
    lr: float = 3e-3,
    epochs: int = 3,
    config: TrainConfig | None = None,
    on_fold=None,
) -> Ranking:
    """Out-of-sample probabilities by k-fold, the ranking, written beside the data."""
    config = config or TrainConfig()
    with progress(f"{folds}-fold models", folds) as tick:
        rows, probs, sources, accuracy = out_of_sample(
            dataset, Trial(lr=lr, epochs=epochs), config, folds, on_fold or (lambda k, n: tick())
        )
    manifest = read_rows(Path(dataset.manifest_path), ImageRow)
    ranked = rank_images(rows, probs, list(dataset.classes), sources, manifest)
    meta = {
        "dataset_digest": dataset.digest,
        "dataset_manifest": dataset.manifest_path,
        "ledger_path": dataset.ledger_path,
        "ledger_digest": dataset.ledger_digest,
        "classes": list(dataset.classes),
        "method": f"{folds}-fold out-of-sample probabilities over the kept images; "
        "label conflicts scored by the mean of the fold models",
        "folds": folds,
        "lr": lr,
        "epochs": epochs,
        "config": asdict(config),
        "fold_accuracy": accuracy,
    }
    csv_path = write_ranking(dataset.data_dir, ranked, meta)
    return Ranking(
        csv_path=str(csv_path),
        json_path=str(ranking_paths(dataset.data_dir)[1]),
        dataset_digest=dataset.digest,
        n_images=len(ranked),
        n_confident_issues=sum("confident_issue" in r.flags for r in ranked),
        n_label_conflicts=sum(r.status == CONFLICT for r in ranked),
        fold_accuracy=accuracy,
    )


rank_task = task(name="rank-suspects", cache_policy=NONE)(rank_dataset)
